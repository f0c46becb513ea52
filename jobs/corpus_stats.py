"""Dataset statistics of a build output (the paper's Figure 4 counterpart). Thin entry point.

    python jobs/corpus_stats.py --data DIR [--png PATH] [--json PATH] [--print-config]

Reads ``DIR/d_know/*.parquet`` and ``DIR/d_ling/*.parquet``; writes ``DIR/statistics.png`` and
``DIR/statistics.json`` (counts per language and source, category distribution, text-length histograms)
and prints the per-language table. See :mod:`mella.corpus_stats`.
"""

from __future__ import annotations

import argparse
import os
import sys

from _bootstrap import ROOT  # noqa: F401 - the import puts platform/ on sys.path

from mella import cli, console
from mella import corpus_stats as statistics


def main(argv: list[str] | None = None) -> int:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="build output directory (holds d_know/ and d_ling/)")
    ap.add_argument("--png", help="PNG path (default DIR/statistics.png)")
    ap.add_argument("--json", help="JSON path (default DIR/statistics.json)")
    cli.add_config_flags(ap)
    console.add_console_flags(ap)
    args, _ = cli.parse(ap, argv, overrides=False)
    console.setup(args.quiet, args.verbose)
    if args.print_config:
        return cli.print_config(cli.flag_settings(args))
    if not any(os.path.isdir(os.path.join(args.data, d)) for d in statistics.DATASETS):
        raise console.UsageError(
            f"--data {args.data} has neither d_know/ nor d_ling/: give a build_corpus output directory"
        )
    stats = statistics.write(args.data, args.png, args.json)
    print(f"{'lang':6} {'D_know':>8} {'D_ling':>8} {'total':>8} {'avg chars':>10}")
    for lang, v in stats["per_lang"].items():
        print(f"{lang:6} {v['d_know']:>8} {v['d_ling']:>8} {v['total']:>8} {v['avg_text_chars']:>10}")
    print(
        f"{'all':6} {stats['datasets']['d_know']['rows']:>8} {stats['datasets']['d_ling']['rows']:>8} {stats['total']:>8}"
    )
    print("categories (major):", ", ".join(f"{k} {v}" for k, v in stats["categories"]["major"].items()))
    print(f"wrote {stats['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(console.run_job(main))
