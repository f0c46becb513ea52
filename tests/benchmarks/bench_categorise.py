"""Cost of the CPU categoriser (EfficientNet-lite0 ImageNet-1k → taxonomy) in a plain build (issue 14).

    python tests/benchmarks/bench_categorise.py [--corpus DIR] [--threads 1]

Runs :class:`mella.stages.enrich.categorise.EfficientNetCategoriser` over the images of a build's
``DIR/d_know`` (default ./mella_out, what `make demo` writes) and prints process CPU seconds per image and the category counts. CPU time, not
wall time, so that a shared machine's load does not inflate it.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="mella_out", help="build output with d_know/ (default ./mella_out)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = ap.parse_args()
    import pyarrow.parquet as pq
    import torch

    from mella.stages.enrich.categorise import EfficientNetCategoriser

    torch.set_num_threads(a.threads)
    files = glob.glob(str(Path(a.corpus) / "d_know" / "*.parquet"))
    if not files:
        raise SystemExit(f"{a.corpus}/d_know/*.parquet not found: run `make demo` first or give --corpus")
    rows = pq.read_table(files, columns=["image"]).to_pylist()
    c0 = time.process_time()
    cat = EfficientNetCategoriser()
    c1, w1 = time.process_time(), time.time()
    cat.process(rows)
    c2, w2 = time.process_time(), time.time()
    print(
        f"{len(rows)} images, {a.threads} thread(s): model load {c1 - c0:.1f} s CPU; categorise {c2 - c1:.1f} s CPU "
        f"({1000 * (c2 - c1) / len(rows):.1f} ms/image), {w2 - w1:.1f} s wall"
    )
    print("major:", dict(Counter(r["category_major"] for r in rows)))
    print("fine:", dict(Counter(r["category"] for r in rows).most_common(8)))


if __name__ == "__main__":
    main()
