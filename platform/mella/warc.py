"""WARC I/O (ISO 28500, via ``warcio``): stream records, write rotating shards atomically, index by URL.

Every response the crawler or the image fetcher receives is written to a WARC shard beside the
output, so a crawl can be replayed (``--warc DIR/warc/*.warc.gz --offline``) and a killed job can
resume without refetching. Shards are written as ``NAME.warc.gz.open`` and renamed to
``NAME.warc.gz`` only when closed, so a reader never sees a half-written shard.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from mella.urls import normalise_url

log = logging.getLogger(__name__)

#: What reading a damaged WARC raises (bad record header, truncated or corrupt gzip member, I/O):
#: :func:`slice_offsets` stops there and the extract stage counts it as ``warc_unreadable``.
WARC_READ_ERRORS = (ArchiveLoadFailed, EOFError, OSError, zlib.error, ValueError)

#: Hop-by-hop / encoding headers dropped when writing: the stored payload is already decoded.
_DROP_HEADERS = {"content-encoding", "transfer-encoding", "content-length", "connection", "keep-alive"}


class HasHeaders:
    """Header lookups of an HTTP response with ``headers``: a list of (name, value) (a fetched one,
    :class:`mella.net.Response`, or a recorded one, :class:`WarcResponse`)."""

    headers: list[tuple[str, str]]

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive), else ``default``."""
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    @property
    def content_type(self) -> str:
        """Media type without parameters, lower-cased (``""`` when absent)."""
        return (self.header("content-type") or "").split(";")[0].strip().lower()


@dataclass
class WarcResponse(HasHeaders):
    """One HTTP response record.

    ``body`` is the decoded payload (chunked transfer and content-encoding removed) in bytes;
    ``headers`` a list of (name, value); ``date`` the WARC-Date (UTC); ``path``/``offset``/``length`` locate
    it (bytes of the record as stored: one gzip member in a ``.warc.gz``, as Common Crawl's index gives
    ``warc_record_offset``/``warc_record_length``; -1: unknown).
    """

    url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    date: datetime
    path: str = ""
    offset: int = -1
    length: int = -1


def expand_warc_paths(patterns: list[str]) -> list[str]:
    """Expand paths/globs to a sorted, de-duplicated list of existing ``.warc``/``.warc.gz`` files.

    Raises:
        FileNotFoundError: a pattern matches nothing.
    """
    out: set[str] = set()
    for pat in patterns:
        matches = glob.glob(os.path.expanduser(pat)) if any(c in pat for c in "*?[") else [pat]
        matches = [m for m in matches if os.path.isfile(m) and m.endswith((".warc", ".warc.gz"))]
        if not matches:
            raise FileNotFoundError(f"no WARC file matches {pat!r}")
        out.update(os.path.abspath(m) for m in matches)
    return sorted(out)


def _parse_date(value: str | None) -> datetime:
    if value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
        except ValueError:
            pass
    return datetime.now(timezone.utc)


def _to_response(record, path: str, offset_of=lambda: -1, length_of=lambda: -1) -> WarcResponse | None:
    if record.rec_type != "response" or record.http_headers is None:
        return None
    url = record.rec_headers.get_header("WARC-Target-URI") or ""
    try:
        status = int(record.http_headers.get_statuscode() or 0)
    except ValueError:
        status = 0
    try:
        body = record.content_stream().read()
    except Exception:  # corrupt content-encoding in the capture: keep the raw payload
        body = record.raw_stream.read()
    offset = offset_of()  # after reading: warcio's get_record_offset() consumes the record
    length = length_of()
    return WarcResponse(
        url=url.strip("<>"),
        status=status,
        headers=list(record.http_headers.headers),
        body=body,
        date=_parse_date(record.rec_headers.get_header("WARC-Date")),
        path=path,
        offset=offset,
        length=length,
    )


def iter_responses(path: str, offset: int = 0, limit: int | None = None) -> Iterator[WarcResponse]:
    """Stream the ``response`` records of one WARC file (gzip or plain), in file order.

    Args:
        offset: byte offset of a record to start at (a :func:`slice_offsets` value; 0: the whole file).
        limit: stop after this many response records (None: to the end).

    Memory is bounded by one record. Raises ``warcio.exceptions.ArchiveLoadFailed`` on a file that
    is not a WARC.
    """
    n = 0
    with open(path, "rb") as f:
        f.seek(offset)
        it = ArchiveIterator(f)
        for record in it:
            if limit is not None and n >= limit:
                return
            resp = _to_response(
                record, path, it.get_record_offset, it.get_record_length
            )  # absolute: warcio counts from the seek
            if resp is not None:
                n += 1
                yield resp


def slice_offsets(path: str, records_per_slice: int) -> list[int]:
    """Byte offsets that cut one WARC file into slices of ``records_per_slice`` response records each.

    One pass over the file's record headers (warcio decompresses, nothing is parsed), so a large
    file — a Common Crawl WARC holds ~40,000 responses in ~1 GB — is extracted by many Ray tasks and
    its rows reach the image pool as many blocks instead of one. Each offset starts a record
    (a gzip member in a ``.warc.gz``, as the WARC 1.1 spec's annex D recommends), so
    :func:`iter_responses` ``(path, offset, records_per_slice)`` reads exactly one slice; read the last
    one without a limit, so that damage which stopped the indexing is met (and counted) by the extract stage.

    Returns:
        ascending offsets (bytes), the first 0; ``[0]`` for a file with ≤ ``records_per_slice`` responses.
    Raises:
        ValueError: ``records_per_slice`` < 1. A file unreadable from some point on (truncated, not a WARC) is
        sliced up to there; :meth:`mella.stages.io.extract.ExtractStage.read` counts the damage.
    """
    if records_per_slice < 1:
        raise ValueError(f"records_per_slice must be >= 1, got {records_per_slice}")
    offsets, n = [0], 0
    with open(path, "rb") as f:
        it = ArchiveIterator(f)
        try:
            for record in it:
                if record.rec_type == "response" and record.http_headers is not None:
                    if n and n % records_per_slice == 0:
                        offsets.append(it.get_record_offset())
                    n += 1
        except WARC_READ_ERRORS as e:  # damaged or not a WARC: sliced up to the damage; extract counts it
            log.warning("%s: unreadable WARC after %d responses (%s)", path, n, e)
    return offsets


def read_response_at(path: str, offset: int) -> WarcResponse | None:
    """Read the single record that starts at byte ``offset`` of ``path``."""
    with open(path, "rb") as f:
        f.seek(offset)
        it = ArchiveIterator(f)
        for record in it:
            return _to_response(record, path, lambda: offset, it.get_record_length)
    return None


class WarcIndex:
    """URL → location of the newest response record for it, over a set of WARC files.

    Built by one streaming pass over the files; memory is O(number of records) (URL + path index +
    offset). Used as the fetch cache: a URL present here is served from the WARC instead of the network.
    Keys are normalised with :func:`mella.urls.normalise_url`, so a capture that spelt a URL
    differently (``:80``, ``%7E``, upper-case host) still answers the extracted, normalised URL.
    """

    def __init__(self) -> None:
        self.paths: list[str] = []
        self._loc: dict[str, tuple[int, int]] = {}

    def add_file(self, path: str, url_filter=None) -> int:
        """Index ``path``; only URLs for which ``url_filter(resp)`` is true (all if None). Returns records added."""
        pi = len(self.paths)
        self.paths.append(path)
        n = 0
        with open(path, "rb") as f:
            it = ArchiveIterator(f)
            for record in it:
                if record.rec_type != "response":
                    continue
                url = (record.rec_headers.get_header("WARC-Target-URI") or "").strip("<>")
                if url_filter is not None and not url_filter(record):
                    continue
                self._loc[normalise_url(None, url) or url] = (pi, it.get_record_offset())
                n += 1
        return n

    def __contains__(self, url: str) -> bool:
        return (normalise_url(None, url) or url) in self._loc

    def __len__(self) -> int:
        return len(self._loc)

    def get(self, url: str) -> WarcResponse | None:
        loc = self._loc.get(normalise_url(None, url) or url)
        if loc is None:
            return None
        return read_response_at(self.paths[loc[0]], loc[1])


class RotatingWarcWriter:
    """Append response records to ``DIR/PREFIX-<uuid>-<n>.warc.gz`` (``.warc`` with ``gzip=False``),
    rotating after ``max_bytes``. Image shards are written uncompressed: JPEG/PNG/WebP payloads do not
    shrink under gzip, and compressing them cost more CPU than decoding them (measured in
    ``tests/benchmarks/bench_throughput.py``).

    A shard is written as ``*.warc.gz.open`` and renamed on ``rotate()``/``close()``; a crash leaves
    only ``.open`` files, which readers ignore and ``cleanup_open_shards`` deletes.
    """

    def __init__(self, directory: str, prefix: str, max_bytes: int = 256 * 2**20, gzip: bool = True) -> None:
        self.directory = directory
        self.gzip = gzip
        self.prefix = prefix
        self.max_bytes = max_bytes
        self._uid = uuid.uuid4().hex[:12]
        self._n = 0
        self._f = None
        self._writer: WARCWriter | None = None
        self._path = ""
        self.closed_paths: list[str] = []
        os.makedirs(directory, exist_ok=True)

    def _open(self) -> None:
        ext = ".warc.gz" if self.gzip else ".warc"
        self._path = os.path.join(self.directory, f"{self.prefix}-{self._uid}-{self._n:05d}{ext}")
        self._f = open(self._path + ".open", "wb")
        self._writer = WARCWriter(self._f, gzip=self.gzip)
        self._n += 1

    def write_response(
        self,
        url: str,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        body: bytes,
        date: datetime,
        truncated: bool = False,
    ) -> None:
        """Write one ``response`` record; ``body`` is the decoded payload (bytes). ``truncated``: the body
        is the first part of a longer one (ISO 28500 ``WARC-Truncated: length``; robots.txt > 500 KiB)."""
        if self._writer is None:
            self._open()
        hdrs = [(k, v) for k, v in headers if k.lower() not in _DROP_HEADERS]
        hdrs.append(("Content-Length", str(len(body))))
        http_headers = StatusAndHeaders(f"{status} {reason or ''}".strip(), hdrs, protocol="HTTP/1.1")
        rec = self._writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            http_headers=http_headers,
            warc_headers_dict={
                "WARC-Date": date.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                **({"WARC-Truncated": "length"} if truncated else {}),
            },
        )
        self._writer.write_record(rec)
        if self._f.tell() >= self.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self._path + ".open", self._path)
        self.closed_paths.append(self._path)
        self._f = None
        self._writer = None

    def close(self) -> None:
        self.rotate()


def shard_paths(directory: str, prefix: str) -> list[str]:
    """Closed shards ``PREFIX-*.warc`` and ``PREFIX-*.warc.gz`` in ``directory``, sorted."""
    return sorted(
        glob.glob(os.path.join(directory, f"{prefix}-*.warc"))
        + glob.glob(os.path.join(directory, f"{prefix}-*.warc.gz"))
    )


def cleanup_open_shards(directory: str) -> int:
    """Delete ``*.open`` shards left by a killed run. Returns how many were removed."""
    n = 0
    for p in glob.glob(os.path.join(directory, "*.open")):
        os.remove(p)
        n += 1
    return n


# ------------------------------------------------------------------------------- failure log
#: reasons that will not change on a refetch (the URL is not requested again on a rerun)
def is_transient(reason: str) -> bool:
    """True for failures a later try may not repeat: timeouts, connection/DNS errors, 5xx, 408, 429."""
    return reason in (
        "timeout",
        "connect_error",
        "server_disconnected",
        "truncated_response",
        "dns_error",
        "http_408",
        "http_429",
        "client_error",
    ) or reason.startswith("http_5")


class FailureLog:
    """Failed fetches remembered beside the WARC shards: ``DIR/failures-PREFIX-<uuid>.jsonl``.

    One JSON object a line, ``{"url", "reason", "detail", "transient", "at"}``, flushed per line (a
    killed run loses at most a partial last line, which readers skip). On construction every
    ``failures-*.jsonl`` of ``directory`` is read: :meth:`remembered` answers whether a URL failed
    before and should not be requested again — permanent failures (4xx, ``too_large``,
    ``content_type``, ``robots_disallowed``, ``private_address``, redirects, ``ai_opt_out``) always,
    transient ones (:func:`is_transient`) unless ``retry_failed``. ``directory`` None: remember nothing.
    """

    def __init__(self, directory: str | None, prefix: str, retry_failed: bool = False) -> None:
        self.directory, self.retry_failed = directory, retry_failed
        self.path = os.path.join(directory, f"failures-{prefix}-{uuid.uuid4().hex[:12]}.jsonl") if directory else None
        self._f = None
        self._known: dict[str, dict] = {}
        if directory:
            for p in sorted(glob.glob(os.path.join(directory, "failures-*.jsonl"))):
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        try:
                            rec = json.loads(line)
                            self._known[rec["url"]] = rec
                        except (ValueError, KeyError, TypeError):
                            continue  # partial line of a killed run

    def remembered(self, url: str) -> dict | None:
        """The earlier failure of ``url`` that stands (see class docstring), else None."""
        rec = self._known.get(url)
        if rec is None or (rec.get("transient") and self.retry_failed):
            return None
        return rec

    def record(self, url: str, reason: str, detail: str = "") -> None:
        """Append one failure (no-op without a directory; ``not_in_warc`` and ``private_address`` are not
        recorded: nothing was requested, and the second depends on ``--allow-private-hosts``)."""
        if self.path is None or reason in ("not_in_warc", "private_address"):
            return
        rec = {
            "url": url,
            "reason": reason,
            "detail": detail[:300],
            "transient": is_transient(reason),
            "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self._known[url] = rec
        if self._f is None:
            os.makedirs(self.directory, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
