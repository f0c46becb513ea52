"""pHash near-duplicates (paper appendix B.2, Zauner 2010): coarse-grained dedup after exact dedup.

Each decoded image gets a 64-bit pHash (``imagehash.phash``, in :mod:`mella.stages.filters.decode`). Within
each target language, distinct images whose pHashes are within ``threshold`` bits (Hamming distance)
are near-duplicates; :func:`mella.phash_index.find_pairs` finds every such pair with an exact
multi-index hash (sub-quadratic; Ray-partitioned above ``ray_min_images``), and the survivor rule of
:mod:`mella.stages.dedup.near_dup` (priority, same-page exemption) decides which images go. Every row
showing a dropped image is rejected (reason ``near_duplicate``, detail: distance and the kept image).

Default threshold 4 bits, from measurements on the miniweb's real images
(``tests/benchmarks/measure_phash_threshold.py``, 261 distinct images > 256 px): planted copies are
within 4 bits for 100 % of JPEG q70 re-encodes, 99.2 % of 90 % resizes, 81.5 % of brightness changes
and 35.7 % of 2 % crops (threshold 6: 100 / 100 / 92.9 / 64.6 %). But distinct screenshots of one
dialog in two states (installer steps, tutorial steps) are often 4–6 bits apart. Without the
same-page rule, threshold 6 removed 33 distinct miniweb images (D_know recall of PAIRS_expected
0.917) and 4 removed 15 (0.958); with it, threshold 4 removes 6 and recall is 0.976. Crops and colour
changes are left to CNN semantic dedup. Photo corpora can afford 6–8 (``filters.phash.threshold``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import Field

from mella.resources import Strict
from mella.phash_index import find_pairs, find_pairs_distributed, hashes_from_hex
from mella.stages.dedup.exact import load_survivors
from mella.stages.dedup.near_dup import ImageKey, NearDupStage, distinct_images, greedy_drops, write_drops


class PhashConfig(Strict):
    """pHash near-duplicate stage (paper appendix B.2)."""

    enabled: bool = True
    threshold: int = Field(4, ge=0, le=32, description="max Hamming distance (bits) of near-duplicate pHashes")
    ray_min_images: int = Field(500_000, ge=1, description="use Ray tasks to find pairs above this many images")


def find_near_duplicates(parquet_files: list[str], exact_survivors: dict[str, str], exact_mode: str,
                         cfg: PhashConfig) -> dict[ImageKey, str]:
    """``{(lang, pixel_sha256): detail}`` for every distinct image to drop as a pHash near-duplicate.

    Only rows still active after exact dedup take part (``exact_survivors`` from
    :func:`mella.stages.dedup.exact.find_exact_duplicates`); images, priority and the same-page rule
    are those of :mod:`mella.stages.dedup.near_dup`.
    """
    if not cfg.enabled or not parquet_files:
        return {}
    by_lang, t = distinct_images(parquet_files, exact_survivors, exact_mode, "phash")
    drops: dict[ImageKey, str] = {}
    for imgs in by_lang.values():
        if len(imgs.keys) < 2:
            continue
        hashes = hashes_from_hex(t["phash"].take(pa.array(imgs.rows)).to_pylist())
        if len(imgs.keys) >= cfg.ray_min_images:
            pairs, dists = find_pairs_distributed(hashes, cfg.threshold, num_partitions=2)
        else:
            pairs, dists = find_pairs(hashes, cfg.threshold)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        for d, (s, dist) in greedy_drops(imgs, pairs[:, 0], pairs[:, 1], np.asarray(dists)).items():
            drops[imgs.keys[d]] = f"pHash distance {int(dist)} <= {cfg.threshold} to {imgs.urls[s]}"
    return drops


class PhashDedupStage(NearDupStage):
    """pHash near-duplicates (paper appendix B.2): :func:`find_near_duplicates` over all parts, rows of
    dropped images rejected with reason ``near_duplicate``."""

    name = "phash_dedup"
    reason = "near_duplicate"

    def __init__(self, cfg: PhashConfig, exact_mode: str = "image_text") -> None:
        self.cfg, self.exact_mode = cfg, exact_mode

    def find(self, parts: list[str], decisions: str, upstream: dict[str, str]) -> None:
        survivors = load_survivors(upstream["exact_dedup"]) if "exact_dedup" in upstream else {}
        write_drops(find_near_duplicates(parts, survivors, self.exact_mode, self.cfg), decisions)
        self.decisions = decisions
