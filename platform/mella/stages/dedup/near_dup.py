"""What the pHash and CNN near-duplicate stages share: the distinct images they compare, the survivor rule.

Both stages compare *distinct images* per target language — a ``(lang, pixel_sha256)`` key, over
the rows still active after exact dedup (identical pixels are exact dedup's business, whose key may
keep one picture with several captions) — and drop, greedily in priority order, every image that
has a *kept* better image within the threshold, so a chain A~B~C with A≁C keeps A and C:

priority = a D_know image before a D_ling candidate (its alt-text is the knowledge we came for),
then the most pixels, then the largest file (the better encoding), then the smallest URL —
deterministic and global over the run, whatever the sharding.

Same-page rule (refined in issue 12): two images shown on a common page are near-duplicates only
if that page shows them with the same normalised alt-text (NFKC, casefolded, whitespace collapsed,
end punctuation stripped). A thumbnail and its full-size image, or one photo as JPEG and PNG, with
one alt-text are the same content twice; near-identical pictures with *different* alt-texts on one
page are distinct content (installer steps, tutorial steps, a photo before/after a filter) and stay.
A D_ling candidate has no usable alt-text, so on a shared page it is never a near-duplicate.
The redundancy appendix B.2 removes is mostly the same picture re-published across pages and sites.

Distributed (issue 12): the distinct images are built by a hash group-by of the active rows on
``pixel_sha256`` (:func:`distinct_images`, one record per image with its best row, priority and
page appearances); each stage finds its candidate pairs in Ray tasks and writes them as Parquet;
the survivor rule then runs **on the driver over the pairs only** (:func:`drops_from_pairs`): the
endpoints' records are fetched by a distributed filter, so memory is O(pairs), never O(rows). The
greedy rule is sequential in priority order across a connected component of pairs, and components
of near-duplicate pairs are small (a picture and its copies), but a per-component split would need
a distributed connected-components pass for no memory gain at the pair counts we see (planted 3 %
duplicates at 1M rows: ~30k pairs, a few MB). Every row showing a dropped image is then found by a
hash join (:func:`mella.stages.dedup.shuffle.rows_to_decisions`) and rejected by its part.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mella import survivor
from mella.io import replace_dir
from mella.stages.base import DedupStage
from mella.stages.dedup.shuffle import (
    active_rows,
    bucket_groupby,
    count_rows,
    hex_bucket,
    hex_u64,
    num_partitions,
    rows_to_decisions,
    spill_area,
    task_shuffle,
    write_decisions,
)

SEP = "\x1f"
#: The row columns a near-duplicate stage reads (plus its value columns).
COLUMNS = [
    "lang",
    "pixel_sha256",
    "image_url",
    "page_url",
    "alt_text",
    "d_ling_reason",
    "width",
    "height",
    "image_bytes",
]
#: Image record columns that order the survivor rule (ascending = better) — module docstring.
RANK = ["routed", "neg_pixels", "neg_bytes", "image_url", "pixel_sha256"]


def normalise_alt(alt: pa.Array) -> pa.Array:
    """The same-page rule's alt-text key: NFKC, casefold (``utf8_lower``), whitespace runs → one space,
    end punctuation stripped (the alt_text filter's boilerplate set)."""
    a = pc.utf8_lower(pc.utf8_normalize(pc.fill_null(alt, ""), "NFKC"))
    a = pc.replace_substring_regex(a, r"\s+", " ")
    return pc.utf8_trim(a, " .:!-\u2013\u2014|")


def _image_bucket(t: pa.Table, value_columns: list[str]) -> pa.Table:
    """One bucket's distinct images (module docstring) from its active rows."""
    routed = pc.is_valid(t["d_ling_reason"])
    w = pc.fill_null(t["width"], 0).cast(pa.int64())
    h = pc.fill_null(t["height"], 0).cast(pa.int64())
    alt = pc.if_else(routed, pa.scalar("\x00routed"), normalise_alt(t["alt_text"]))
    t = (
        t.append_column("routed", pc.cast(routed, pa.int8()))
        .append_column("neg_pixels", pc.negate(pc.multiply(w, h)))
        .append_column("neg_bytes", pc.negate(pc.fill_null(t["image_bytes"], 0)))
        .append_column("app", pc.binary_join_element_wise(pc.fill_null(t["page_url"], ""), alt, SEP))
    )
    apps = (
        t.group_by(["lang", "pixel_sha256"])
        .aggregate([("app", "distinct")])
        .rename_columns(["lang", "pixel_sha256", "apps"])
    )
    t = t.set_column(t.schema.get_field_index("image_url"), "image_url", pc.fill_null(t["image_url"], ""))
    t = t.sort_by([("lang", "ascending"), ("pixel_sha256", "ascending")] + [(c, "ascending") for c in RANK[:-1]])
    key = pc.binary_join_element_wise(t["lang"], t["pixel_sha256"], SEP)
    first = np.concatenate([[True], pc.not_equal(key[1:], key[:-1]).to_numpy(zero_copy_only=False)]) if len(t) else []
    best = t.filter(pa.array(first, pa.bool_())).select(["lang", "pixel_sha256", *RANK[:-1], *value_columns])
    apps = apps.sort_by([("lang", "ascending"), ("pixel_sha256", "ascending")])  # one row per image, as ``best``
    best = best.append_column("apps", apps["apps"])
    px = best["pixel_sha256"].to_pylist()
    best = best.append_column("img", pa.array(hex_u64(px), pa.uint64()))
    # ``u`` in [0, 1): a seeded-by-content sample key (pixel-hash bits apart from the bucket's) for k-means
    return best.append_column("u", pa.array(hex_bucket(px, 1 << 30, offset=24) / float(1 << 30)))


def _bucket_rows(t: pa.Table, p: int, value_column: str) -> pa.Table:
    t = t.filter(pc.is_valid(t[value_column]))
    return t.append_column("bucket", pa.array(hex_bucket(t["pixel_sha256"].to_pylist(), p)))


def shuffle_dir(path: str, name: str) -> str:
    """Where a near-duplicate stage's bucket shuffle ``name`` spills: ``shuffle/<name>`` beside ``path`` in
    the stage's work directory (the stage's :func:`~mella.stages.dedup.shuffle.spill_area`, removed when
    the stage ends)."""
    return os.path.join(os.path.dirname(path), "shuffle", name)


def distinct_images(parts: list[str], upstream: list[str], value_columns: list[str], out_dir: str) -> int:
    """Write the distinct active images per language (after the ``upstream`` decisions) that have
    ``value_columns[0]`` set, one record each, as a Parquet dataset ``out_dir``: ``lang``,
    ``pixel_sha256``, ``img`` (uint64: first 64 bits of the pixel hash), the best row's ``RANK``
    columns and ``value_columns``, and ``apps`` (distinct ``page \\x1f normalised alt`` strings).
    Returns the number of images (from the files' footers)."""
    p = num_partitions(count_rows(parts))
    rows = active_rows(parts, COLUMNS + value_columns, upstream)
    ds = bucket_groupby(
        rows.map_batches(_bucket_rows, batch_format="pyarrow", fn_kwargs={"p": p, "value_column": value_columns[0]}),
        p,
        _image_bucket,
        shuffle_dir(out_dir, "images"),
        {"value_columns": value_columns},
    )
    staging = f"{out_dir}.staging-{uuid.uuid4().hex[:8]}"
    ds.write_parquet(staging)
    shutil.rmtree(shuffle_dir(out_dir, "images"), ignore_errors=True)  # consumed: free the disk now
    os.makedirs(staging, exist_ok=True)
    replace_dir(staging, out_dir)
    return sum(pq.read_metadata(os.path.join(out_dir, f)).num_rows for f in os.listdir(out_dir))


def write_pairs(ds, path: str) -> pa.Table:
    """Write the candidate pairs (``lang``, ``a``, ``b`` uint64 image ids, ``dist``, ...) as Parquet under
    ``path`` and read them back for the survivor rule (O(pairs) in the driver; module docstring)."""
    staging = f"{path}.staging-{uuid.uuid4().hex[:8]}"
    ds.write_parquet(staging)
    os.makedirs(staging, exist_ok=True)
    replace_dir(staging, path)
    files = [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.endswith(".parquet")]
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _hash64(texts: list[str]) -> list[int]:
    """64-bit keys of strings (blake2b, hashlib): the same-page rule compares sets of them, not the strings."""
    return [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little") for t in texts]


def app_keys(apps: list[str]) -> tuple[list[int], list[int]]:
    """An image's page appearances (``page \\x1f normalised alt`` strings, :func:`distinct_images`) as the
    same-page rule's keys: (64-bit keys of its pages, keys of its (page, alt) pairs with a real alt-text)."""
    pages = sorted({a.partition(SEP)[0] for a in apps})
    real = sorted({a for a in apps if a.partition(SEP)[2] not in ("\x00routed", "")})
    return _hash64(pages), _hash64(real)


def same_page_exempt(a: tuple, b: tuple) -> bool:
    """The refined same-page rule for two images' :func:`app_keys`: exempt (never near-duplicates) iff they
    share a page and no shared page shows both with one real alt-text (a shared (page, alt) key implies a
    shared page). 64-bit keys: a collision among one pair's few pages is ~1e-19."""
    return bool(set(a[0]).intersection(b[0])) and not set(a[1]).intersection(b[1])


def _endpoints(t: pa.Table, ends: np.ndarray) -> pa.Table:
    """The records of the pairs' images, with ``apps`` replaced by their :func:`app_keys` (``pages``,
    ``real``: list<uint64>)."""
    t = t.filter(pc.is_in(t["img"], value_set=pa.array(ends, pa.uint64())))
    keys = [app_keys(a) for a in t["apps"].to_pylist()]
    t = t.drop_columns(["apps"])
    return t.append_column("pages", pa.array([k[0] for k in keys], pa.list_(pa.uint64()))).append_column(
        "real", pa.array([k[1] for k in keys], pa.list_(pa.uint64()))
    )


def _ranked_endpoints(refs: list) -> tuple[pa.Table, pa.Table]:
    """Ray task: the endpoint records in survivor-rank order (index = rank), split into what the driver needs
    for the rule (``lang``, ``img``, ``pages``, ``real``) and the names it needs only for drops
    (``lang``, ``pixel_sha256``, ``image_url``), which stay in the object store."""
    rec = pa.concat_tables(ray.get(refs)).sort_by([(c, "ascending") for c in RANK])
    return rec.select(["lang", "img", "pages", "real"]), rec.select(["lang", "pixel_sha256", "image_url"])


def _take(names: pa.Table, rows: np.ndarray) -> pa.Table:
    return names.take(pa.array(rows, pa.int64()))


def drops_from_pairs(pairs: pa.Table | None, images_dir: str, describe) -> pa.Table:
    """The survivor rule on the driver over the candidate pairs only: ``(lang, pixel_sha256, detail)`` of
    every dropped image. ``describe(pair_row_index, kept_url) -> detail``. Memory O(pairs), and lean: the
    endpoints are ranked in a Ray task, and the driver holds per endpoint only its language, 64-bit id and
    the same-page keys (Arrow/numpy, a few dozen bytes), turned into Python sets only while its pair is
    checked; names are fetched for the dropped images and their keepers only. Measured (issue 12, 300k
    image records, 28k pairs): driver growth ~40 MiB, against ~120 MiB with the endpoints as Python objects;
    this step does not set the global phase's 1M driver peak (docs/scaling.md §7)."""
    empty = pa.table(
        {
            "lang": pa.array([], pa.string()),
            "pixel_sha256": pa.array([], pa.string()),
            "detail": pa.array([], pa.string()),
        }
    )
    if pairs is None or pairs.num_rows == 0:
        return empty
    ends = np.unique(np.concatenate([pairs["a"].to_numpy(), pairs["b"].to_numpy()]))
    refs = (
        ray.data.read_parquet(images_dir)
        .select_columns(["lang", "img", "apps", *RANK])
        .map_batches(_endpoints, batch_format="pyarrow", fn_kwargs={"ends": ends})
        .to_arrow_refs()
    )
    del ends
    if not refs:
        raise RuntimeError(f"pairs name images absent from the image records in {images_dir}: stale work files?")
    rule_ref, names_ref = ray.remote(num_returns=2)(_ranked_endpoints).remote(refs)
    rec = ray.get(rule_ref)
    i, j = _record_index(rec, pairs)
    pages, real = rec["pages"].combine_chunks(), rec["real"].combine_chunks()
    pv, po, rv, ro = pages.values.to_numpy(), pages.offsets.to_numpy(), real.values.to_numpy(), real.offsets.to_numpy()

    def exempt(s: int, d: int) -> bool:
        return same_page_exempt(
            (pv[po[s] : po[s + 1]].tolist(), rv[ro[s] : ro[s + 1]].tolist()),
            (pv[po[d] : po[d + 1]].tolist(), rv[ro[d] : ro[d + 1]].tolist()),
        )

    dropped = survivor.greedy_drops(i, j, np.arange(len(i)), exempt=exempt)
    del rec, pages, real, i, j
    pv = po = rv = ro = None  # free the endpoint arrays (exempt's closure cells) before the names are fetched
    if not dropped:
        return empty
    d_rows = np.fromiter(dropped.keys(), np.int64, len(dropped))
    s_rows = np.fromiter((s for s, _k in dropped.values()), np.int64, len(dropped))
    names = ray.get(ray.remote(_take).remote(names_ref, np.concatenate([d_rows, s_rows])))
    n = len(d_rows)
    urls = names["image_url"].slice(n).to_pylist()
    detail = [describe(int(k), urls[x]) for x, (_s, k) in enumerate(dropped.values())]
    out = pa.table(
        {
            "lang": names["lang"].slice(0, n),
            "pixel_sha256": names["pixel_sha256"].slice(0, n),
            "detail": pa.array(detail, pa.string()),
        }
    )
    return out.sort_by([("lang", "ascending"), ("pixel_sha256", "ascending"), ("detail", "ascending")])


def _record_index(rec: pa.Table, pairs: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """int64 (pairs,) twice: the rows of ``rec`` holding each pair's ``a`` and ``b`` image of the pair's language
    (one sort per language, ``searchsorted`` for both ends). Raises RuntimeError for an image not in ``rec``."""
    out = {end: np.full(pairs.num_rows, -1, np.int64) for end in ("a", "b")}
    all_imgs = rec["img"].to_numpy()
    for lang in pc.unique(pairs["lang"]).to_pylist():
        rows = np.flatnonzero(pc.equal(rec["lang"], lang).to_numpy(zero_copy_only=False))
        order = rows[np.argsort(all_imgs[rows], kind="stable")]
        imgs = all_imgs[order]
        sel = np.flatnonzero(pc.equal(pairs["lang"], lang).to_numpy(zero_copy_only=False))
        for end, idx in out.items():
            want = pairs[end].to_numpy()[sel]
            pos = np.minimum(np.searchsorted(imgs, want), max(len(imgs) - 1, 0))
            if len(imgs) == 0 or not np.array_equal(imgs[pos], want):
                raise RuntimeError(f"pairs name images absent from the image records ({lang}): stale work files?")
            idx[sel] = order[pos]
    return out["a"], out["b"]


class NearDupStage(DedupStage):
    """Base of the pHash and CNN near-duplicate stages: ``find`` writes, per part, the rows showing a
    dropped image (reason ``reason``); the final pass rejects them."""

    reason: ClassVar[str] = "near_duplicate"
    reads = ("id", "alt_text")

    def find_drops(self, parts: list[str], work: str, upstream: list[str]) -> pa.Table:  # pragma: no cover
        """``(lang, pixel_sha256, detail)`` of the dropped images; intermediate files under ``work``."""
        raise NotImplementedError

    def find(self, parts: list[str], decisions: str, upstream: dict[str, str]) -> None:
        work = decisions + ".work"
        with task_shuffle(), spill_area(os.path.join(work, "shuffle")) as spill:  # shuffle_dir(work/images, ...)
            ds = None
            if parts and self.cfg.enabled:
                up = list(upstream.values())
                drops = self.find_drops(parts, work, up)
                rows = active_rows(parts, ["lang", "pixel_sha256", "alt_text"], up, with_part=True)
                ds = rows_to_decisions(rows, drops, self.reason, count_rows(parts), os.path.join(spill, "join"))
            write_decisions(ds, decisions)
        self.decisions = decisions
