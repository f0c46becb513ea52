"""Thumbnails of the sampled rows, made in Ray tasks (Ray Data ``map_batches`` over the parquet parts).

Each task gets one part file and the row numbers wanted from it, reads only the row groups holding
them and only the ``image`` column, and returns a JPEG data URL per key (made by the evaluation
report's helper, :func:`mella.evaluation._thumb`: RGB, longest side ``size`` px, quality 80). So the
work is proportional to the number of thumbnails shown, not to the corpus.

Rejects carry no image bytes (:mod:`mella.schema`); their pictures are looked up by id in the build's
committed work units (``DIR/_work/units/*/parts/*.parquet``, which keep the bytes of every decoded
image), and the image a near-duplicate was dropped for by ``(lang, image URL)`` in D_know, D_ling, then
the work units. A row whose image was never fetched (dropped before the fetch stage) has none.
"""

from __future__ import annotations

import bisect
import glob
import os
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mella.report.sample import iter_batches, part_files

THUMB_PX = 160


def unit_parts(out_dir: str) -> list[str]:
    """The committed work-unit parts of a build (``DIR/_work/units/*/parts/*.parquet``)."""
    return sorted(glob.glob(os.path.join(out_dir, "_work", "units", "*", "parts", "*.parquet")))


def locate(out_dir: str, ids: set[str], urls: set[tuple[str, str]]) -> dict[str, list[tuple[str, int, str]]]:
    """Where the images of reject ``ids`` and of kept images ``(lang, image_url)`` are stored.

    Returns ``{key: [(part file, row, alt_text), ...]}`` with key ``id`` or ``lang\\x1furl``; D_know and
    D_ling parts are searched before the work units. Reads ``id``, ``lang``, ``image_url``, ``alt_text``.
    """
    found: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    if not ids and not urls:
        return found
    want_urls = pa.array(sorted({u for _, u in urls}))
    want_ids = pa.array(sorted(ids))
    files = part_files(out_dir, "d_know") + part_files(out_dir, "d_ling") + unit_parts(out_dir)
    for f, t in iter_batches(files, ["id", "lang", "image_url", "alt_text"]):
        hit = pc.or_(pc.is_in(t["id"], want_ids), pc.is_in(t["image_url"], want_urls))
        for r in t.filter(hit).to_pylist():
            if r["id"] in ids:
                found[r["id"]].append((f, r["_row"], r["alt_text"]))
            if (r["lang"], r["image_url"]) in urls:
                found[f"{r['lang']}\x1f{r['image_url']}"].append((f, r["_row"], r["alt_text"]))
    return found


def _thumbs_of_file(batch: dict, size: int) -> dict:
    """Ray Data UDF: rows ``{path, rows, keys}`` (one part file each) → ``{key, thumb}`` (data URL or "")."""
    from mella.evaluation import _thumb

    keys_out, thumbs = [], []
    for path, rows, keys in zip(batch["path"], batch["rows"], batch["keys"]):
        pf = pq.ParquetFile(path)
        starts = [0]
        for i in range(pf.metadata.num_row_groups):
            starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
        by_group: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for row, key in zip(rows, keys):
            g = bisect.bisect_right(starts, int(row)) - 1
            by_group[g].append((int(row) - starts[g], str(key)))
        for g, wanted in by_group.items():
            col = pf.read_row_group(g, columns=["image"]).column("image")
            for local, key in wanted:
                data = col[local].as_py()
                keys_out.append(key)
                thumbs.append(_thumb(data, size) if data else "")
    return {"key": keys_out, "thumb": thumbs}


def make_thumbnails(requests: dict[str, list[tuple[str, int]]], size: int = THUMB_PX, num_cpus: float = 1) -> dict[str, str]:
    """``{key: [(part file, row), ...]}`` → ``{key: JPEG data URL}`` for every key some location has bytes for.

    Runs on the current Ray (call :func:`mella.runtime.init_ray` first); one task per part file.
    """
    import ray

    by_file: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for key, locs in requests.items():
        for path, row in locs:
            by_file[path].append((row, key))
    if not by_file:
        return {}
    items = [{"path": p, "rows": [r for r, _ in v], "keys": [k for _, k in v]} for p, v in sorted(by_file.items())]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 64))
    ds = ds.map_batches(_thumbs_of_file, fn_kwargs={"size": size}, batch_size=1, batch_format="numpy",
                        num_cpus=num_cpus)
    out: dict[str, str] = {}
    for r in ds.iter_rows():
        if r["thumb"] and not out.get(r["key"]):
            out[r["key"]] = r["thumb"]
    return out
