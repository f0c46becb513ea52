"""The distributed plumbing of the global dedup phase: per-part reads, hash buckets, decisions by part.

No global stage holds O(rows) data in one process (issue 12; after NeMo Curator's semantic-dedup
workflow and datatrove's MinHash dedup, where every step writes files for the next):

- **Rows** are read part by part in Ray tasks (:func:`active_rows`): each part's active rows
  minus those the earlier dedup stages reject, looked up in *that part's slice* of their decisions.
- **Groups** (exact keys, distinct images, pHash bands, k-means clusters) are hash-partitioned by a
  shuffle through files (:func:`bucket_groupby`: each map block writes its rows per bucket, then one
  call per bucket, which groups its rows with pyarrow) — not Ray Data's group-by, whose driver-owned
  objects grow as blocks × partitions. :func:`num_partitions` sizes the buckets from the row count and
  the cluster's CPUs, never a constant.
- **Decisions** (``part``, ``id``, ``reason``, ``detail``: one row per rejected row) are a Parquet
  dataset sorted by ``part`` (:func:`write_decisions`); :func:`part_decisions` reads the slice of
  one part, pruned by the row groups' min/max statistics. The final pass applies them part by part
  (:func:`read_applied`): a worker holds one part's decisions, never a dict of all groups.

The driver handles file paths, counts and — for the near-duplicate survivor rule — the candidate
pairs (see :mod:`mella.stages.dedup.near_dup`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mella.io import replace_dir

#: Key rows per shuffle partition: a bucket's key columns stay a few MB (pixel hex, URLs, ids).
ROWS_PER_PARTITION = 50_000
DECISION_SCHEMA = pa.schema(
    [("part", pa.string()), ("id", pa.string()), ("key", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
SEP = "\x1f"


def row_key(t: pa.Table) -> pa.Array:
    """The key a decision names a row by: ``id \\x1f alt_text`` (a row id names (lang, page, image URL),
    which one ``<img>`` shown under several alt-texts shares; the alt-text tells those rows apart)."""
    return pc.binary_join_element_wise(t["id"], pc.fill_null(t["alt_text"], ""), SEP)


@contextlib.contextmanager
def task_shuffle():
    """Ray Data's sort-based (pull) shuffle for the global phase's group-bys: plain tasks. Ray 2.60's
    default hash shuffle keeps aggregator actors holding CPUs until the dataset ends, which starves the
    later operators of a small cluster (seen on 2 CPUs: the sort after a group-by never scheduled)."""
    from ray.data.context import DataContext, ShuffleStrategy

    ctx = DataContext.get_current()
    old = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.shuffle_strategy = old


@contextlib.contextmanager
def spill_area(root: str):
    """The directory ``root`` a stage's bucket shuffles spill to, emptied on entry (a rerun or a killed
    run's leftovers) and removed on exit."""
    shutil.rmtree(root, ignore_errors=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bucket_groupby(ds, p: int, fn, spill_dir: str, fn_kwargs: dict | None = None):
    """``ds.groupby("bucket", num_partitions=p).map_groups(fn, batch_format="pyarrow", fn_kwargs=fn_kwargs)``
    as a shuffle through files (datatrove's bucketed signature files; NeMo Curator's per-step Parquet).

    Why not Ray Data's group-by: its sort-based shuffle makes one object per (input block, partition),
    each owned — and tracked — by the driver: measured on Ray 2.60 (``ray.init(num_cpus=2)``, 2,000-row
    blocks), driver RSS +20 MiB at 20 × 20, +202 MiB at 200 × 200, +675 MiB at 400 × 400 (the push-based
    variant +138 MiB at 200 × 200). Both counts grow with the data, so the driver grew O(rows²/block²) —
    the 1M rehearsal's driver peak (issue 12). The hash shuffle keeps it O(blocks + partitions) but holds
    aggregator actors (see :func:`task_shuffle`) and took 7.5× the time at 200 × 200.

    Here each input block's rows (``bucket`` int64 in ``[0, p)``) are written by the worker that made
    them, one Parquet file per bucket present, to ``spill_dir/<bucket>/<content hash>.parquet``
    (written then renamed, so a retried task replaces its file and a killed one leaves no partial file);
    the map side runs to its end before the reduce side starts (a shuffle's barrier). Then one call
    of ``fn`` per non-empty bucket, on that bucket's rows concatenated (column ``bucket`` kept, as in
    ``map_groups``), in at most ``4 × cluster CPUs`` read blocks. The driver holds only the bucket
    directory names (O(p)). ``spill_dir`` must be on storage every node sees (as the unit parts are);
    the caller removes it once the returned Dataset has been consumed (:func:`spill_area`).

    Returns a lazy Ray Dataset of ``fn``'s outputs (pyarrow tables)."""
    shutil.rmtree(spill_dir, ignore_errors=True)
    os.makedirs(spill_dir)
    for _ in ds.map_batches(
        _spill, batch_size=None, batch_format="pyarrow", fn_kwargs={"spill_dir": spill_dir, "p": p}
    ).iter_batches(batch_size=None):
        pass  # each map block returns one small row; nothing is kept
    buckets = sorted(d for d in os.listdir(spill_dir) if d.isdigit())
    if not buckets:
        return ray.data.from_items([{"bucket": 0}]).filter(lambda r: False)  # an empty Dataset
    items = ray.data.from_items(
        [{"bucket": os.path.join(spill_dir, b)} for b in buckets],
        override_num_blocks=min(len(buckets), 4 * cluster_cpus()),
    )
    return items.map_batches(
        _reduce_buckets, batch_size=None, batch_format="pyarrow", fn_kwargs={"fn": fn, "fn_kwargs": fn_kwargs or {}}
    )


def _content_name(t: pa.Table) -> str:
    """A file name from the rows' content (blake2b over the fixed-width and string columns' buffers): the
    same input block, recomputed by a retried task, gets the same name and replaces its file."""
    h = hashlib.blake2b(digest_size=12)
    h.update(str(t.num_rows).encode())
    for col in t.columns:
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
            continue  # embeddings: the ids beside them already name the rows
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(memoryview(buf))
    return h.hexdigest()


def _spill(t: pa.Table, spill_dir: str, p: int) -> pa.Table:
    if t.num_rows == 0:
        return pa.table({"rows": pa.array([0], pa.int64())})
    t = t.combine_chunks()
    t = t.take(pc.sort_indices(t["bucket"]))
    b = t["bucket"].to_numpy()
    starts = np.flatnonzero(np.concatenate([[True], b[1:] != b[:-1]]))
    ends = np.append(starts[1:], len(b))
    name = _content_name(t)
    for s, e in zip(starts, ends):
        if not 0 <= b[s] < p:
            raise ValueError(f"bucket {b[s]} outside [0, {p})")
        d = os.path.join(spill_dir, f"{int(b[s]):06d}")
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(t.slice(s, e - s), tmp)
        os.replace(tmp, os.path.join(d, f"{name}.parquet"))
    return pa.table({"rows": pa.array([t.num_rows], pa.int64())})


def _reduce_buckets(batch: pa.Table, fn, fn_kwargs: dict):
    for d in batch["bucket"].to_pylist():
        files = sorted(f for f in os.listdir(d) if f.endswith(".parquet"))
        t = pa.concat_tables([pq.read_table(os.path.join(d, f)) for f in files], promote_options="permissive")
        out = fn(t, **fn_kwargs)
        if out is not None and out.num_rows:
            yield out


def cluster_cpus() -> int:
    """CPUs of the running Ray cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def num_partitions(n_rows: int, rows_per_partition: int = ROWS_PER_PARTITION) -> int:
    """Shuffle partitions for ``n_rows``: ``ceil(n_rows / rows_per_partition)``, at least the cluster's CPUs."""
    return max(cluster_cpus(), math.ceil(n_rows / rows_per_partition))


def count_rows(parts: list[str]) -> int:
    """Rows in the unit parts, from their Parquet footers (no data read)."""
    return sum(pq.read_metadata(p).num_rows for p in parts)


def hex_bucket(hex_keys, n: int, offset: int = 0) -> np.ndarray:
    """Bucket in ``[0, n)`` of each hex digest (sha256/sha1 text; uniform bits), from 8 hex digits at ``offset``;
    a null key goes to bucket 0. Returns int64 (len(hex_keys),)."""
    return np.fromiter(((int(k[offset : offset + 8], 16) if k else 0) % n for k in hex_keys), np.int64, len(hex_keys))


def hex_u64(hex_keys) -> np.ndarray:
    """The first 64 bits of each hex digest as uint64 (a compact image id; 0 for a null key)."""
    return np.fromiter(((int(k[:16], 16) if k else 0) for k in hex_keys), np.uint64, len(hex_keys))


# ------------------------------------------------------------------------------ decisions by part
def part_decisions(path: str | None, part: str, columns=("key", "reason", "detail")) -> pa.Table:
    """The decisions of one part (rows of ``DECISION_SCHEMA`` with ``part == part``); empty for no path."""
    if not path:
        return DECISION_SCHEMA.empty_table().select(list(columns))
    return pq.read_table(path, columns=list(columns), filters=[("part", "==", part)])


def write_decisions(ds, path: str) -> int:
    """Write a Ray Dataset of ``DECISION_SCHEMA`` rows (or None) to the Parquet dataset ``path``, sorted by part.

    Written to a staging directory and swapped in whole (a rerun replaces it). Returns the row count
    (a small summary for the driver)."""
    staging = f"{path}.staging-{uuid.uuid4().hex[:8]}"
    os.makedirs(staging)
    n = 0
    if ds is not None:
        ds = ds.sort(["part", "id"])
        ds.write_parquet(staging)
        n = sum(pq.read_metadata(os.path.join(staging, f)).num_rows for f in os.listdir(staging))
    if not any(f.endswith(".parquet") for f in os.listdir(staging)):
        pq.write_table(DECISION_SCHEMA.empty_table(), os.path.join(staging, "empty.parquet"))
    replace_dir(staging, path)
    return n


# ----------------------------------------------------------------------------------- reading rows
def read_part(part: str, columns: list[str], upstream: list[str]) -> pa.Table:
    """``columns`` of one part's active rows (``reason`` null) not rejected by the ``upstream`` decisions."""
    cols = list(dict.fromkeys(["id", "alt_text", "reason", *columns]))
    t = pq.read_table(part, columns=cols)
    t = t.filter(pc.is_null(t["reason"]))
    for path in upstream:
        gone = part_decisions(path, part, ("key",))["key"]
        if len(gone):
            t = t.filter(pc.invert(pc.is_in(row_key(t), value_set=gone)))
    return t.select(list(dict.fromkeys(["id", *columns])))


def _read_parts(batch: pa.Table, columns: list[str], upstream: list[str], with_part: bool):
    for part in batch["part"].to_pylist():
        t = read_part(part, columns, upstream)
        if with_part:
            t = t.append_column("part", pa.array([part] * t.num_rows, pa.string()))
        yield t


def read_tasks(parts: list[str], rows_per_task: int = ROWS_PER_PARTITION) -> int:
    """Read tasks for ``parts``: one per ``rows_per_task`` rows (from the footers), at least the cluster's CPUs,
    at most one per part. A build writes a part per batch, so small corpora have many tiny parts: one task
    each made Ray's per-task start-up the whole cost of the global phase (52 parts of 64 rows: ~3 s)."""
    return max(1, min(len(parts), max(cluster_cpus(), math.ceil(count_rows(parts) / rows_per_task))))


def active_rows(parts: list[str], columns: list[str], upstream: list[str], with_part: bool = False):
    """Ray Dataset of the active rows of ``parts`` minus upstream decisions (:func:`read_tasks` tasks, each
    reading its parts one at a time, a table per part)."""
    ds = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=read_tasks(parts))
    return ds.map_batches(
        _read_parts,
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=0.5,
        fn_kwargs={"columns": columns, "upstream": list(upstream), "with_part": with_part},
    )


def rows_to_decisions(rows, drops: pa.Table, reason: str, n_rows: int, spill_dir: str):
    """Join the image-level drops (``lang``, ``pixel_sha256``, ``detail``; O(drops)) with the active rows
    (a Ray Dataset with ``part``, ``id``, ``lang``, ``pixel_sha256``) → a Dataset of DECISION_SCHEMA rows:
    every row showing a dropped image, with ``reason``. A hash join by pixel bucket (:func:`bucket_groupby`
    through ``spill_dir``)."""
    if drops.num_rows == 0:
        return None
    p = num_partitions(n_rows)
    left = rows.map_batches(_tag, batch_format="pyarrow", fn_kwargs={"p": p, "side": 0})
    right = ray.data.from_arrow(drops).map_batches(_tag, batch_format="pyarrow", fn_kwargs={"p": p, "side": 1})
    return bucket_groupby(left.union(right), p, _join_bucket, spill_dir, {"reason": reason})


def _tag(t: pa.Table, p: int, side: int) -> pa.Table:
    n = t.num_rows
    col = lambda c: t[c] if c in t.column_names else pa.nulls(n, pa.string())  # noqa: E731 - a one-line accessor
    key = row_key(t) if side == 0 else pa.nulls(n, pa.string())
    return pa.table(
        {
            "bucket": hex_bucket(t["pixel_sha256"].to_pylist(), p),
            "side": pa.array([side] * n, pa.int8()),
            "part": col("part"),
            "id": col("id"),
            "key": key,
            "lang": t["lang"],
            "pixel_sha256": t["pixel_sha256"],
            "detail": col("detail"),
        }
    )


def _join_bucket(t: pa.Table, reason: str) -> pa.Table:
    rows = t.filter(pc.equal(t["side"], 0)).select(["part", "id", "key", "lang", "pixel_sha256"])
    drops = t.filter(pc.equal(t["side"], 1)).select(["lang", "pixel_sha256", "detail"])
    j = rows.join(drops, ["lang", "pixel_sha256"], join_type="inner")
    return pa.table(
        {
            "part": j["part"],
            "id": j["id"],
            "key": j["key"],
            "reason": pa.array([reason] * j.num_rows, pa.string()),
            "detail": j["detail"],
        }
    )
