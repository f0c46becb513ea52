"""The one near-duplicate survivor rule (paper appendix B.2 removes near-duplicates; which copy stays is ours).

Greedy in priority order: an item is dropped iff a *kept* better item is within the threshold of it,
so a chain A~B~C with A≁C keeps A and C; each dropped item names the best kept item that drops it.
Used by the pHash stage and index (:mod:`mella.stages.dedup.phash`, :mod:`mella.phash_index`) and by CNN
semantic dedup (:mod:`mella.stages.dedup.semantic`); what "better" means (D_know first, most pixels, largest
file, smallest URL) and the same-page exemption are the callers' (:mod:`mella.stages.dedup.near_dup`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def greedy_drops(
    i, j, dist, rank=None, exempt: Callable[[int, int], bool] | None = None
) -> dict[int, tuple[int, float]]:
    """Apply the survivor rule to candidate pairs ``(i[k], j[k])`` with distances ``dist[k]`` (any order).

    Args:
        i, j: int arrays (p,) of item indexes; self-pairs are ignored.
        dist: (p,) numbers carried into the result (Hamming bits, cosine).
        rank: optional (n,) ints, 0 = best; default: the index itself is the rank.
        exempt: optional ``exempt(better, worse) -> bool``; an exempt pair never drops (same-page rule).

    Returns:
        ``{dropped index: (kept index, distance)}``. O(p log p) time, O(p) memory.
    """
    i, j, dist = np.asarray(i, np.int64), np.asarray(j, np.int64), np.asarray(dist)
    r = (lambda x: x) if rank is None else (lambda x, _r=np.asarray(rank): _r[x])  # noqa: B008 - binds the array once, not a shared default
    better = r(i) < r(j)
    src, dst = np.where(better, i, j), np.where(better, j, i)
    order = np.lexsort((r(src), r(dst)))
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for s, d, x in zip(src[order].tolist(), dst[order].tolist(), dist[order].tolist()):
        if s != d and not (exempt and exempt(s, d)):
            neighbours.setdefault(d, []).append((s, x))
    dropped: dict[int, tuple[int, float]] = {}
    for d in neighbours:  # in rank order: every better item's fate is known when d is decided
        for s, x in neighbours[d]:
            if s not in dropped:
                dropped[d] = (s, x)
                break
    return dropped
