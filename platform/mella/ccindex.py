"""Common Crawl by language: the columnar URL index selects pages, HTTP Range requests read their records.

Common Crawl publishes, per crawl, a Parquet index of every capture
(``s3://commoncrawl/cc-index/table/cc-main/warc/crawl=CC-MAIN-YYYY-WW/subset=warc/``; schema in
``commoncrawl/cc-index-table``): ``url``, ``fetch_status``, ``content_mime_detected``,
``content_languages`` (CLD2, up to three ISO 639-3 codes, primary first), and where the record lies:
``warc_filename``, ``warc_record_offset``, ``warc_record_length``. One record is one gzip member, so
``Range: bytes=offset-(offset+length-1)`` on ``https://data.commoncrawl.org/<warc_filename>`` returns a
complete ``.warc.gz`` record.

:func:`select_pages` reads the index with pyarrow (predicates pushed down to the Parquet row groups) and
keeps status-200 HTML captures whose *primary* content language is a target. :func:`materialise`
reads each record by Range request (aiohttp; a 503 "slow down" or 429 backs off per
:mod:`mella.hostlimits`), checks it with warcio (one ``response`` record for the indexed URL) and
appends its bytes unchanged to the job's own ``DIR/warc/pages-cc-<crawl>.warc.gz``, with a sidecar
``.provenance.json`` mapping each record's offset there to Common Crawl's (file, offset, length). The
extract stage reads that WARC like any other and gives each row Common Crawl's provenance; a rerun
finds the finished file and makes no request.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

#: index columns read (the names of Common Crawl's columnar index)
INDEX_COLUMNS = [
    "url",
    "content_languages",
    "fetch_status",
    "content_mime_detected",
    "warc_filename",
    "warc_record_offset",
    "warc_record_length",
]
CRAWL_ID = re.compile(r"^CC-MAIN-\d{4}-\d{2}$")
INDEX_S3 = "commoncrawl/cc-index/table/cc-main/warc/crawl={crawl}/subset=warc/"
DEFAULT_BASE_URL = "https://data.commoncrawl.org/"
HTML_TYPES = ("text/html", "application/xhtml+xml")
#: NLLB individual-language codes whose CLD2 (Common Crawl) code is the macrolanguage
_MACRO = {
    "arb": "ara",
    "zsm": "msa",
    "pes": "fas",
    "ekk": "est",
    "lvs": "lav",
    "khk": "mon",
    "npi": "nep",
    "ory": "ori",
    "swh": "swa",
    "uzn": "uzb",
    "azj": "aze",
    "plt": "mlg",
    "gaz": "orm",
    "als": "sqi",
    "ydd": "yid",
    "pbt": "pus",
    "quy": "que",
}


def cld2_code(lang: str) -> str:
    """ISO 639-3 code Common Crawl's ``content_languages`` uses for a configured language (ISO 639-1), from
    its NLLB code (``hun_Latn`` → ``hun``; ``arb_Arab`` → ``ara``, CLD2 names macrolanguages).

    Raises:
        ValueError: the language has no NLLB code in ``languages.yaml``.
    """
    from mella.languages import load_languages

    entry = load_languages().get(lang)
    if entry is None or not entry.nllb:
        raise ValueError(f"language {lang!r} has no nllb code in languages.yaml: its Common Crawl code is unknown")
    code = entry.nllb.split("_")[0]
    return _MACRO.get(code, code)


def open_index(index: str) -> ds.Dataset:
    """The index as a pyarrow dataset: ``CC-MAIN-YYYY-WW`` (Common Crawl's S3 bucket, anonymous) or a local
    Parquet file or directory (a copy of one crawl's ``subset=warc`` files)."""
    if CRAWL_ID.match(index):
        from pyarrow import fs

        s3 = fs.S3FileSystem(anonymous=True, region="us-east-1")
        return ds.dataset(INDEX_S3.format(crawl=index), format="parquet", filesystem=s3)
    return ds.dataset(index, format="parquet")


def select_pages(dataset: ds.Dataset, langs: list[str], limit: int | None = None) -> pa.Table:
    """Captures to read: ``fetch_status`` 200, ``content_mime_detected`` HTML, primary content language (the
    first ISO 639-3 code of ``content_languages``) one of ``langs``; at most ``limit`` rows. Columns:
    :data:`INDEX_COLUMNS` plus ``lang`` (the ISO 639-1 target); sorted by (file, offset)."""
    codes = {cld2_code(x): x for x in langs}
    primary = pc.utf8_slice_codeunits(pc.field("content_languages"), 0, 3)
    expr = (
        (pc.field("fetch_status") == 200)
        & pc.field("content_mime_detected").isin(list(HTML_TYPES))
        & primary.isin(list(codes))
    )
    scanner = dataset.scanner(columns=INDEX_COLUMNS, filter=expr)
    table = scanner.head(limit) if limit else scanner.to_table()
    table = table.sort_by([("warc_filename", "ascending"), ("warc_record_offset", "ascending")])
    langs_col = [codes[c[:3]] for c in table.column("content_languages").to_pylist()]
    return table.append_column("lang", pa.array(langs_col, pa.string()))


def _check_record(data: bytes, url: str) -> None:
    """``data`` is one WARC ``response`` record (gzip member) for ``url``. Raises ``ValueError``."""
    from warcio.archiveiterator import ArchiveIterator

    for rec in ArchiveIterator(io.BytesIO(data)):
        target = (rec.rec_headers.get_header("WARC-Target-URI") or "").strip("<>")
        if rec.rec_type != "response" or target != url:
            raise ValueError(f"range holds a {rec.rec_type} record for {target}, not the response for {url}")
        rec.content_stream().read()
        return
    raise ValueError(f"range for {url} holds no WARC record")


async def _read_ranges(rows: list[dict], base_url: str, cfg) -> list[bytes | Exception]:
    """GET each row's record by Range request; per row its bytes or the exception that ended its tries."""
    import aiohttp

    from mella.hostlimits import HostGate
    from mella.retry import Retryable, RetryPolicy, parse_retry_after, retry_async
    from mella.urls import origin

    gate = HostGate(cfg)
    policy = RetryPolicy(
        retries=cfg.max_retries,
        backoff_base_s=cfg.backoff_base_s,
        backoff_max_s=cfg.backoff_max_s,
        deadline_s=cfg.url_deadline_s,
        max_timeout_retries=cfg.max_timeout_retries,
    )
    timeout = aiohttp.ClientTimeout(total=cfg.total_timeout_s, sock_connect=cfg.connect_timeout_s)

    async with aiohttp.ClientSession(
        timeout=timeout, headers={"User-Agent": cfg.user_agent}, auto_decompress=False
    ) as session:

        async def one(row: dict) -> bytes:
            url = base_url.rstrip("/") + "/" + row["warc_filename"].lstrip("/")
            first, length = row["warc_record_offset"], row["warc_record_length"]

            async def attempt(_n: int, _left):
                lease = await gate.acquire(origin(url))
                status = None
                try:
                    async with session.get(url, headers={"Range": f"bytes={first}-{first + length - 1}"}) as r:
                        status = r.status
                        if r.status in (429, 500, 502, 503, 504):
                            raise Retryable(
                                ValueError(f"HTTP {r.status} for {url}"),
                                retry_after=parse_retry_after(r.headers.get("Retry-After")),
                            )
                        if r.status != 206:
                            raise ValueError(f"HTTP {r.status} for a Range request to {url} (206 expected)")
                        data = await r.read()
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    raise Retryable(e) from None
                finally:
                    gate.release(lease, status, None)
                if len(data) != length:
                    raise ValueError(f"{url}: {len(data)} bytes for a {length}-byte record")
                _check_record(data, row["url"])
                return data

            return await retry_async(attempt, policy)

        return await asyncio.gather(*(one(r) for r in rows), return_exceptions=True)


def materialise(
    index: str, langs: list[str], warc_dir: str, cfg, base_url: str = DEFAULT_BASE_URL, limit: int | None = None
) -> tuple[str, dict]:
    """Select the pages of ``langs`` in ``index`` and copy their records into ``warc_dir`` (module docstring).

    Returns ``(path of the job's .warc.gz, counts)``; counts: ``selected``, ``written``, ``failed:<error>``.
    A finished file from an earlier run is returned as it is, without a request (counts from its sidecar).

    Raises:
        ValueError: a language without a Common Crawl code; pyarrow errors for an unreadable index.
    """
    name = "pages-cc-" + (index if CRAWL_ID.match(index) else "local") + ".warc.gz"
    path = os.path.join(warc_dir, name)
    side = path + ".provenance.json"
    if os.path.exists(path) and os.path.exists(side):
        with open(side, encoding="utf-8") as f:
            return path, json.load(f)["counts"]
    rows = select_pages(open_index(index), langs, limit).to_pylist()
    results = asyncio.run(_read_ranges(rows, base_url, cfg)) if rows else []
    os.makedirs(warc_dir, exist_ok=True)
    counts: dict = {"selected": len(rows), "written": 0}
    records: dict[str, list] = {}
    tmp = path + ".open"
    with open(tmp, "wb") as out:
        for row, res in zip(rows, results):
            if isinstance(res, BaseException):
                key = f"failed:{type(res).__name__}"
                counts[key] = counts.get(key, 0) + 1
                continue
            records[str(out.tell())] = [row["warc_filename"], row["warc_record_offset"], row["warc_record_length"]]
            out.write(res)
            counts["written"] += 1
    with open(side + ".open", "w", encoding="utf-8") as f:
        json.dump({"index": index, "counts": counts, "records": records}, f)
    os.replace(tmp, path)
    os.replace(side + ".open", side)  # last: its presence marks the file finished
    return path, counts


def load_provenance(warc_path: str) -> dict[int, tuple[str, int, int]]:
    """Common Crawl provenance of the records of a WARC written by :func:`materialise`: our offset →
    (``warc_filename``, ``warc_record_offset``, ``warc_record_length``); ``{}`` for any other WARC."""
    side = warc_path + ".provenance.json"
    if not os.path.exists(side):
        return {}
    with open(side, encoding="utf-8") as f:
        return {int(k): tuple(v) for k, v in json.load(f)["records"].items()}
