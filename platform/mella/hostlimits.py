"""Per-origin request limits held across a whole job: one lease service that every fetcher asks.

Large crawlers partition their fetch queues by host so that one place decides when a host may receive
its next request (Apache Nutch's ``fetcher.queue.mode=byHost``, StormCrawler's URL partitioner). Here
that place is :class:`HostGate`: ``lease = await gate.acquire(origin)`` waits until the origin may
receive a request, ``gate.release(lease, status, latency_s, retry_after_s)`` reports how it went.
Within one process the gate is a plain object; across a job it runs inside one named, asynchronous
Ray actor (:func:`job_gate`), so the page crawl's tasks and every image actor on every node share it,
whatever the pool size and node count.

What a lease waits for, per origin (``scheme://host:port``):

* at most ``crawl.per_host_concurrency`` leases out at once;
* request starts at least ``delay`` apart, where ``delay`` is never below the origin's floor
  ``max(politeness_delay_s, robots.txt Crawl-delay, Request-rate seconds/requests)`` (robots.txt
  values via protego, capped at ``max_crawl_delay_s``);
* adaptive delay (Scrapy's AutoThrottle algorithm): after each response, ``target = latency /
  autothrottle_target_concurrency``; the delay moves half-way to it, never below ``target`` nor the
  floor, never above ``backoff_max_s``; an error response never lowers it;
* back-off: a 429 or 503 doubles the origin's delay (at least ``backoff_base_s``) and holds every
  request to that origin until ``Retry-After`` (capped at ``backoff_max_s``) has passed. Other origins
  are untouched.

A lease not released within ``total_timeout_s`` plus ``url_deadline_s`` (a fetcher that died) expires,
so a lost release cannot block an origin for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from dataclasses import dataclass, field

#: Statuses that make the origin back off (RFC 6585 429 Too Many Requests, RFC 9110 503 Service Unavailable)
BACKOFF_STATUSES = (429, 503)


@dataclass
class _Origin:
    floor: float  # seconds between request starts at least (politeness, Crawl-delay, Request-rate)
    delay: float  # current gap between request starts, seconds (>= floor)
    next_start: float = 0.0  # time.monotonic() before which no request may start
    hold_until: float = 0.0  # back-off: no request before this (Retry-After)
    leases: dict[int, float] = field(default_factory=dict)  # lease id -> expiry (monotonic)
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class HostGate:
    """Per-origin leases (module docstring) for the coroutines of one event loop.

    Args:
        cfg: :class:`mella.net.CrawlConfig` (``per_host_concurrency``, ``politeness_delay_s``,
            ``autothrottle_target_concurrency``, ``max_crawl_delay_s``, ``backoff_base_s``,
            ``backoff_max_s``, ``total_timeout_s``, ``url_deadline_s``).
    """

    def __init__(self, cfg) -> None:
        self.limit = cfg.per_host_concurrency
        self.politeness = cfg.politeness_delay_s
        self.target = cfg.autothrottle_target_concurrency or float(cfg.per_host_concurrency)
        self.max_robots_delay = cfg.max_crawl_delay_s
        self.backoff_base = cfg.backoff_base_s
        self.max_delay = max(cfg.backoff_max_s, self.politeness)
        self.lease_ttl = cfg.total_timeout_s + cfg.url_deadline_s
        self._origins: dict[str, _Origin] = {}
        self._ids = itertools.count(1)
        self._owner: dict[int, str] = {}

    def _state(self, key: str) -> _Origin:
        st = self._origins.get(key)
        if st is None:
            st = self._origins[key] = _Origin(floor=self.politeness, delay=self.politeness)
        return st

    async def acquire(self, key: str) -> int:
        """Wait until origin ``key`` may receive a request; returns the lease id (give it to :meth:`release`).
        Waiters are served first come, first served."""
        st = self._state(key)
        async with st.lock:
            while True:
                now = time.monotonic()
                for lid in [lid for lid, exp in st.leases.items() if exp <= now]:  # fetchers that died
                    st.leases.pop(lid)
                    self._owner.pop(lid, None)
                ready_at = max(st.next_start, st.hold_until)
                if len(st.leases) < self.limit and now >= ready_at:
                    break
                if len(st.leases) >= self.limit:
                    st.freed.clear()
                    wake = min(st.leases.values()) - now
                    try:
                        await asyncio.wait_for(st.freed.wait(), timeout=max(wake, 0.001))
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(ready_at - now)
            lid = next(self._ids)
            st.leases[lid] = now + self.lease_ttl
            self._owner[lid] = key
            st.next_start = now + st.delay
            return lid

    def release(
        self, lease: int, status: int | None = None, latency_s: float | None = None, retry_after_s: float | None = None
    ) -> None:
        """End ``lease``: ``status`` the HTTP status (None: no response, e.g. a timeout), ``latency_s`` the
        seconds from request start to the full body, ``retry_after_s`` a parsed ``Retry-After``."""
        key = self._owner.pop(lease, None)
        if key is None:
            return  # expired, or released twice
        st = self._origins[key]
        st.leases.pop(lease, None)
        st.freed.set()
        if status in BACKOFF_STATUSES:
            st.delay = min(max(2 * st.delay, self.backoff_base, st.floor), self.max_delay)
            hold = min(retry_after_s if retry_after_s is not None else st.delay, self.max_delay)
            st.hold_until = max(st.hold_until, time.monotonic() + hold)
            return
        if latency_s is None or status is None:
            return
        target = latency_s / self.target  # AutoThrottle: scrapy/extensions/throttle.py _adjust_delay
        new = max(target, (st.delay + target) / 2.0)
        new = min(max(st.floor, new), self.max_delay)
        if status >= 400 and new <= st.delay:
            return
        st.delay = new

    def set_robots(self, key: str, crawl_delay: float | None, request_rate: tuple[int, int] | None) -> None:
        """Raise origin ``key``'s floor to its robots.txt ``Crawl-delay`` (seconds) and ``Request-rate``
        (``(requests, seconds)``), each capped at ``max_crawl_delay_s``."""
        st = self._state(key)
        floor = self.politeness
        if crawl_delay:
            floor = max(floor, min(float(crawl_delay), self.max_robots_delay))
        if request_rate and request_rate[0] > 0:
            floor = max(floor, min(request_rate[1] / request_rate[0], self.max_robots_delay))
        st.floor = floor
        st.delay = max(st.delay, floor)

    def snapshot(self, key: str) -> dict:
        """The state of origin ``key`` (for tests and logs): ``floor``, ``delay`` (s), ``in_flight``."""
        st = self._state(key)
        return {"floor": st.floor, "delay": st.delay, "in_flight": len(st.leases)}


class _LeaseService:
    """The Ray actor body of :func:`job_gate`: a :class:`HostGate` behind async actor methods."""

    def __init__(self, cfg) -> None:
        self.gate = HostGate(cfg)

    async def acquire(self, key: str) -> int:
        return await self.gate.acquire(key)

    async def release(self, lease: int, status, latency_s, retry_after_s) -> None:
        self.gate.release(lease, status, latency_s, retry_after_s)

    async def set_robots(self, key: str, crawl_delay, request_rate) -> None:
        self.gate.set_robots(key, crawl_delay, request_rate)

    async def snapshot(self, key: str) -> dict:
        return self.gate.snapshot(key)


class RemoteHostGate:
    """:class:`HostGate`'s interface, served by the job's one lease actor (named ``name``, created by the
    first caller, ``num_cpus=0``). If the actor is gone (its creator died), the next call creates it again."""

    #: concurrent calls one lease actor serves (waiting acquires included)
    MAX_CONCURRENCY = 10_000

    def __init__(self, name: str, cfg) -> None:
        self.name = name
        self.cfg = cfg
        self._handle = None

    def _actor(self):
        import ray

        if self._handle is None:
            cls = ray.remote(_LeaseService)
            self._handle = cls.options(
                name=self.name, get_if_exists=True, num_cpus=0, max_concurrency=self.MAX_CONCURRENCY
            ).remote(self.cfg)
        return self._handle

    async def _call(self, method: str, *args):
        import ray

        try:
            return await getattr(self._actor(), method).remote(*args)
        except ray.exceptions.RayActorError:
            self._handle = None
            return await getattr(self._actor(), method).remote(*args)

    async def acquire(self, key: str) -> int:
        return await self._call("acquire", key)

    def release(
        self, lease: int, status: int | None = None, latency_s: float | None = None, retry_after_s: float | None = None
    ) -> None:
        """Fire and forget: calls from one caller run in order, and nothing waits on the answer."""
        self._actor().release.remote(lease, status, latency_s, retry_after_s)

    async def set_robots(self, key: str, crawl_delay, request_rate) -> None:
        await self._call("set_robots", key, crawl_delay, request_rate)

    async def snapshot(self, key: str) -> dict:
        return await self._call("snapshot", key)


def job_gate(cfg, job_key: str):
    """The gate for a fetcher: inside a Ray job, the job-wide lease actor named after ``job_key`` (e.g. the
    job's WARC directory: one job, one name); outside Ray, a gate of this process only."""
    try:
        import ray

        in_ray = ray.is_initialized()
    except ImportError:
        in_ray = False
    if not in_ray:
        return HostGate(cfg)
    return RemoteHostGate("mella-host-leases-" + hashlib.sha1(job_key.encode()).hexdigest()[:16], cfg)
