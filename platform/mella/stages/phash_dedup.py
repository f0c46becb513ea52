"""pHash near-duplicates (paper appendix B.2, Zauner 2010): coarse-grained dedup after exact dedup.

Each decoded image gets a 64-bit pHash (``imagehash.phash``, in :mod:`mella.stages.decode`). Within
each target language, images whose pHashes are within ``threshold`` bits (Hamming distance) are
near-duplicates; :func:`mella.phash_index.near_duplicate_drops` finds every such pair with an exact
multi-index hash (sub-quadratic; Ray-partitioned above ``ray_min_images``) and drops, greedily by
priority, all but the best image of each neighbourhood — the most pixels, then the largest file (the
better encoding), then the smallest URL — deterministic and global over the run.

Identical pixels are the exact-dedup stage's business (its key may keep one picture with several
distinct captions), so this stage compares *distinct* decoded images only: every row showing a
dropped image is rejected (reason ``near_duplicate``, detail: distance and the kept image).

Default threshold 4 bits, from measurements on the miniweb's real images
(``tests/benchmarks/measure_phash_threshold.py``, 261 distinct images > 256 px): planted copies are
within 4 bits for 100 % of JPEG q70 re-encodes, 99.2 % of 90 % resizes, 81.5 % of brightness changes
and 35.7 % of 2 % crops (threshold 6: 100 / 100 / 92.9 / 64.6 %). But distinct screenshots of one
dialog in two states (installer steps, tutorial steps) are often 4–6 bits apart: on the miniweb,
threshold 6 removes 33 distinct images and D_know recall of PAIRS_expected falls to 0.917; 4 keeps
0.958, 2 keeps 0.969. 4 is the largest threshold that keeps genuine pairs; crops and colour changes
are left to CNN semantic dedup. Natural-photo corpora can afford 6–8 (``filters.phash.threshold``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from mella.phash_index import hashes_from_hex, near_duplicate_drops
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
    :func:`mella.stages.exact_dedup.find_exact_duplicates`).
    """
    if not cfg.enabled or not parquet_files:
        return {}
    t = pa.concat_tables([pq.read_table(p, columns=COLUMNS) for p in parquet_files])
    t = t.filter(pc.and_(pc.is_null(t["reason"]), pc.is_valid(t["phash"])))
    images: dict[str, dict[tuple[str, str], tuple[str, int, str]]] = {}
    for r in t.to_pylist():
        parts = [r["lang"] or "", r["pixel_sha256"] or ""] + ([r["alt_text"] or ""] if exact_mode == "image_text" else [])
        best = exact_survivors.get(SEP.join(parts))
        if best is not None and best != SEP.join((r["page_url"] or "", r["image_url"] or "", r["id"])):
            continue  # dropped by exact dedup
        key = (r["lang"], r["pixel_sha256"])
        prev = images.setdefault(r["lang"], {}).get(key)
        if prev is None or r["image_url"] < prev[2]:
            # tie-break among equal pixel counts: the larger file (the better encoding), then the smaller URL
            rank = f"{2**62 - (r['image_bytes'] or 0):019d}{SEP}{r['image_url']}"
            images[r["lang"]][key] = (r["phash"], (r["width"] or 0) * (r["height"] or 0), r["image_url"], rank)
    drops: dict[tuple[str, str], str] = {}
    for lang, imgs in images.items():
        keys = sorted(imgs)
        if len(keys) < 2:
            continue
        hashes = hashes_from_hex([imgs[k][0] for k in keys])
        pixels = np.array([imgs[k][1] for k in keys], dtype=np.int64)
        ids = [imgs[k][3] for k in keys]
        parts = 2 if len(keys) >= cfg.ray_min_images else None
        drop, kept_by = near_duplicate_drops(hashes, cfg.threshold, pixels=pixels, ids=ids, num_partitions=parts)
        for d, k in zip(drop.tolist(), kept_by.tolist()):
            dist = bin(int(hashes[d]) ^ int(hashes[k])).count("1")
            drops[keys[d]] = f"pHash distance {dist} <= {cfg.threshold} to {imgs[keys[k]][2]}"
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
