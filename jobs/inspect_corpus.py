"""See a corpus: write the HTML report and the dataset card of a build output. Thin entry point.

(Not ``jobs/inspect.py``: a script runs with its folder first on ``sys.path``, so a ``jobs/inspect.py``
would shadow the stdlib ``inspect`` for every job in ``jobs/`` — typing_extensions, pydantic, dataclasses fail.)

    python jobs/inspect_corpus.py DIR [--train RUN_DIR] [--eval EVAL_DIR] [--page-size 48] [--max-pages 5] [--no-card]

Writes ``DIR/report/index.html`` (a static site that opens from file://: funnel chart, statistics figure,
D_know galleries per language, D_ling rows, rejects by stage and reason, near-duplicate groups, and
with --train/--eval the training metadata and the evaluation report with its paired outputs) and
``DIR/README.md`` (a Hugging Face dataset card: ``datasets.load_dataset(DIR)`` loads d_know and d_ling).
Thumbnails are made in Ray tasks (local Ray, or the cluster in ``RAY_ADDRESS``). See :mod:`mella.report`
and :mod:`mella.dataset_card`. Exit status 2 on bad arguments; --debug shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="build output directory (d_know/, d_ling/, rejects/, funnel.json)")
    ap.add_argument("--train", help="training output directory (holds mella_train.json files)")
    ap.add_argument("--eval", help="evaluation output directory (report.json, chart.png, pairs.csv of jobs/evaluate.py)")
    ap.add_argument("--page-size", type=int, default=48, help="thumbnails per gallery page (default 48)")
    ap.add_argument("--max-pages", type=int, default=5, help="gallery pages per language and dataset (default 5)")
    ap.add_argument("--no-card", action="store_true", help="do not write DIR/README.md")
    ap.add_argument("--num-cpus", type=int, help="local Ray only")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(argv)
    from mella.report import check_inputs  # noqa: PLC0415 - light: no Ray, no models

    try:
        if args.page_size < 1 or args.max_pages < 1:
            raise ValueError("--page-size and --max-pages must be >= 1")
        check_inputs(args.dir, args.train, args.eval)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        from mella import dataset_card  # noqa: PLC0415
        from mella.report import write_report  # noqa: PLC0415
        from mella.runtime import init_ray  # noqa: PLC0415

        import logging  # noqa: PLC0415

        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        init_ray(args.num_cpus)
        index = write_report(args.dir, args.train, args.eval, page_size=args.page_size, max_pages=args.max_pages)
        if not args.no_card:
            t0 = time.perf_counter()
            print(f"dataset card: {dataset_card.write_card(args.dir)} ({time.perf_counter() - t0:.1f} s)")
        print(f"report: {index}")
    except Exception as e:  # noqa: BLE001 - one clear line unless --debug
        if args.debug:
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
