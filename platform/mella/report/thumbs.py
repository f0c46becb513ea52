"""Thumbnails of the sampled rows, made in Ray tasks (Ray Data ``map_batches`` over the parquet parts).

Each task gets one part file and the row numbers wanted from it, reads only the row groups holding
them and only the ``image`` column, and returns a JPEG data URL per key (made by the evaluation
report's helper, :func:`mella.evaluation._thumb`: RGB, longest side ``size`` px, quality 80). So the
work is proportional to the number of thumbnails shown, not to the corpus.

Rejects carry no image bytes (:mod:`mella.schema`); their pictures are looked up by id in the build's
committed work units (``DIR/_work/units/*/parts/*.parquet``: rows that passed phase 1 keep their bytes
there, so the global dedup stages' rejects are found) and by image URL in the image WARCs of the build
(``DIR/warc/images-*.warc``: every image fetched live; one Ray task per WARC file reads it once). The
image a near-duplicate was dropped for is found by ``(lang, image URL)`` in D_know, D_ling, then the
work units. A row whose image was never fetched (dropped before the fetch stage) has none.
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
    want_urls = pa.array(sorted({u for _, u in urls}), pa.string())  # typed: an empty set is not a null array
    want_ids = pa.array(sorted(ids), pa.string())
    files = part_files(out_dir, "d_know") + part_files(out_dir, "d_ling") + unit_parts(out_dir)
    for f, t in iter_batches(files, ["id", "lang", "image_url", "alt_text"]):
        hit = pc.or_(pc.is_in(t["id"], want_ids), pc.is_in(t["image_url"], want_urls))
        for r in t.filter(hit).to_pylist():
            if r["id"] in ids:
                found[r["id"]].append((f, r["_row"], r["alt_text"]))
            if (r["lang"], r["image_url"]) in urls:
                found[f"{r['lang']}\x1f{r['image_url']}"].append((f, r["_row"], r["alt_text"]))
    return found


def image_warcs(out_dir: str) -> list[str]:
    """The build's WARC files of live image fetches (``DIR/warc/images-*.warc*``)."""
    return sorted(glob.glob(os.path.join(out_dir, "warc", "images-*.warc*")))


def _thumbs_of_warc(path: str, urls: list[str], keys: list[str], size: int) -> tuple[list[str], list[str]]:
    """Thumbnails of the response records of ``urls`` in one WARC file (one streaming pass)."""
    from warcio.archiveiterator import ArchiveIterator

    from mella.evaluation import _thumb

    want: dict[str, list[str]] = defaultdict(list)
    for url, key in zip(urls, keys):
        want[str(url)].append(str(key))
    keys_out, thumbs = [], []
    with open(path, "rb") as f:
        for record in ArchiveIterator(f):
            url = (record.rec_headers.get_header("WARC-Target-URI") or "").strip("<>")
            if record.rec_type == "response" and url in want:
                thumb = _thumb(record.content_stream().read(), size)
                for key in want.pop(url):
                    keys_out.append(key)
                    thumbs.append(thumb)
    return keys_out, thumbs


def _thumbs_of_file(batch: dict, size: int) -> dict:
    """Ray Data UDF: rows ``{path, rows, keys, urls}`` (one parquet part or WARC file each) → ``{key, thumb}``
    (data URL, or "" when the row has no bytes or Pillow cannot decode them)."""
    from mella.evaluation import _thumb

    keys_out, thumbs = [], []
    for path, rows, keys, urls in zip(batch["path"], batch["rows"], batch["keys"], batch["urls"]):
        if not str(path).endswith(".parquet"):
            k, t = _thumbs_of_warc(str(path), list(urls), list(keys), size)
            keys_out += k
            thumbs += t
            continue
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


def make_thumbnails(
    requests: dict[str, list[tuple[str, int]]],
    size: int = THUMB_PX,
    num_cpus: float = 1,
    warc_urls: dict[str, str] | None = None,
    warc_files: list[str] = (),
) -> dict[str, str]:
    """``{key: [(part file, row), ...]}`` and ``warc_urls`` ``{key: image URL}`` (looked up in ``warc_files``)
    → ``{key: JPEG data URL}`` for every key some location has decodable bytes for.

    Runs on the current Ray (call :func:`mella.runtime.init_ray` first); one task per file.
    """
    import ray

    by_file: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for key, locs in requests.items():
        for path, row in locs:
            by_file[path].append((row, key))
    items = [
        {"path": p, "rows": [r for r, _ in v], "keys": [k for _, k in v], "urls": [""] * len(v)}
        for p, v in sorted(by_file.items())
    ]
    if warc_urls:
        keys = sorted(warc_urls)
        items += [
            {"path": w, "rows": [0] * len(keys), "keys": keys, "urls": [warc_urls[k] for k in keys]} for w in warc_files
        ]
    if not items:
        return {}
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 64))
    ds = ds.map_batches(
        _thumbs_of_file, fn_kwargs={"size": size}, batch_size=1, batch_format="numpy", num_cpus=num_cpus
    )
    out: dict[str, str] = {}
    for r in ds.iter_rows():
        if r["thumb"] and not out.get(r["key"]):
            out[r["key"]] = r["thumb"]
    return out
