"""What the report shows: exact counts and bounded, deterministic samples of a build output, in one streaming pass.

Input: ``DIR/d_know``, ``DIR/d_ling`` and ``DIR/rejects`` parquet parts (:mod:`mella.schema`). Only small
columns are read (never ``image`` or ``embedding``), batch by batch (``BATCH_ROWS`` rows), so memory is
bounded by one batch plus the samples, whatever the corpus size.

Samples are *bottom-k by row id*: ids are sha1 hex (:func:`mella.schema.record_id`), so the ``k`` smallest
ids of a group are a uniform random sample of it that is the same on every run (Cohen & Kaplan 2007,
"Summarizing data using bottom-k sketches"). Counts are exact. Each sampled row keeps where it lives
(``_file``, ``_row``: part path and row number) so thumbnails can read just those images later.

Near-duplicate rejects (pHash and CNN stages) are grouped by the image kept in their place, parsed from
``detail`` (``... to <kept image URL>``, written by :mod:`mella.stages.dedup.phash` and
:mod:`mella.stages.dedup.semantic`); groups are sampled bottom-k by sha1 of ``(stage, lang, kept URL)``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BATCH_ROWS = 65_536
DATASETS = ("d_know", "d_ling")
NEAR_DUP_STAGES = ("phash_dedup", "semantic_dedup")
#: columns read per dataset (those absent from a part are null)
COLUMNS = {
    "d_know": [
        "id",
        "lang",
        "page_url",
        "image_url",
        "alt_text",
        "width",
        "height",
        "format",
        "image_bytes",
        "category",
        "nsfw_score",
        "phash",
        "source",
        "lid_prob",
    ],
    "d_ling": [
        "id",
        "lang",
        "page_url",
        "image_url",
        "alt_text",
        "width",
        "height",
        "format",
        "image_bytes",
        "category",
        "caption_en",
        "text",
        "mt_backend",
        "qe_score",
        "d_ling_reason",
    ],
    "rejects": [
        "id",
        "lang",
        "page_url",
        "image_url",
        "alt_text",
        "width",
        "height",
        "format",
        "image_bytes",
        "stage",
        "reason",
        "detail",
        "phash",
        "nsfw_score",
    ],
}
#: ``detail`` of a near-duplicate reject: the measure and the kept image (see module doc)
_KEPT = re.compile(r"^(?P<measure>.*?) to (?P<kept>\S+)$")


def part_files(out_dir: str, name: str) -> list[str]:
    """Sorted ``out_dir/name/*.parquet``."""
    return sorted(glob.glob(os.path.join(out_dir, name, "*.parquet")))


def iter_batches(files: list[str], columns: list[str]):
    """Yield ``(file, first_row, table)`` over ``files``, ``BATCH_ROWS`` rows at a time, only ``columns``
    (missing ones as null strings), plus ``_row`` (row number in the file, int64)."""
    for f in files:
        pf = pq.ParquetFile(f)
        present = [c for c in columns if c in pf.schema_arrow.names]
        start = 0
        for rb in pf.iter_batches(batch_size=BATCH_ROWS, columns=present):
            t = pa.Table.from_batches([rb])
            for c in columns:
                if c not in present:
                    t = t.append_column(c, pa.nulls(t.num_rows, pa.string()))
            t = t.append_column("_row", pa.array(range(start, start + t.num_rows), pa.int64()))
            yield f, t
            start += t.num_rows


class BottomK:
    """Per group, the ``k`` rows with the smallest ``id`` seen so far (exact counts kept alongside)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.counts: Counter = Counter()
        self.rows: dict = {}  # group -> list[dict] sorted by id

    def add(self, group, rows: list[dict]) -> None:
        self.counts[group] += len(rows)
        merged = sorted(self.rows.get(group, []) + rows, key=lambda r: r["id"])[: self.k]
        self.rows[group] = merged


def _sample_table(bk: BottomK, file: str, t: pa.Table, keys: list[str]) -> None:
    """Group ``t`` by ``keys`` and offer each group's ``k`` smallest ids to ``bk`` (counts stay exact)."""
    counts = t.group_by(keys).aggregate([("id", "count")]).to_pylist()
    for g in counts:
        mask = None
        for key in keys:
            m = pc.is_null(t[key]) if g[key] is None else pc.equal(t[key], g[key])
            mask = m if mask is None else pc.and_(mask, m)
        sub = t.filter(mask)
        sub = sub.take(pc.sort_indices(sub, sort_keys=[("id", "ascending")])[: bk.k])
        rows = sub.to_pylist()
        for r in rows:
            r["_file"] = file
        group = tuple(g[key] for key in keys) if len(keys) > 1 else g[keys[0]]
        bk.counts[group] += g["id_count"] - len(rows)
        bk.add(group, rows)


@dataclass
class NearDupGroups:
    """Near-duplicate rejects grouped by the kept image: ``groups[(stage, lang, kept_url)]`` = dropped rows."""

    k: int
    max_dropped: int
    n_groups: Counter = field(default_factory=Counter)  # stage -> exact number of groups
    n_rows: Counter = field(default_factory=Counter)  # stage -> exact number of dropped rows
    groups: dict = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)  # group -> exact number of dropped rows
    _seen: dict = field(default_factory=dict)  # stage -> set of group hashes (exact distinct count)

    def add(self, row: dict) -> None:
        m = _KEPT.match(row.get("detail") or "")
        if not m:
            return
        row["measure"] = m["measure"]
        key = (row["stage"], row["lang"], m["kept"])
        h = hashlib.sha1("\x1f".join(map(str, key)).encode()).hexdigest()
        seen = self._seen.setdefault(row["stage"], set())
        if h not in seen:
            seen.add(h)
            self.n_groups[row["stage"]] += 1
        self.n_rows[row["stage"]] += 1
        self.sizes[key] += 1
        # keep the k groups with the smallest hash per stage; prune when a smaller one arrives
        kept = [g for g in self.groups if g[0] == row["stage"]]
        if key not in self.groups:
            if len(kept) >= self.k:
                worst = max(kept, key=lambda g: self.groups[g]["hash"])
                if self.groups[worst]["hash"] < h:
                    return
                del self.groups[worst]
            self.groups[key] = {"hash": h, "rows": []}
        rows = self.groups[key]["rows"]
        rows.append(row)
        rows.sort(key=lambda r: r["id"])
        del rows[self.max_dropped :]


@dataclass
class Selection:
    """Everything the report renders except thumbnails (see module doc)."""

    know: BottomK
    ling: BottomK
    rejects: BottomK
    near: NearDupGroups


def select(
    out_dir: str, per_lang: int = 240, per_reason: int = 12, near_groups: int = 40, near_dropped: int = 6
) -> Selection:
    """One streaming pass over ``out_dir``: exact counts and bounded samples.

    Args:
        per_lang: D_know / D_ling rows sampled per language (the gallery's pages × page size).
        per_reason: reject rows sampled per ``(stage, reason)``.
        near_groups: near-duplicate groups sampled per stage; ``near_dropped``: dropped rows shown per group.
    """
    sel = Selection(BottomK(per_lang), BottomK(per_lang), BottomK(per_reason), NearDupGroups(near_groups, near_dropped))
    for ds, bk in (("d_know", sel.know), ("d_ling", sel.ling)):
        for f, t in iter_batches(part_files(out_dir, ds), COLUMNS[ds]):
            _sample_table(bk, f, t, ["lang"])
    for f, t in iter_batches(part_files(out_dir, "rejects"), COLUMNS["rejects"]):
        _sample_table(sel.rejects, f, t, ["stage", "reason"])
        near = t.filter(pc.is_in(t["stage"], pa.array(NEAR_DUP_STAGES)))
        for r in near.to_pylist():
            r["_file"] = f
            sel.near.add(r)
    return sel
