"""Per-host limits held across a job (mella.hostlimits): several real image-fetch actors on a real local
Ray share one lease actor, so an origin that records every request sees at most ``per_host_concurrency``
requests at once, starts at least ``max(politeness_delay_s, Crawl-delay)`` apart, and a 503 with
``Retry-After`` slows that origin only."""

from __future__ import annotations

import asyncio
import io
import itertools
import time

import pytest
from aiohttp import web
from PIL import Image
from webserver import _running

from mella.config import CrawlConfig
from mella.hostlimits import HostGate

#: scheduling noise allowed between the client's request start and the server's handler start, seconds
JITTER_S = 0.06


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (seed % 256, 7, 9)).save(buf, "PNG")
    return buf.getvalue()


def _origin_app(log: list, robots: str, hold_s: float, busy_first: int = 0, retry_after_s: int = 0) -> web.Application:
    """An image origin: ``/img/N.png`` answers after ``hold_s`` seconds; the first ``busy_first`` image
    requests get ``503`` with ``Retry-After: retry_after_s``. ``log`` gets ``(start, end, status)`` per
    image request (``time.monotonic()``, this process)."""
    served = [0]

    async def robots_txt(_request):
        return web.Response(text=robots, content_type="text/plain")

    async def image(request):
        t0 = time.monotonic()
        served[0] += 1
        if served[0] <= busy_first:
            log.append((t0, time.monotonic(), 503))
            return web.Response(status=503, headers={"Retry-After": str(retry_after_s)})
        await asyncio.sleep(hold_s)
        log.append((t0, time.monotonic(), 200))
        return web.Response(body=_png(int(request.match_info["n"])), content_type="image/png")

    app = web.Application()
    app.router.add_get("/robots.txt", robots_txt)
    app.router.add_get("/img/{n}.png", image)
    return app


def _max_in_flight(log) -> int:
    events = sorted([(s, 1) for s, _, _ in log] + [(e, -1) for _, e, _ in log])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _fetch_with_actors(ray, cfg: CrawlConfig, warc_dir: str, urls: list[str], n_actors: int = 4) -> list[dict]:
    """Fetch ``urls`` with ``n_actors`` Ray actors, each running a real :class:`ImageFetchStage`; the URLs are
    dealt round-robin, every actor fetches its share at once. Returns the rows."""

    @ray.remote(num_cpus=0.25)
    class FetchActor:
        def __init__(self):
            from mella.stages.io.fetch import ImageFetchStage

            self.stage = ImageFetchStage(cfg, warc_dir, [], concurrency=16, index_dir=warc_dir)
            self.stage.setup()

        def fetch(self, rows):
            self.stage.process(rows)
            for r in rows:
                r.pop("image", None)
            return rows

    actors = [FetchActor.remote() for _ in range(n_actors)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    shares = [[{"image_url": u, "id": u} for u in urls[i::n_actors]] for i in range(n_actors)]
    rows = [r for part in ray.get([a.fetch.remote(s) for a, s in zip(actors, shares)]) for r in part]
    for a in actors:
        ray.kill(a)
    return rows


def test_four_actors_share_one_origins_limits(ray_session, tmp_path):
    log: list = []
    crawl_delay = 0.25
    cfg = CrawlConfig(
        per_host_concurrency=2, politeness_delay_s=0.05, allow_private_hosts=["127.0.0.1"], respect_tdmrep=False
    )
    app = _origin_app(log, f"User-agent: *\nCrawl-delay: {crawl_delay}\n", hold_s=0.6)
    with _running(app) as url:
        urls = [f"{url}/img/{i}.png" for i in range(16)]
        rows = _fetch_with_actors(ray_session, cfg, str(tmp_path / "warc"), urls)
    assert not [r for r in rows if r.get("reason")], rows
    assert len(log) == 16
    assert _max_in_flight(log) <= cfg.per_host_concurrency
    starts = sorted(s for s, _, _ in log)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= max(cfg.politeness_delay_s, crawl_delay) - JITTER_S, gaps


def test_retry_after_slows_that_origin_only(ray_session, tmp_path):
    busy_log: list = []
    calm_log: list = []
    retry_after = 2
    cfg = CrawlConfig(
        per_host_concurrency=2,
        politeness_delay_s=0.1,
        allow_private_hosts=["127.0.0.1"],
        respect_tdmrep=False,
        backoff_base_s=0.1,
        max_retries=2,
    )
    busy = _origin_app(busy_log, "User-agent: *\nAllow: /\n", hold_s=0.05, busy_first=1, retry_after_s=retry_after)
    calm = _origin_app(calm_log, "User-agent: *\nAllow: /\n", hold_s=0.05)
    with _running(busy) as busy_url, _running(calm) as calm_url:
        urls = [u for i in range(12) for u in (f"{busy_url}/img/{i}.png", f"{calm_url}/img/{i}.png")]
        rows = _fetch_with_actors(ray_session, cfg, str(tmp_path / "warc"), urls)
    assert not [r for r in rows if r.get("reason")], rows
    (t503,) = [s for s, _, st in busy_log if st == 503]
    during = [s for s, _, _ in busy_log if t503 < s < t503 + retry_after - JITTER_S]
    assert not during, "the busy origin got requests while its Retry-After held"
    calm_starts = sorted(s for s, _, _ in calm_log)
    calm_gaps = [b - a for a, b in itertools.pairwise(calm_starts)]
    # the calm origin keeps its own pace: all 12 requests at ~politeness_delay_s apart, none held back
    assert calm_starts[-1] - calm_starts[0] < 11 * cfg.politeness_delay_s + 1.0, calm_gaps
    assert max(calm_gaps) < retry_after / 2, calm_gaps


async def _hold(gate: HostGate, key: str, log: list, hold_s: float, status: int = 200) -> None:
    lease = await gate.acquire(key)
    t0 = time.monotonic()
    await asyncio.sleep(hold_s)
    log.append((t0, time.monotonic(), status))
    gate.release(lease, status, hold_s)


def test_gate_limits_spacing_and_robots_floor():
    cfg = CrawlConfig(per_host_concurrency=3, politeness_delay_s=0.0)
    gate = HostGate(cfg)
    log: list = []

    async def main():
        await asyncio.gather(*(_hold(gate, "http://a", log, 0.1) for _ in range(9)))

    asyncio.run(main())
    assert _max_in_flight(log) == 3
    gate.set_robots("http://b", 0.2, (1, 10))  # Request-rate 1/10s is the larger floor
    assert gate.snapshot("http://b")["floor"] == 10.0
    gate.set_robots("http://c", 1000.0, None)
    assert gate.snapshot("http://c")["floor"] == cfg.max_crawl_delay_s


def test_gate_autothrottle_follows_latency_and_backs_off_on_429():
    cfg = CrawlConfig(per_host_concurrency=2, politeness_delay_s=0.0, backoff_max_s=5.0, backoff_base_s=0.1)
    gate = HostGate(cfg)

    async def main():
        for _ in range(12):
            gate.release(await gate.acquire("http://slow"), 200, 0.2)
        after_ok = gate.snapshot("http://slow")["delay"]
        gate.release(await gate.acquire("http://slow"), 429, 0.01, 3.0)
        t0 = time.monotonic()
        await gate.acquire("http://slow")
        return after_ok, gate.snapshot("http://slow")["delay"], time.monotonic() - t0

    after_ok, after_429, waited = asyncio.run(main())
    assert after_ok == pytest.approx(0.1, abs=0.002)  # latency 0.2 s / target concurrency 2
    assert after_429 == pytest.approx(2 * after_ok)  # doubled
    assert waited >= 3.0 - 0.05  # Retry-After held the origin
