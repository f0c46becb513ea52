"""Misses of the CNN dedup's multi-probe rule on isotropic vectors, the worst case for k-means (issue 12).

CNN dedup compares a pair only when the two rows share a probed cluster
(:func:`mella.stages.dedup.semantic.probe_clusters`). Real embeddings cluster by content; isotropic
1280-d unit vectors have no structure at all, so every centroid is almost as near as the nearest and
pairs straddle boundaries as often as they can. This script fits the stage's own spherical k-means on
``min(n, 100k)`` such vectors with k = ceil(sqrt(n)) (the stage's default for n rows of one language),
plants pairs at two cosines — 0.995 (the rehearsal's planted CNN pairs, ``tests/synthetic_parts.py``)
and 0.96 (the default threshold) — and counts the pairs that share no probed cluster, for fixed
"p nearest" probing and for the margin rule at several margins and caps. The pairwise cost of the
search grows with the square of the mean probes a row.

    python tests/benchmarks/measure_probe_recall.py [--n 500000] [--pairs 20000]

Measured (2-core box, n = 500,000 → k = 708, 20,000 pairs; ~4 min), pairs missed (probes a row):
    rule                                cos 0.995     cos 0.96
    1 nearest (SemDeDup)                3,397         8,471
    2 nearest (the default until now)   140           1,963
    4 nearest                           0    (4.00)   62
    2 nearest + margin 0.01, ≤ 4        0    (2.75)   252      ← the default: pairwise cost x1.9 of 2 nearest
    2 nearest + margin 0.02, ≤ 6        0    (4.75)   0        (cost x5.6)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from mella.stages.dedup.semantic import probe_clusters, spherical_kmeans

DIM = 1280


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


def _missed(x: np.ndarray, y: np.ndarray, cent: np.ndarray, n_probe: int, margin: float) -> tuple[int, float]:
    """Pairs (x[i], y[i]) sharing no probed cluster, and the mean probes a row."""
    rx, cx = probe_clusters(x, cent, n_probe, margin)
    ry, cy = probe_clusters(y, cent, n_probe, margin)
    k = cent.shape[0]
    shared = np.intersect1d(rx * k + cx, ry * k + cy) // k  # (pair, cluster) probed by both rows
    return len(x) - len(np.unique(shared)), (len(rx) + len(ry)) / (2 * len(x))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500_000, help="rows of one language (sets k = ceil(sqrt(n)))")
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    k = math.ceil(math.sqrt(args.n))
    t0 = time.perf_counter()
    cent = spherical_kmeans(_unit(rng.standard_normal((min(args.n, 100_000), DIM), dtype=np.float32)), k)
    print(f"k-means: n = {args.n:,} (fitted on {min(args.n, 100_000):,}), k = {k}, {time.perf_counter() - t0:.0f} s")
    x = _unit(rng.standard_normal((args.pairs, DIM), dtype=np.float32))
    for noise in (0.1, 0.29):
        y = _unit(x + noise * _unit(rng.standard_normal((args.pairs, DIM), dtype=np.float32)))
        print(f"\n{args.pairs:,} pairs at cosine {np.median((x * y).sum(1)):.3f} (median)")
        print("| probe rule | pairs missed | probes a row | pairwise cost vs 2 nearest |\n|---|---|---|---|")
        for p, m in ((1, 0.0), (2, 0.0), (3, 0.0), (4, 0.0), (4, 0.005), (4, 0.01), (4, 0.015), (6, 0.02)):
            miss, probes = _missed(x, y, cent, p, m if m else 2.0)
            name = f"{p} nearest" if not m else f"2 nearest + margin {m}, at most {p}"
            print(f"| {name} | {miss:,} | {probes:.2f} | x{(probes / 2) ** 2:.1f} |")


if __name__ == "__main__":
    main()
