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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mella.stages.base import Stage, reject
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
    """Apply the survivor rule to candidate pairs ``(i[k], j[k])`` (indexes into ``imgs``, any order).

    Returns ``{dropped index: (kept index, distance)}``: an image is dropped iff a better image that
    is itself kept lies within the threshold and shares no page with it. O(pairs log pairs).
    """
    src, dst = np.minimum(i, j), np.maximum(i, j)  # index order is priority order: src is the better one
    order = np.lexsort((src, dst))
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for s, d, x in zip(src[order].tolist(), dst[order].tolist(), np.asarray(dist)[order].tolist()):
        if s != d and not (imgs.pages[s] & imgs.pages[d]):
            neighbours.setdefault(d, []).append((s, x))
    dropped: dict[int, tuple[int, float]] = {}
    for d in sorted(neighbours):  # best first: every better image's fate is known when d is decided
        for s, x in neighbours[d]:
            if s not in dropped:
                dropped[d] = (s, x)
                break
    return dropped


class NearDupStage(Stage):
    """Reject every row that shows a dropped image: ``{(lang, pixel_sha256): detail}`` → reason ``reason``."""

    reads_image = False

    def __init__(self, name: str, reason: str, drops: dict[ImageKey, str]) -> None:
        self.name, self.reason, self.drops = name, reason, drops

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            detail = self.drops.get((r.get("lang"), r.get("pixel_sha256")))
            if detail is not None:
                reject(r, self.name, self.reason, detail)
