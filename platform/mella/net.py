"""HTTP fetching shared by the page crawler and the image fetch stage (aiohttp).

What every request goes through, in order:

1. scheme check (http/https only);
2. robots.txt of the origin (RFC 9309 via ``protego``, Scrapy's parser: ``*`` and ``$`` patterns, longest
   match, ``Allow`` overrides; the first 500 KiB of a larger file are parsed, as RFC 9309 2.5 asks;
   4xx → allow all, 5xx → disallow all, unreachable → the network error is reported), then the
   origin's ``/.well-known/tdmrep.json`` (TDM Reservation Protocol: a reserved path is ``ai_opt_out``).
   Both are cached per origin (scheme, host, port) of the normalised URL (:mod:`mella.urls`);
3. SSRF guard: the host's addresses must all be global unless allowed by ``allow_private_hosts``
   (private, loopback, link-local, reserved, multicast are refused). The same check runs inside the
   connector's resolver, so a DNS answer that changes between check and connect is still refused;
4. a lease from the job's host gate (:mod:`mella.hostlimits`): per-origin concurrency, politeness delay,
   robots.txt ``Crawl-delay``/``Request-rate``, adaptive delay and back-off on 429/503 held across
   every fetcher of the job;
5. the request with connect/read/total timeouts, manual redirects (each hop re-checked, loop and
   limit detection), a streaming size cap, retries (:mod:`mella.retry`) with exponential backoff on
   429/5xx/timeouts/connection errors (``Retry-After`` honoured, capped), a timeout retried at most
   ``max_timeout_retries`` times and every URL bounded by ``url_deadline_s`` across all its tries
   (time queued behind the host's concurrency limit and politeness delay not counted);
6. content-type check (pages: HTML; images: ``image/*`` or sniffed image bytes);
7. the response is written to the WARC writer, if one is given.

Failures raise :class:`FetchError` with a machine-readable ``reason`` (``http_404``, ``timeout``,
``robots_disallowed``, ``private_address``, ``too_large``, ``redirect_loop``, ``content_type``, ...).
A :class:`~mella.warc.WarcIndex` cache answers from recorded responses first; with ``offline=True``
a cache miss is ``not_in_warc``. A :class:`~mella.warc.FailureLog` remembers failed URLs beside the
WARC: a URL that failed permanently before is answered with its old reason without a request
(transient failures too, unless ``crawl.retry_failed``).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from protego import Protego
from pydantic import Field

from mella.hostlimits import BACKOFF_STATUSES, HostGate
from mella.optout import DEFAULT_DIRECTIVES, parse_tdmrep, tdmrep_reserved
from mella.resources import Strict
from mella.retry import Retryable, RetryPolicy, parse_retry_after, retry_async
from mella.urls import normalise_url, origin
from mella.warc import (
    FailureLog,
    HasHeaders,
    RotatingWarcWriter,
    WarcIndex,
    WarcResponse,
)

#: RFC 9309 2.5: "crawlers SHOULD parse at least the first 500 kibibytes"
ROBOTS_MAX_BYTES = 500 * 1024
_ALLOW_ALL = Protego.parse("")
_DISALLOW_ALL = Protego.parse("User-agent: *\nDisallow: /\n")


class CrawlConfig(Strict):
    """HTTP fetching for pages and images (crawler and image fetch stage); seconds and bytes."""

    user_agent: str = "MELLA-corpus-builder/0.1 (+https://github.com/mella-platform/mella; research crawler)"
    max_pages: int = Field(500, ge=1, description="page budget per registered domain")
    max_depth: int = Field(6, ge=0, description="link hops from a seed")
    per_host_concurrency: int = Field(4, ge=1, description="simultaneous requests to one host")
    politeness_delay_s: float = Field(0.5, ge=0, description="minimum gap between request starts to one host, seconds")
    max_crawl_delay_s: float = Field(
        60.0, ge=0, description="cap on a robots.txt Crawl-delay / Request-rate interval honoured, seconds"
    )
    autothrottle_target_concurrency: float = Field(
        0.0, ge=0, description="adaptive delay per host: latency / this (Scrapy AutoThrottle); 0 = per_host_concurrency"
    )
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(20.0, gt=0, description="socket read timeout, seconds")
    total_timeout_s: float = Field(60.0, gt=0, description="whole request incl. body, seconds")
    url_deadline_s: float = Field(
        90.0,
        gt=0,
        description="one URL, all tries and backoff sleeps together (queueing for the host not counted), seconds",
    )
    max_retries: int = Field(3, ge=0, description="retries on 429, 5xx, timeouts and connection errors")
    max_timeout_retries: int = Field(1, ge=0, description="of those, retries after a timeout")
    backoff_base_s: float = Field(0.5, ge=0, description="exponential backoff base: base * 2**attempt seconds")
    backoff_max_s: float = Field(30.0, ge=0, description="cap on one backoff sleep (also caps Retry-After)")
    max_redirects: int = Field(5, ge=0)
    max_page_bytes: int = Field(5 * 2**20, gt=0, description="response-size cap for HTML pages, bytes")
    max_image_bytes: int = Field(16 * 2**20, gt=0, description="response-size cap for images, bytes")
    respect_robots: bool = True
    respect_tdmrep: bool = Field(True, description="read /.well-known/tdmrep.json (TDM Reservation Protocol)")
    ai_opt_out_directives: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DIRECTIVES),
        description="X-Robots-Tag / <meta name=robots> directives that exclude a page or image (img2dataset's default)",
    )
    retry_failed: bool = Field(False, description="refetch URLs whose earlier failure was transient (timeouts, 5xx)")
    allow_private_hosts: list[str] = Field(
        default_factory=list,
        description="IPs/CIDRs (or '*') the SSRF guard lets through; empty = only global addresses",
    )
    skip_link_extensions: list[str] = Field(
        default_factory=lambda: [
            ".png",
            ".jpg",
            ".jpeg",
            ".gif",
            ".webp",
            ".svg",
            ".ico",
            ".bmp",
            ".tif",
            ".tiff",
            ".pdf",
            ".zip",
            ".gz",
            ".tgz",
            ".xz",
            ".bz2",
            ".7z",
            ".rar",
            ".tar",
            ".mp3",
            ".mp4",
            ".avi",
            ".mov",
            ".webm",
            ".ogg",
            ".wav",
            ".css",
            ".js",
            ".json",
            ".xml",
            ".rss",
            ".exe",
            ".deb",
            ".rpm",
            ".iso",
            ".dmg",
            ".apk",
            ".doc",
            ".docx",
            ".xls",
            ".xlsx",
            ".ppt",
            ".pptx",
            ".odt",
            ".ods",
            ".epub",
        ],
        description="links ending in these are not followed as pages",
    )


HTML_TYPES = ("text/html", "application/xhtml+xml")
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


class FetchError(Exception):
    """A request that produced no usable response; ``reason`` is a short code, ``detail`` free text."""

    def __init__(self, reason: str, detail: str = "", status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.status = status


@dataclass
class Response(HasHeaders):
    """A successful fetch: final ``url`` after redirects, HTTP ``status``, headers, ``body`` bytes."""

    url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fetched_at: datetime
    from_cache: bool = False
    redirects: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ SSRF guard
class AddressPolicy:
    """Which resolved IP addresses may be contacted.

    ``allow`` holds IPs/CIDRs (``127.0.0.1``, ``10.0.0.0/8``) or ``*``; addresses that are not
    ``ipaddress.ip_address(...).is_global`` are refused unless covered by it.
    """

    def __init__(self, allow: list[str]) -> None:
        self.allow_all = "*" in allow
        self.nets = [ipaddress.ip_network(a, strict=False) for a in allow if a != "*"]

    def permits(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip.split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        if addr.is_global and not addr.is_multicast:
            return True
        return self.allow_all or any(addr in n for n in self.nets)


class PrivateAddressError(OSError):
    pass


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops addresses the :class:`AddressPolicy` refuses (DNS-rebinding safe)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._inner = ThreadedResolver()
        self._policy = policy

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        infos = await self._inner.resolve(host, port, family)
        ok = [i for i in infos if self._policy.permits(i["host"])]
        if not ok:
            raise PrivateAddressError(f"{host} resolves only to refused addresses")
        return ok

    async def close(self) -> None:
        await self._inner.close()


# -------------------------------------------------------------------------------------- fetcher
class Fetcher:
    """Polite, guarded HTTP GET for pages and images. Use as ``async with Fetcher(cfg) as f: await f.get(url)``.

    Args:
        cfg: timeouts, limits, retries, robots and SSRF settings.
        warc: where every received response is recorded (None: not recorded).
        cache: recorded responses to answer from before touching the network.
        offline: never touch the network; a cache miss raises ``FetchError("not_in_warc")``.
        failures: earlier failures to answer from, and where new ones are recorded (None: neither).
        gate: the per-origin lease service (:func:`mella.hostlimits.job_gate`; None: one of this fetcher's own).
    """

    def __init__(
        self,
        cfg: CrawlConfig,
        warc: RotatingWarcWriter | None = None,
        cache: WarcIndex | None = None,
        offline: bool = False,
        concurrency: int = 64,
        failures: FailureLog | None = None,
        gate=None,
    ) -> None:
        self.cfg = cfg
        self.warc = warc
        self.cache = cache
        self.offline = offline
        self.failures = failures
        self.policy = AddressPolicy(cfg.allow_private_hosts)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self.gate = gate if gate is not None else HostGate(cfg)
        self._per_origin: dict[tuple[str, str], object] = {}  # (kind, origin) -> robots parser / tdmrep rules
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._resolver: GuardedResolver | None = None
        #: network seconds per origin (requests only, no queueing), for "slowest hosts"
        self.seconds_by_origin: dict[str, float] = {}

    async def __aenter__(self) -> Fetcher:
        self._resolver = GuardedResolver(self.policy)
        connector = aiohttp.TCPConnector(
            limit=self._concurrency,
            limit_per_host=self.cfg.per_host_concurrency,
            resolver=self._resolver,
            ttl_dns_cache=60,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.cfg.total_timeout_s, sock_connect=self.cfg.connect_timeout_s, sock_read=self.cfg.read_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": self.cfg.user_agent, "Accept-Encoding": "gzip, deflate"},
            auto_decompress=True,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ---------------------------------------------------------------------------- public API
    async def get(self, url: str, kind: str = "page") -> Response:
        """Fetch ``url`` (``kind`` = ``"page"`` or ``"image"``) following redirects; raise FetchError on failure.

        A URL remembered as failed (:class:`~mella.warc.FailureLog`) raises its old reason without a
        request (``detail`` starts with ``remembered:``); a new failure is recorded there.
        """
        url = normalise_url(None, url) or url
        if self.cache is not None and url in self.cache:
            pass  # a recorded response outranks a recorded failure
        elif self.failures is not None:
            old = self.failures.remembered(url)
            if old is not None:
                raise FetchError(old["reason"], "remembered: " + old.get("detail", ""))
        try:
            return await self._get(url, kind)
        except FetchError as e:
            if self.failures is not None and not e.detail.startswith("remembered:"):
                self.failures.record(url, e.reason, e.detail)
            raise

    async def _get(self, url: str, kind: str) -> Response:
        max_bytes = self.cfg.max_page_bytes if kind == "page" else self.cfg.max_image_bytes
        seen: list[str] = []
        current = url
        for _hop in range(self.cfg.max_redirects + 1):
            if current in seen:
                raise FetchError("redirect_loop", " -> ".join(seen + [current]))
            seen.append(current)
            resp = await self._get_one(current, max_bytes, check_robots=self.cfg.respect_robots)
            if 300 <= resp.status < 400 and resp.status != 304:
                loc = resp.header("location")
                nxt = normalise_url(current, loc) if loc else None
                if not nxt:
                    raise FetchError(f"http_{resp.status}", f"redirect without usable Location: {loc!r}", resp.status)
                current = nxt
                continue
            if resp.status >= 400 or resp.status < 200:
                raise FetchError(f"http_{resp.status}", current, resp.status)
            self._check_type(resp, kind)
            resp.redirects = seen[:-1]
            return resp
        raise FetchError("too_many_redirects", f"more than {self.cfg.max_redirects}: " + " -> ".join(seen))

    @staticmethod
    def _check_type(resp: Response, kind: str) -> None:
        ct = resp.content_type
        if kind == "page":
            if ct and ct not in HTML_TYPES:
                raise FetchError("content_type", ct or "missing", resp.status)
            if not ct and not resp.body.lstrip()[:1] == b"<":
                raise FetchError("content_type", "missing, body is not markup", resp.status)
        else:
            sniff_image = resp.body.startswith(IMAGE_MAGIC) or resp.body[8:12] == b"WEBP"
            if ct.startswith("image/") or (
                ct in ("", "application/octet-stream", "binary/octet-stream") and sniff_image
            ):
                return
            raise FetchError("content_type", ct or "missing", resp.status)

    # ------------------------------------------------------------------------------ internals
    async def _get_one(self, url: str, max_bytes: int, check_robots: bool, truncate: bool = False) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("bad_url", url)
        if self.cache is not None:
            hit = self.cache.get(url)
            # a recorded 5xx/429 is a transient failure: with retry_failed it is asked again (if online)
            if hit is not None and not (
                self.cfg.retry_failed and not self.offline and (hit.status >= 500 or hit.status in (408, 429))
            ):
                return _from_warc(hit)
        if self.offline:
            raise FetchError("not_in_warc", url)
        await self._check_address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        if check_robots:
            if not await self._robots_allows(url):
                raise FetchError("robots_disallowed", url)
            if self.cfg.respect_tdmrep and await self._tdm_reserved(url):
                raise FetchError("ai_opt_out", f"/.well-known/tdmrep.json reserves {parts.path}")
        return await self._request_with_retries(url, max_bytes, truncate)

    async def _check_address(self, host: str, port: int) -> None:
        try:
            ipaddress.ip_address(host.strip("[]"))
            is_literal = True
        except ValueError:
            is_literal = False
        if is_literal:
            if not self.policy.permits(host.strip("[]")):
                raise FetchError("private_address", host)
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise FetchError("dns_error", f"{host}: {e}") from None
        if not infos or not all(self.policy.permits(i[4][0]) for i in infos):
            raise FetchError("private_address", f"{host} -> {sorted({i[4][0] for i in infos})}")

    async def _per_origin_value(self, kind: str, url: str, load):
        key = (kind, origin(url))
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key not in self._per_origin:
                self._per_origin[key] = await load(key[1])
        return self._per_origin[key]

    async def _robots_allows(self, url: str) -> bool:
        rp = await self._per_origin_value("robots", url, self._load_robots)
        if isinstance(rp, FetchError):
            raise rp
        return rp.can_fetch(url, self.cfg.user_agent)

    async def _load_robots(self, origin_url: str):
        try:
            resp = await self.get_robots(origin_url + "/robots.txt")
        except FetchError as e:
            if e.reason.startswith("http_5") or e.reason == "http_429":
                return _DISALLOW_ALL  # RFC 9309 2.3.1.3: unreachable server errors → complete disallow
            if e.reason.startswith("http_4") or e.reason == "not_in_warc":
                return _ALLOW_ALL  # 2.3.1.3: "unavailable" → allow; replay: the capture decides what exists
            return FetchError(e.reason, f"robots.txt: {e.detail}")
        rp = Protego.parse(resp.body[:ROBOTS_MAX_BYTES].decode("utf-8", "replace"))
        rate = rp.request_rate(self.cfg.user_agent)
        done = self.gate.set_robots(
            origin_url, rp.crawl_delay(self.cfg.user_agent), (rate.requests, rate.seconds) if rate else None
        )
        if inspect.isawaitable(done):
            await done
        return rp

    async def _tdm_reserved(self, url: str) -> bool:
        rules = await self._per_origin_value("tdmrep", url, self._load_tdmrep)
        parts = urlsplit(url)
        return tdmrep_reserved(rules, parts.path + (f"?{parts.query}" if parts.query else ""))

    async def _load_tdmrep(self, origin_url: str) -> list:
        try:
            resp = await self.get_robots(origin_url + "/.well-known/tdmrep.json", max_bytes=64 * 1024)
        except FetchError:
            return []  # absent or unreachable: no reservation declared this way
        return parse_tdmrep(resp.body)

    async def get_robots(self, url: str, max_bytes: int = ROBOTS_MAX_BYTES) -> Response:
        """GET a robots.txt (or another well-known file) without a robots check, following up to 5
        redirects (RFC 9309 2.3.1.2); a body longer than ``max_bytes`` is cut there, not refused."""
        current = url
        for _ in range(6):
            resp = await self._get_one(current, max_bytes, check_robots=False, truncate=True)
            loc = resp.header("location")
            if 300 <= resp.status < 400 and loc and normalise_url(current, loc):
                current = normalise_url(current, loc)
                continue
            if resp.status >= 400:
                raise FetchError(f"http_{resp.status}", current, resp.status)
            return resp
        raise FetchError("too_many_redirects", url)

    async def _request_with_retries(self, url: str, max_bytes: int, truncate: bool = False) -> Response:
        key = origin(url)
        c = self.cfg
        policy = RetryPolicy(
            retries=c.max_retries,
            backoff_base_s=c.backoff_base_s,
            backoff_max_s=c.backoff_max_s,
            deadline_s=c.url_deadline_s,
            max_timeout_retries=c.max_timeout_retries,
        )
        queued = [0.0]  # seconds spent waiting for the host's lease: not charged to the URL's deadline

        async def attempt(_n: int, left: float | None) -> Response:
            t0 = time.monotonic()
            lease = await self.gate.acquire(key)
            t1 = time.monotonic()
            queued[0] += t1 - t0
            status = retry_after = None
            try:
                async with asyncio.timeout(left):
                    resp = await self._request(url, max_bytes, truncate)
                status = resp.status
                retry_after = parse_retry_after(resp.header("retry-after")) if status in BACKOFF_STATUSES else None
            except TimeoutError:
                raise FetchError("timeout", f"per-URL deadline {c.url_deadline_s} s spent: {url}") from None
            except FetchError as e:
                if e.reason == "timeout":
                    raise Retryable(e, timeout=True) from None
                if e.reason in ("connect_error", "server_disconnected"):
                    raise Retryable(e) from None
                raise
            finally:
                self.gate.release(lease, status, time.monotonic() - t1 if status is not None else None, retry_after)
            if resp.status == 429 or resp.status >= 500:
                raise Retryable(
                    FetchError(f"http_{resp.status}", url, resp.status),
                    retry_after=retry_after
                    if retry_after is not None
                    else parse_retry_after(resp.header("retry-after")),
                )
            return resp

        return await retry_async(attempt, policy, clock=lambda: time.monotonic() - queued[0])

    async def _request(self, url: str, max_bytes: int, truncate: bool = False) -> Response:
        assert self._session is not None, "use Fetcher as an async context manager"
        t0 = time.monotonic()
        try:
            async with self._session.get(url, allow_redirects=False) as r:
                declared = r.headers.get("Content-Length")
                if not truncate and declared and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError("too_large", f"Content-Length {declared} > {max_bytes} bytes", r.status)
                chunks: list[bytes] = []
                size = 0
                cut = False
                async for chunk in r.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        if not truncate:
                            raise FetchError("too_large", f"body > {max_bytes} bytes", r.status)
                        chunks.append(chunk[: len(chunk) - (size - max_bytes)])
                        cut = True
                        break
                    chunks.append(chunk)
                body = b"".join(chunks)
                resp = Response(
                    url=url,
                    status=r.status,
                    headers=list(r.headers.items()),
                    body=body,
                    fetched_at=datetime.now(timezone.utc),
                )
                if self.warc is not None:
                    self.warc.write_response(url, r.status, r.reason or "", resp.headers, body, resp.fetched_at, cut)
                return resp
        except FetchError:
            raise
        except asyncio.TimeoutError:
            raise FetchError("timeout", url) from None
        except aiohttp.ClientConnectorError as e:
            if isinstance(getattr(e, "os_error", None), PrivateAddressError):
                raise FetchError("private_address", str(e)) from None
            raise FetchError("connect_error", str(e)) from None
        except aiohttp.ServerDisconnectedError as e:
            raise FetchError("server_disconnected", str(e)) from None
        except aiohttp.ClientPayloadError as e:
            raise FetchError("truncated_response", str(e)) from None
        except (aiohttp.ClientError, ValueError, UnicodeError) as e:
            raise FetchError("client_error", f"{type(e).__name__}: {e}") from None
        finally:
            o = origin(url)
            self.seconds_by_origin[o] = self.seconds_by_origin.get(o, 0.0) + time.monotonic() - t0


def _from_warc(rec: WarcResponse) -> Response:
    return Response(
        url=rec.url, status=rec.status, headers=rec.headers, body=rec.body, fetched_at=rec.date, from_cache=True
    )
