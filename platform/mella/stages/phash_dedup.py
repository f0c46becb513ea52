"""pHash near-duplicates (paper appendix B.2, Zauner 2010): coarse-grained dedup after exact dedup.

Each decoded image gets a 64-bit pHash (``imagehash.phash``, in :mod:`mella.stages.decode`). Within
each target language, images whose pHashes are within ``threshold`` bits (Hamming distance) are
near-duplicates; :func:`mella.phash_index.near_duplicate_drops` finds every such pair with an exact
multi-index hash (sub-quadratic; Ray-partitioned above ``ray_min_images``) and drops, greedily by
priority, all but the best image of each neighbourhood — the most pixels, then the largest file (the
better encoding), then the smallest URL — deterministic and global over the run.

Images shown on a common page are never near-duplicates of each other (distinct steps of one
tutorial, before/after pictures); see :func:`find_near_duplicates`.

Identical pixels are the exact-dedup stage's business (its key may keep one picture with several
distinct captions), so this stage compares *distinct* decoded images only: every row showing a
dropped image is rejected (reason ``near_duplicate``, detail: distance and the kept image).

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
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from mella.phash_index import find_pairs, find_pairs_distributed, hashes_from_hex
from mella.stages.base import Stage, reject
from mella.stages.exact_dedup import SEP

COLUMNS = ["id", "lang", "pixel_sha256", "phash", "width", "height", "image_bytes", "alt_text", "page_url",
           "image_url", "reason"]


class PhashConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    threshold: int = Field(4, ge=0, le=32, description="max Hamming distance (bits) of near-duplicate pHashes")
    ray_min_images: int = Field(500_000, ge=1, description="use Ray tasks to find pairs above this many images")


def find_near_duplicates(parquet_files: list[str], exact_survivors: dict[str, str], exact_mode: str,
                         cfg: PhashConfig) -> dict[tuple[str, str], str]:
    """``{(lang, pixel_sha256): detail}`` for every distinct image to drop as a pHash near-duplicate.

    Only rows still active after exact dedup take part (``exact_survivors`` from
    :func:`mella.stages.exact_dedup.find_exact_duplicates`). Two images that appear on a common page
    are never near-duplicates of each other: on one page, near-identical pictures are distinct
    content (installer steps, tutorial steps, a photo before/after a filter), while the redundancy
    B.2 removes is the same picture re-published across pages and sites (re-encoded, resized).
    """
    if not cfg.enabled or not parquet_files:
        return {}
    t = pa.concat_tables([pq.read_table(p, columns=COLUMNS) for p in parquet_files])
    t = t.filter(pc.and_(pc.is_null(t["reason"]), pc.is_valid(t["phash"])))
    images: dict[str, dict[tuple[str, str], list]] = {}
    for r in t.to_pylist():
        parts = [r["lang"] or "", r["pixel_sha256"] or ""] + ([r["alt_text"] or ""] if exact_mode == "image_text" else [])
        best = exact_survivors.get(SEP.join(parts))
        if best is not None and best != SEP.join((r["page_url"] or "", r["image_url"] or "", r["id"])):
            continue  # dropped by exact dedup
        key = (r["lang"], r["pixel_sha256"])
        # priority among equal pixel counts: the larger file (the better encoding), then the smaller URL
        rank = (-((r["width"] or 0) * (r["height"] or 0)), -(r["image_bytes"] or 0), r["image_url"] or "")
        entry = images.setdefault(r["lang"], {}).setdefault(key, [r["phash"], rank, r["image_url"], set()])
        if rank < entry[1]:
            entry[1], entry[2] = rank, r["image_url"]
        entry[3].add(r["page_url"])
    drops: dict[tuple[str, str], str] = {}
    for lang, imgs in images.items():
        keys = sorted(imgs, key=lambda k: imgs[k][1])  # best first
        if len(keys) < 2:
            continue
        hashes = hashes_from_hex([imgs[k][0] for k in keys])
        if len(keys) >= cfg.ray_min_images:
            pairs, dists = find_pairs_distributed(hashes, cfg.threshold, num_partitions=2)
        else:
            pairs, dists = find_pairs(hashes, cfg.threshold)
        neighbours: dict[int, list[tuple[int, int]]] = {}
        for (i, j), d in zip(pairs.tolist(), dists.tolist()):
            if imgs[keys[i]][3] & imgs[keys[j]][3]:
                continue  # shown on a common page: distinct content
            neighbours.setdefault(j, []).append((i, d))  # i < j: i has the higher priority
        dropped: set[int] = set()
        for j in range(len(keys)):  # greedy by priority: dropped iff a kept, better image is within threshold
            for i, d in sorted(neighbours.get(j, ())):
                if i not in dropped:
                    dropped.add(j)
                    drops[keys[j]] = f"pHash distance {d} <= {cfg.threshold} to {imgs[keys[i]][2]}"
                    break
    return drops


class PhashDedupStage(Stage):
    name = "phash_dedup"

    def __init__(self, drops: dict[tuple[str, str], str]) -> None:
        self.drops = drops

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            detail = self.drops.get((r.get("lang"), r.get("pixel_sha256")))
            if detail is not None:
                reject(r, self.name, "near_duplicate", detail)
