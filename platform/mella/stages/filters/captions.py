"""At most ``filters.max_pairs_per_image`` D_know rows per distinct picture and language.

Exact dedup (``image_text`` key) keeps one picture with several *different* alt-texts, as a captioning
set keeps several captions per image; a page that shows one picture under 400 different alts (a
gallery script, a sprite) would then put 400 rows of one picture into D_know. This cap keeps, per
``(lang, pixel_sha256)``, the first ``max_pairs_per_image`` distinct alt-texts in exact dedup's survivor
order (``(page_url, image_url, id)``) and rejects the other rows with reason ``too_many_captions``,
counted under the ``exact_dedup`` stage (it runs right after it, over the rows exact dedup keeps).
D_ling candidates (``d_ling_reason`` set) are not captions and are not capped here.
"""

from __future__ import annotations

import pyarrow.compute as pc
import pyarrow.parquet as pq

from mella.stages.base import Stage, reject
from mella.stages.dedup.exact import KEY_COLUMNS, is_survivor, sort_key

#: default ``filters.max_pairs_per_image``
MAX_PAIRS_PER_IMAGE = 3


def find_excess_captions(parquet_files: list[str], survivors: dict[str, str], mode: str,
                         max_per_image: int = MAX_PAIRS_PER_IMAGE) -> dict[tuple[str, str], str]:
    """``{(row id, alt_text): detail}`` of the D_know rows beyond the cap (see module docstring; a row
    id names (lang, page, image URL), so the rows of one ``<img>`` URL under several alts share it).

    ``survivors``: :func:`mella.stages.dedup.exact.find_exact_duplicates` for ``mode``. Reads the key
    columns of the active rows in the driver (ids and short strings; the image bytes are not read).
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in parquet_files:
        t = pq.read_table(p, columns=KEY_COLUMNS)
        t = t.filter(pc.and_(pc.and_(pc.is_null(t["reason"]), pc.is_null(t["d_ling_reason"])),
                             pc.is_valid(t["pixel_sha256"])))
        for r in t.to_pylist():
            if is_survivor(r, survivors, mode):
                groups.setdefault((r["lang"], r["pixel_sha256"]), []).append(r)
    drops: dict[tuple[str, str], str] = {}
    for (lang, _pix), rows in groups.items():
        if len(rows) <= max_per_image:
            continue
        rows.sort(key=sort_key)
        kept_alts: list[str] = []
        for r in rows:
            alt = r.get("alt_text") or ""
            if alt in kept_alts:
                continue
            if len(kept_alts) < max_per_image:
                kept_alts.append(alt)
            else:
                drops[(r["id"], alt)] = f"{len(rows)} captions of one picture in {lang}; first {max_per_image} kept"
    return drops


class CaptionCapStage(Stage):
    """Reject the rows :func:`find_excess_captions` chose (stage ``exact_dedup``, reason ``too_many_captions``)."""

    name = "exact_dedup"
    reads_image = False

    def __init__(self, drops: dict[tuple[str, str], str]) -> None:
        self.drops = drops

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            detail = self.drops.get((r["id"], r.get("alt_text") or ""))
            if detail is not None:
                reject(r, self.name, "too_many_captions", detail)
