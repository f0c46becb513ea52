"""See a corpus: write the HTML report and the dataset card of a build output. Thin entry point.

(Not ``jobs/inspect.py``: a script runs with its folder first on ``sys.path``, so a ``jobs/inspect.py``
would shadow the stdlib ``inspect`` for every job in ``jobs/`` — typing_extensions, pydantic, dataclasses fail.)

    python jobs/inspect_corpus.py DIR [--train RUN_DIR] [--eval EVAL_DIR] [--page-size 48] [--max-pages 5] [--no-card]

Writes ``DIR/report/index.html`` (a static site that opens from file://: funnel chart, statistics figure,
D_know galleries per language, D_ling rows, rejects by stage and reason, near-duplicate groups, and
with --train/--eval the training metadata and the evaluation report with its paired outputs) and
``DIR/README.md`` (a Hugging Face dataset card: ``datasets.load_dataset(DIR)`` loads d_know and d_ling).
Thumbnails are made in Ray tasks (local Ray, or the cluster in ``RAY_ADDRESS``). See :mod:`mella.report`
and :mod:`mella.dataset_card`. Bad arguments: one line on stderr, exit status 2 (:func:`mella.console.run_job`);
-q/-v/--debug as every job.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from _bootstrap import ROOT  # noqa: F401 - the import puts platform/ on sys.path

from mella import cli, console


def main(argv: list[str] | None = None) -> int:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="build output directory (d_know/, d_ling/, rejects/, funnel.json)")
    ap.add_argument("--train", help="training output directory (holds mella_train.json files)")
    ap.add_argument(
        "--eval", help="evaluation output directory (report.json, chart.png, pairs.csv of jobs/evaluate.py)"
    )
    ap.add_argument("--page-size", type=int, default=48, help="thumbnails per gallery page (default 48)")
    ap.add_argument("--max-pages", type=int, default=5, help="gallery pages per language and dataset (default 5)")
    ap.add_argument("--no-card", action="store_true", help="do not write DIR/README.md")
    ap.add_argument("--num-cpus", type=int, help="local Ray only")
    cli.add_config_flags(ap)
    console.add_console_flags(ap)
    args, _ = cli.parse(ap, argv, overrides=False)
    console.setup(args.quiet, args.verbose)
    if args.print_config:
        return cli.print_config(cli.flag_settings(args))
    if not args.quiet:  # the report's own progress lines (mella.report logs them at INFO)
        logging.getLogger("mella.report").setLevel(logging.INFO)
    from mella.report import check_inputs

    if args.page_size < 1 or args.max_pages < 1:
        raise console.UsageError("--page-size and --max-pages must be >= 1")
    try:
        check_inputs(args.dir, args.train, args.eval)
    except ValueError as e:
        raise console.UsageError(str(e)) from None
    from mella import dataset_card
    from mella.report import write_report
    from mella.runtime import init_ray

    init_ray(args.num_cpus)
    index = write_report(args.dir, args.train, args.eval, page_size=args.page_size, max_pages=args.max_pages)
    if not args.no_card:
        t0 = time.perf_counter()
        print(f"dataset card: {dataset_card.write_card(args.dir)} ({time.perf_counter() - t0:.1f} s)")
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(console.run_job(main))
