"""What the pHash and CNN near-duplicate stages share: the distinct images they compare, the survivor rule.

Both stages compare *distinct images* per target language — a ``(lang, pixel_sha256)`` key, over
the rows still active after exact dedup (identical pixels are exact dedup's business, whose key may
keep one picture with several captions) — and drop, greedily in priority order, every image that
has a *kept* better image within the threshold, so a chain A~B~C with A≁C keeps A and C:

priority = a D_know image before a D_ling candidate (its alt-text is the knowledge we came for),
then the most pixels, then the largest file (the better encoding), then the smallest URL —
deterministic and global over the run, whatever the sharding.

Images shown on a common page are never near-duplicates of each other: on one page, near-identical
pictures are distinct content (installer steps, tutorial steps, a photo before/after a filter),
while the redundancy appendix B.2 removes is the same picture re-published across pages and sites.

Every row showing a dropped image is rejected by :class:`NearDupStage` (one reason per stage).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mella import survivor
from mella.io import write_parquet_atomic
from mella.stages.base import DedupStage
from mella.stages.dedup.exact import KEY_COLUMNS, is_survivor

ImageKey = tuple[str, str]  # (lang, pixel_sha256)
COLUMNS = sorted(set(KEY_COLUMNS) | {"width", "height", "image_bytes"})


@dataclass
class Images:
    """The distinct active images of one language, best first.

    ``rows[i]`` indexes the best row of image ``keys[i]`` in the table :func:`distinct_images` returns
    (to gather its pHash or embedding); ``pages[i]`` are the pages the image is shown on.
    """

    keys: list[ImageKey] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    pages: list[set[str]] = field(default_factory=list)


def distinct_images(parquet_files: list[str], exact_survivors: dict[str, str], exact_mode: str, value_column: str,
                    skip: Iterable[ImageKey] = (), extra_columns: Iterable[str] = ()) -> tuple[dict[str, Images], pa.Table]:
    """Distinct images per language that survive exact dedup and have ``value_column`` set.

    Args:
        parquet_files: the work unit parts (REJECT_SCHEMA columns).
        exact_survivors: :func:`mella.stages.dedup.exact.find_exact_duplicates` result.
        exact_mode: the exact-dedup key mode (``image_text`` or ``image``).
        value_column: ``phash`` or ``embedding``: rows where it is null take no part.
        skip: image keys already dropped by an earlier near-duplicate stage.
        extra_columns: more columns to read into the returned table (e.g. ``phash`` for CNN dedup).

    Returns:
        ``({lang: Images}, table)`` where ``table`` holds the rows (``COLUMNS``, ``value_column``, ``extra_columns``)
        that ``Images.rows`` index. Memory: the read columns of all active rows (for embeddings,
        5 KiB a row).
    """
    if not parquet_files:
        return {}, pa.table({})
    cols = list(dict.fromkeys(COLUMNS + [value_column, *extra_columns]))
    t = pa.concat_tables([pq.read_table(p, columns=cols) for p in parquet_files])
    t = t.filter(pc.and_(pc.is_null(t["reason"]), pc.is_valid(t[value_column])))
    skip = set(skip)
    best: dict[ImageKey, list] = {}  # key → [rank, row, url, pages]
    for i, r in enumerate(t.select(COLUMNS).to_pylist()):
        if not is_survivor(r, exact_survivors, exact_mode):
            continue
        key = (r["lang"], r["pixel_sha256"])
        if key in skip:
            continue
        rank = (1 if r["d_ling_reason"] else 0, -((r["width"] or 0) * (r["height"] or 0)), -(r["image_bytes"] or 0),
                r["image_url"] or "")
        entry = best.setdefault(key, [rank, i, r["image_url"], set()])
        if rank < entry[0]:
            entry[0], entry[1], entry[2] = rank, i, r["image_url"]
        entry[3].add(r["page_url"])
    out: dict[str, Images] = {}
    for key in sorted(best, key=lambda k: (k[0], best[k][0])):
        rank, row, url, pages = best[key]
        imgs = out.setdefault(key[0], Images())
        imgs.keys.append(key)
        imgs.rows.append(row)
        imgs.urls.append(url)
        imgs.pages.append(pages)
    return out, t


def greedy_drops(imgs: Images, i: np.ndarray, j: np.ndarray, dist: np.ndarray) -> dict[int, tuple[int, float]]:
    """The survivor rule (:func:`mella.survivor.greedy_drops`) on candidate pairs of ``imgs`` (indexes in
    priority order) with the same-page exemption: ``{dropped index: (kept index, distance)}``."""
    return survivor.greedy_drops(i, j, dist, exempt=lambda s, d: bool(imgs.pages[s] & imgs.pages[d]))


def write_drops(drops: dict[ImageKey, str], path: str) -> None:
    """A near-duplicate stage's decisions as Parquet: ``lang``, ``pixel_sha256``, ``detail`` per dropped image."""
    keys = sorted(drops)
    write_parquet_atomic(pa.table({"lang": [k[0] for k in keys], "pixel_sha256": [k[1] for k in keys],
                                   "detail": [drops[k] for k in keys]}), path)


def load_drops(path: str | None) -> dict[ImageKey, str]:
    """``{(lang, pixel_sha256): detail}`` from :func:`write_drops`' file (empty for None)."""
    if not path:
        return {}
    t = pq.read_table(path)
    return {(lang, px): d for lang, px, d in zip(t["lang"].to_pylist(), t["pixel_sha256"].to_pylist(),
                                                   t["detail"].to_pylist())}


class NearDupStage(DedupStage):
    """Base of the pHash and CNN near-duplicate stages: ``find`` writes the dropped images
    (:func:`write_drops`); applying rejects every row showing one with reason ``reason``."""

    reason: ClassVar[str] = "near_duplicate"
    reads = ("lang", "pixel_sha256")

    def setup(self) -> None:
        self.drops = load_drops(self.decisions)

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            detail = self.drops.get((r.get("lang"), r.get("pixel_sha256")))
            if detail is not None:
                self.reject(r, self.reason, detail)
