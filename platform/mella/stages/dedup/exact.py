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
D_ling candidate, then the smallest ``(page_url, image_url, id)``.

Distributed (issue 12): the key rows of every part are hash-partitioned by ``pixel_sha256`` (every
key mode includes it) by a shuffle through files (:func:`~mella.stages.dedup.shuffle.bucket_groupby`); each bucket groups its rows
with pyarrow and emits the rejected rows — ``(part, id, reason, detail)`` — which are written as a
Parquet dataset sorted by part (:mod:`mella.stages.dedup.shuffle`) and applied part by part.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from mella.stages.base import DedupStage
from mella.stages.dedup.shuffle import (
    active_rows,
    bucket_groupby,
    count_rows,
    hex_bucket,
    num_partitions,
    row_key,
    spill_area,
    task_shuffle,
    write_decisions,
)

KEY_COLUMNS = ["lang", "pixel_sha256", "alt_text", "page_url", "image_url", "reason", "d_ling_reason"]
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
    return SEP.join(
        ("1" if r.get("d_ling_reason") else "0", r.get("page_url") or "", r.get("image_url") or "", r["id"])
    )


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


def _key_rows(batch: pa.Table, mode: str, p: int) -> pa.Table:
    keys = _keys(batch, mode)
    image = _keys(batch, "image")["group"]
    act = batch.filter(pc.is_null(batch["reason"])) if "reason" in batch.column_names else batch
    return (
        keys.append_column("image", image)
        .append_column("part", act["part"])
        .append_column("id", act["id"])
        .append_column("key", row_key(act))
        .append_column("bucket", pa.array(hex_bucket(act["pixel_sha256"].to_pylist(), p)))
    )


def _detail(prefix: str, best: list[str]) -> list[str]:
    out = []
    for b in best:
        _flag, page, img, _id = b.split(SEP)
        out.append(f"{prefix}{img} on {page}")
    return out


def exact_bucket(t: pa.Table, with_d_ling: bool, max_pairs_per_image: int | None = None) -> pa.Table:
    """One bucket's rejected rows (DECISION_SCHEMA) from its key rows (``group``, ``image``, ``sort_key``,
    ``part``, ``id``): every row of a group but its survivor; with ``with_d_ling``, every surviving D_ling
    candidate whose picture's best row is a D_know pair; with ``max_pairs_per_image``, the surviving D_know
    rows of one picture and language beyond the first N in survivor order (``too_many_captions``, issue 17:
    a page showing one picture under 400 alts would otherwise put 400 rows of it into D_know)."""
    best = t.group_by("group").aggregate([("sort_key", "min")]).rename_columns(["group", "best"])
    t = t.join(best, "group")
    dup = pc.not_equal(t["sort_key"], t["best"])
    d = t.filter(dup)
    out = [
        pa.table(
            {
                "part": d["part"],
                "id": d["id"],
                "key": d["key"],
                "reason": pa.array(["duplicate"] * d.num_rows, pa.string()),
                "detail": pa.array(_detail("same as ", d["best"].to_pylist()), pa.string()),
            }
        )
    ]
    if with_d_ling:
        img_best = t.group_by("image").aggregate([("sort_key", "min")]).rename_columns(["image", "img_best"])
        s = t.filter(pc.invert(dup)).join(img_best, "image")
        routed = pc.starts_with(s["sort_key"], "1" + SEP)
        s = s.filter(pc.and_(routed, pc.starts_with(s["img_best"], "0" + SEP)))
        out.append(
            pa.table(
                {
                    "part": s["part"],
                    "id": s["id"],
                    "key": s["key"],
                    "reason": pa.array(["duplicate"] * s.num_rows, pa.string()),
                    "detail": pa.array(_detail("already in D_know: ", s["img_best"].to_pylist()), pa.string()),
                }
            )
        )
    if max_pairs_per_image:
        s = t.filter(pc.invert(dup))
        s = s.filter(pc.starts_with(s["sort_key"], "0" + SEP))  # D_know survivors (D_ling candidates are no captions)
        rows = sorted(
            zip(
                s["image"].to_pylist(),
                s["sort_key"].to_pylist(),
                s["part"].to_pylist(),
                s["id"].to_pylist(),
                s["key"].to_pylist(),
            )
        )
        counts: dict[str, int] = {}
        for img, _sk, *_ in rows:
            counts[img] = counts.get(img, 0) + 1
        seen: dict[str, int] = {}
        cut = {"part": [], "id": [], "key": [], "detail": []}
        for img, _sk, part, rid, key in rows:
            seen[img] = seen.get(img, 0) + 1
            if seen[img] > max_pairs_per_image:
                cut["part"].append(part)
                cut["id"].append(rid)
                cut["key"].append(key)
                cut["detail"].append(
                    f"{counts[img]} captions of one picture in {img.split(SEP)[0]}; first {max_pairs_per_image} kept"
                )
        if cut["id"]:
            out.append(
                pa.table(
                    {
                        "part": pa.array(cut["part"], t.schema.field("part").type),
                        "id": pa.array(cut["id"], t.schema.field("id").type),
                        "key": pa.array(cut["key"], t.schema.field("key").type),
                        "reason": pa.array(["too_many_captions"] * len(cut["id"]), pa.string()),
                        "detail": pa.array(cut["detail"], pa.string()),
                    }
                )
            )
    return pa.concat_tables(out)


ExactKey = Literal["image_text", "image"]


class ExactDedupStage(DedupStage):
    """Reject every row of a duplicated group except its survivor (reason ``duplicate``).

    ``with_d_ling`` (``image_text`` mode): a D_ling candidate whose picture is also a D_know pair in
    its language is dropped too (reason ``duplicate``, detail ``already in D_know``) — no GPU time
    for captioning an image we have a native alt-text for. (In ``image`` mode the group key does
    this already.)

    ``max_pairs_per_image`` (``filters.max_pairs_per_image``): at most that many D_know rows per picture
    and language, the first in survivor order; the others are rejected ``too_many_captions``.

    Raises:
        ValueError: unknown ``mode``.
    """

    name = "exact_dedup"
    reads = ("id", "alt_text")

    def __init__(
        self, mode: ExactKey = "image_text", with_d_ling: bool = False, max_pairs_per_image: int | None = None
    ) -> None:
        if mode not in ("image_text", "image"):
            raise ValueError(f"exact dedup key must be 'image_text' or 'image', not {mode!r}")
        self.mode = mode
        self.with_d_ling = with_d_ling and mode == "image_text"
        self.max_pairs_per_image = max_pairs_per_image

    def find(self, parts: list[str], decisions: str, upstream: dict[str, str]) -> None:
        """Distributed group-by (module docstring) → ``decisions`` (DECISION_SCHEMA, sorted by part)."""
        with task_shuffle(), spill_area(f"{decisions}.shuffle") as spill:
            ds = None
            if parts:
                p = num_partitions(count_rows(parts))
                rows = active_rows(parts, KEY_COLUMNS, list(upstream.values()), with_part=True)
                ds = rows.map_batches(_key_rows, batch_format="pyarrow", fn_kwargs={"mode": self.mode, "p": p})
                ds = bucket_groupby(
                    ds,
                    p,
                    exact_bucket,
                    spill,
                    {"with_d_ling": self.with_d_ling, "max_pairs_per_image": self.max_pairs_per_image},
                )
            write_decisions(ds, decisions)
        self.decisions = decisions
