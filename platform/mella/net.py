"""HTTP fetching shared by the page crawler and the image fetch stage (aiohttp).

What every request goes through, in order:

1. scheme check (http/https only);
2. robots.txt of the origin (RFC 9309 via ``urllib.robotparser``; 4xx → allow all, 5xx → disallow all,
   unreachable → the network error is reported);
3. SSRF guard: the host's addresses must all be global unless allowed by ``allow_private_hosts``
   (private, loopback, link-local, reserved, multicast are refused). The same check runs inside the
   connector's resolver, so a DNS answer that changes between check and connect is still refused;
4. per-host concurrency limit and politeness delay;
5. the request with connect/read/total timeouts, manual redirects (each hop re-checked, loop and
   limit detection), a streaming size cap, retries with exponential backoff on 429/5xx/timeouts/
   connection errors (``Retry-After`` honoured, capped);
6. content-type check (pages: HTML; images: ``image/*`` or sniffed image bytes);
7. the response is written to the WARC writer, if one is given.

Failures raise :class:`FetchError` with a machine-readable ``reason`` (``http_404``, ``timeout``,
``robots_disallowed``, ``private_address``, ``too_large``, ``redirect_loop``, ``content_type``, ...).
A :class:`~mella.warc.WarcIndex` cache answers from recorded responses first; with ``offline=True``
a cache miss is ``not_in_warc``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import urllib.robotparser
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver

from mella.config import CrawlConfig
from mella.ratelimit import RateLimiter
from mella.warc import RotatingWarcWriter, WarcIndex, WarcResponse

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
class Response:
    """A successful fetch: final ``url`` after redirects, HTTP ``status``, headers, ``body`` bytes."""

    url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fetched_at: datetime
    from_cache: bool = False
    redirects: list[str] = field(default_factory=list)

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    @property
    def content_type(self) -> str:
        return (self.header("content-type") or "").split(";")[0].strip().lower()


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
    """

    def __init__(
        self,
        cfg: CrawlConfig,
        warc: RotatingWarcWriter | None = None,
        cache: WarcIndex | None = None,
        offline: bool = False,
        concurrency: int = 64,
    ) -> None:
        self.cfg = cfg
        self.warc = warc
        self.cache = cache
        self.offline = offline
        self.policy = AddressPolicy(cfg.allow_private_hosts)
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._host_sems: dict[str, asyncio.Semaphore] = {}
        self._host_limiters: dict[str, RateLimiter] = {}  # politeness: one request start per delay per host
        self._robots: dict[str, object] = {}
        self._robots_locks: dict[str, asyncio.Lock] = {}
        self._resolver: GuardedResolver | None = None

    async def __aenter__(self) -> "Fetcher":
        self._resolver = GuardedResolver(self.policy)
        connector = aiohttp.TCPConnector(
            limit=self._concurrency, limit_per_host=self.cfg.per_host_concurrency, resolver=self._resolver, ttl_dns_cache=60
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
        """Fetch ``url`` (``kind`` = ``"page"`` or ``"image"``) following redirects; raise FetchError on failure."""
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
                if not loc:
                    raise FetchError(f"http_{resp.status}", "redirect without Location", resp.status)
                current = urljoin(current, loc.strip())
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
            if ct.startswith("image/") or (ct in ("", "application/octet-stream", "binary/octet-stream") and sniff_image):
                return
            raise FetchError("content_type", ct or "missing", resp.status)

    # ------------------------------------------------------------------------------ internals
    async def _get_one(self, url: str, max_bytes: int, check_robots: bool) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError("bad_url", url)
        if self.cache is not None:
            hit = self.cache.get(url)
            if hit is not None:
                return _from_warc(hit)
        if self.offline:
            raise FetchError("not_in_warc", url)
        await self._check_address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        if check_robots and not await self._robots_allows(url):
            raise FetchError("robots_disallowed", url)
        return await self._request_with_retries(url, max_bytes)

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

    async def _robots_allows(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        lock = self._robots_locks.setdefault(origin, asyncio.Lock())
        async with lock:
            if origin not in self._robots:
                self._robots[origin] = await self._load_robots(origin)
        rp = self._robots[origin]
        if isinstance(rp, FetchError):
            raise rp
        return rp.can_fetch(self.cfg.user_agent, url)

    async def _load_robots(self, origin: str):
        rp = urllib.robotparser.RobotFileParser()
        try:
            resp = await self.get_robots(origin + "/robots.txt")
        except FetchError as e:
            if e.reason.startswith("http_4"):
                rp.allow_all = True
                return rp
            if e.reason.startswith("http_5") or e.reason == "http_429":
                rp.disallow_all = True  # RFC 9309 2.3.1.3: unreachable server errors → complete disallow
                return rp
            if e.reason == "not_in_warc":
                rp.allow_all = True  # replay: the capture decides what exists
                return rp
            return FetchError(e.reason, f"robots.txt: {e.detail}")
        if resp.status >= 400:
            rp.allow_all = resp.status < 500
            rp.disallow_all = resp.status >= 500
            return rp
        rp.parse(resp.body[:512 * 1024].decode("utf-8", "replace").splitlines())
        return rp

    async def get_robots(self, url: str) -> Response:
        """GET a robots.txt (no robots check, follows up to 5 redirects as RFC 9309 2.3.1.2 asks)."""
        current = url
        for _ in range(6):
            resp = await self._get_one(current, 512 * 1024, check_robots=False)
            if 300 <= resp.status < 400 and resp.header("location"):
                current = urljoin(current, resp.header("location"))
                continue
            if resp.status >= 400:
                raise FetchError(f"http_{resp.status}", current, resp.status)
            return resp
        raise FetchError("too_many_redirects", url)

    async def _politeness(self, host: str) -> None:
        delay = self.cfg.politeness_delay_s
        if delay > 0:
            await self._host_limiters.setdefault(host, RateLimiter(1.0 / delay)).wait()

    async def _request_with_retries(self, url: str, max_bytes: int) -> Response:
        host = urlsplit(url).hostname or ""
        sem = self._host_sems.setdefault(host, asyncio.Semaphore(self.cfg.per_host_concurrency))
        last: FetchError | None = None
        for attempt in range(self.cfg.max_retries + 1):
            retry_after: float | None = None
            async with sem:
                await self._politeness(host)
                try:
                    resp = await self._request(url, max_bytes)
                except FetchError as e:
                    if e.reason not in ("timeout", "connect_error", "server_disconnected"):
                        raise
                    last = e
                else:
                    if resp.status == 429 or resp.status >= 500:
                        last = FetchError(f"http_{resp.status}", url, resp.status)
                        retry_after = _retry_after_s(resp.header("retry-after"))
                    else:
                        return resp
            if attempt < self.cfg.max_retries:
                backoff = self.cfg.backoff_base_s * (2**attempt) * (1 + 0.25 * random.random())
                await asyncio.sleep(min(self.cfg.backoff_max_s, retry_after if retry_after is not None else backoff))
        assert last is not None
        raise last

    async def _request(self, url: str, max_bytes: int) -> Response:
        assert self._session is not None, "use Fetcher as an async context manager"
        try:
            async with self._session.get(url, allow_redirects=False) as r:
                declared = r.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError("too_large", f"Content-Length {declared} > {max_bytes} bytes", r.status)
                chunks: list[bytes] = []
                size = 0
                async for chunk in r.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError("too_large", f"body > {max_bytes} bytes", r.status)
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
                    self.warc.write_response(url, r.status, r.reason or "", resp.headers, body, resp.fetched_at)
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


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _from_warc(rec: WarcResponse) -> Response:
    return Response(
        url=rec.url, status=rec.status, headers=rec.headers, body=rec.body, fetched_at=rec.date, from_cache=True
    )
