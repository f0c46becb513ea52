"""Exact duplicates (paper appendix B.2: "remove duplicate images with identical pixel-level content").

Key, global over the whole run and per target language (the same image with alt-text in two
languages belongs to both D_know^L, paper eq. 5):

- ``image_text`` (default): ``(lang, pixel_sha256, alt_text)`` — removes repeats of the same
  image-text pair (a screenshot reused on several pages with the same caption, site-wide banners)
  but keeps the same picture with *different* in-language descriptions (Serbian Cyrillic and Latin
  editions of one manual; "before/after Oilify" vs "before/after Photocopy"), which are distinct
  training pairs of D_know, as a captioning set keeps several captions per image;
- ``image``: ``(lang, pixel_sha256)`` — one row per image and language, the strict reading.

Images routed to D_ling (``d_ling_reason`` set: their alt-text is unusable) use the marker
``ROUTED_TEXT`` in place of the alt-text, so each image yields one D_ling candidate per language.

Survivor of a group, deterministic whatever the arrival order or sharding: a D_know row before a
D_ling candidate, then the smallest ``(page_url, image_url, id)``. Only groups with ≥ 2 members come back. Up to
``DRIVER_MAX_ROWS`` key rows are aggregated with pyarrow in the driver; above that a Ray Data
``groupby`` (hash shuffle across the cluster, one partition per million rows) does it.
"""

from __future__ import annotations

import math
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.aggregate import Count, Min

from mella.io import write_parquet_atomic
from mella.stages.base import DedupStage

KEY_COLUMNS = ["id", "lang", "pixel_sha256", "alt_text", "page_url", "image_url", "reason", "d_ling_reason"]
DRIVER_MAX_ROWS = 2_000_000
SEP = "\x1f"
#: Stands in for the alt-text of D_ling candidates in the ``image_text`` key (cannot occur in HTML text).
ROUTED_TEXT = "\x00d_ling"


def group_key(r: dict, mode: str) -> str:
    """The exact-dedup group key of one row (dict with ``KEY_COLUMNS``)."""
    parts = [r.get("lang") or "", r.get("pixel_sha256") or ""]
    if mode == "image_text":
        parts.append(ROUTED_TEXT if r.get("d_ling_reason") else (r.get("alt_text") or ""))
    return SEP.join(parts)


def sort_key(r: dict) -> str:
    """The survivor order within a group: D_know rows first, then ``(page_url, image_url, id)``."""
    return SEP.join(("1" if r.get("d_ling_reason") else "0", r.get("page_url") or "", r.get("image_url") or "", r["id"]))


def is_survivor(r: dict, survivors: dict[str, str], mode: str) -> bool:
    """Whether row ``r`` survives exact dedup given :func:`find_exact_duplicates`' result."""
    best = survivors.get(group_key(r, mode))
    return best is None or best == sort_key(r)


def _group_key(t: pa.Table, mode: str) -> pa.Array:
    parts = [pc.fill_null(t["lang"], ""), pc.fill_null(t["pixel_sha256"], "")]
    if mode == "image_text":
        routed = pc.is_valid(t["d_ling_reason"])
        parts.append(pc.if_else(routed, pa.scalar(ROUTED_TEXT), pc.fill_null(t["alt_text"], "")))
    return pc.binary_join_element_wise(*parts, SEP)


def _keys(batch: pa.Table, mode: str) -> pa.Table:
    batch = batch.filter(pc.is_null(batch["reason"]))
    flag = pc.if_else(pc.is_valid(batch["d_ling_reason"]), pa.scalar("1"), pa.scalar("0"))
    sort_key = pc.binary_join_element_wise(
        flag, pc.fill_null(batch["page_url"], ""), pc.fill_null(batch["image_url"], ""), batch["id"], SEP
    )
    return pa.table({"group": _group_key(batch, mode), "sort_key": sort_key})


def find_exact_duplicates(parquet_files: list[str], mode: str = "image_text", driver_max_rows: int = DRIVER_MAX_ROWS) -> dict[str, str]:
    """``{group key: survivor sort key}`` for every group with ≥ 2 active rows (see module docstring).

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in ("image_text", "image"):
        raise ValueError(f"exact dedup key must be 'image_text' or 'image', not {mode!r}")
    if not parquet_files:
        return {}
    n_rows = sum(pq.read_metadata(p).num_rows for p in parquet_files)
    if n_rows <= driver_max_rows:
        keys = pa.concat_tables([_keys(pq.read_table(p, columns=KEY_COLUMNS), mode) for p in parquet_files])
        agg = keys.group_by("group").aggregate([("sort_key", "min"), ("sort_key", "count")])
        agg = agg.filter(pc.greater(agg["sort_key_count"], 1))
        return dict(zip(agg["group"].to_pylist(), agg["sort_key_min"].to_pylist()))
    ds = ray.data.read_parquet(parquet_files, columns=KEY_COLUMNS)
    ds = ds.map_batches(_keys, batch_format="pyarrow", fn_kwargs={"mode": mode})
    parts = max(1, math.ceil(n_rows / 1_000_000))
    agg = ds.groupby("group", num_partitions=parts).aggregate(Min("sort_key"), Count())
    agg = agg.filter(lambda r: r["count()"] > 1)
    return {r["group"]: r["min(sort_key)"] for r in agg.iter_rows()}


# ------------------------------------------------------------------ caption cap (issue 17)
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


ExactKey = Literal["image_text", "image"]


def write_survivors(survivors: dict[str, str], image_groups: dict[str, str], path: str,
                    caps: dict[str, str] | None = None) -> None:
    """Exact dedup's decisions as Parquet: ``kind`` (``group``: the run's key mode, ``image``: picture
    only, ``caption``: a row over the caption cap), ``key`` (group key; for ``caption`` row id and
    alt-text), ``survivor`` (the survivor's sort key; for ``caption`` the reject detail)."""
    caps = caps or {}
    kinds = ["group"] * len(survivors) + ["image"] * len(image_groups) + ["caption"] * len(caps)
    t = pa.table({"kind": kinds, "key": list(survivors) + list(image_groups) + list(caps),
                  "survivor": list(survivors.values()) + list(image_groups.values()) + list(caps.values())})
    write_parquet_atomic(t, path)


def load_survivors(path: str, kind: str = "group") -> dict[str, str]:
    """``{group key: survivor sort key}`` of :func:`write_survivors`' ``kind`` rows (empty for no file)."""
    t = pq.read_table(path, filters=[("kind", "=", kind)], columns=["key", "survivor"])
    return dict(zip(t["key"].to_pylist(), t["survivor"].to_pylist()))


class ExactDedupStage(DedupStage):
    """Reject every row of a duplicated group except its survivor (reason ``duplicate``).

    ``with_d_ling`` (``image_text`` mode): a D_ling candidate whose picture is also a D_know pair in
    its language is dropped too (reason ``duplicate``, detail ``already in D_know``) — no GPU time
    for captioning an image we have a native alt-text for. (In ``image`` mode the group key does
    this already.)

    ``max_pairs_per_image`` (``filters.max_pairs_per_image``): at most that many D_know rows per
    picture and language (:func:`find_excess_captions`); the others are rejected ``too_many_captions``.
    """

    name = "exact_dedup"
    reads = ("lang", "pixel_sha256", "alt_text", "page_url", "image_url", "d_ling_reason")

    def __init__(self, mode: ExactKey = "image_text", with_d_ling: bool = False,
                 max_pairs_per_image: int | None = None) -> None:
        self.mode = mode
        self.with_d_ling = with_d_ling and mode == "image_text"
        self.max_pairs_per_image = max_pairs_per_image

    def find(self, parts: list[str], decisions: str, upstream: dict[str, str]) -> None:
        survivors = find_exact_duplicates(parts, self.mode)
        image_groups = find_exact_duplicates(parts, "image") if self.with_d_ling else {}
        caps = (find_excess_captions(parts, survivors, self.mode, self.max_pairs_per_image)
                if self.max_pairs_per_image else {})
        write_survivors(survivors, image_groups, decisions,
                        {f"{row_id}{SEP}{alt}": detail for (row_id, alt), detail in caps.items()})
        self.decisions = decisions

    def setup(self) -> None:
        self.survivors = load_survivors(self.decisions) if self.decisions else {}
        self.image_groups = load_survivors(self.decisions, "image") if self.decisions and self.with_d_ling else {}
        self.caps = load_survivors(self.decisions, "caption") if self.decisions and self.max_pairs_per_image else {}

    def process(self, rows: list[dict]) -> None:
        for r in rows:
            cap = self.caps.get(f"{r['id']}{SEP}{r.get('alt_text') or ''}") if self.caps else None
            if cap is not None and is_survivor(r, self.survivors, self.mode):
                self.reject(r, "too_many_captions", cap)
            elif not is_survivor(r, self.survivors, self.mode):
                _flag, page, img, _id = self.survivors[group_key(r, self.mode)].split(SEP)
                self.reject(r, "duplicate", f"same as {img} on {page}")
            elif r.get("d_ling_reason") and self.image_groups:
                best = self.image_groups.get(group_key(r, "image"), "")
                if best.startswith("0" + SEP):  # the picture's best row is a D_know pair
                    _flag, page, img, _id = best.split(SEP)
                    self.reject(r, "duplicate", f"already in D_know: {img} on {page}")
