"""Issue 13: the crawl and the image stages stream into each other. A unit over the page files of the
crawl shards that have ended is run and committed while another shard still crawls: its one page is
held by the test server until the test has seen that unit's ``UNIT.json`` and its rows."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import threading
import time
import zlib

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from conftest import DEMO_WEB
from helpers import build, read_dir
from webserver import _HU_IMAGES, _HU_PROSE, _img, _page, _pairs

from mella.crawl import registered_domain

pytestmark = pytest.mark.slow  # one crawl + one image phase, no models (~40 s on 2 busy cores)

HELD = "127.0.0.1"
DEADLINE_S = 300.0  # for the first unit to commit while the held page waits (a loaded 2-core box)
WAIT = {
    "read_timeout_s": 900.0,
    "total_timeout_s": 900.0,
    "url_deadline_s": 900.0,
    "max_depth": 0,
    "politeness_delay_s": 0.0,
    "allow_private_hosts": ["127.0.0.0/8"],
}


def _free_hosts(k: int) -> list[str]:
    """``k`` loopback IPs whose registered domain never shares ``HELD``'s crawl shard (crc32 mod n,
    :func:`mella.crawl.shard_seeds`) for any shard count the job can choose with ≤ 8 seeds."""

    def shard(host: str, n: int) -> int:
        return zlib.crc32(registered_domain(host).encode()) % n

    hosts = [
        f"127.0.0.{i}" for i in range(2, 255) if all(shard(f"127.0.0.{i}", n) != shard(HELD, n) for n in range(2, 9))
    ]
    return hosts[:k]


class _Site:
    """One aiohttp app on several loopback IPs (a port each) in a thread with its own loop. Each host
    serves ``/p.html`` (Hungarian prose, one real image with its alt) and ``/img.png``; ``HELD``'s page
    waits for :meth:`release`. ``held_asked`` is set once that page has been requested."""

    def __init__(self, hosts: list[str]) -> None:
        alts = _pairs(DEMO_WEB)
        keys = ["ok", "flakypage", "broken", "ratelimited"]
        self.images = {h: (DEMO_WEB / _HU_IMAGES[k]).read_bytes() for h, k in zip(hosts, keys)}
        self.alts = {h: alts[_HU_IMAGES[k]] for h, k in zip(hosts, keys)}
        self.hosts = hosts
        self.held_asked = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="test-held-site")
        self.urls: dict[str, str] = {}

    async def _start(self) -> None:
        self.release_event = asyncio.Event()

        async def page(request: web.Request) -> web.Response:
            host = request.transport.get_extra_info("sockname")[0]
            if host == HELD:
                self.held_asked.set()
                await self.release_event.wait()
            return web.Response(
                text=_page(f"Oldal {host}", _HU_PROSE + _img("/img.png", self.alts[host])),
                content_type="text/html",
                charset="utf-8",
            )

        async def image(request: web.Request) -> web.Response:
            host = request.transport.get_extra_info("sockname")[0]
            return web.Response(body=self.images[host], content_type="image/png")

        async def robots(_request: web.Request) -> web.Response:
            return web.Response(text="User-agent: *\nDisallow:\n", content_type="text/plain")

        app = web.Application()
        app.router.add_get("/p.html", page)
        app.router.add_get("/img.png", image)
        app.router.add_get("/robots.txt", robots)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        for h in self.hosts:
            await web.TCPSite(self.runner, h, 0).start()
        self.urls = {host: f"http://{host}:{port}" for host, port in self.runner.addresses}

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self.release_event.set)

    def __enter__(self) -> _Site:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def _committed(units_dir: str) -> list[dict]:
    """Committed units: ``{"files", "pages"}`` (page URLs of the rows in their parts). A unit's staging
    directory gets its ``UNIT.json`` just before it is renamed: only renamed (committed) ones count."""
    out = []
    for marker in glob.glob(os.path.join(units_dir, "*", "UNIT.json")):
        unit = os.path.dirname(marker)
        if unit.endswith(".staging"):
            continue
        with open(marker, encoding="utf-8") as f:
            files = json.load(f)["files"]
        pages = {
            r["page_url"]
            for p in glob.glob(os.path.join(unit, "parts", "*.parquet"))
            for r in pq.read_table(p, columns=["page_url"]).to_pylist()
        }
        out.append({"files": files, "pages": pages})
    return out


def test_a_unit_commits_while_a_crawl_shard_still_runs(tmp_path, ray_session):
    out = tmp_path / "out"
    free = _free_hosts(2)
    assert len(free) == 2
    with _Site([HELD, *free]) as site:
        seeds = tmp_path / "seeds.txt"
        seeds.write_text("".join(f"{site.urls[h]}/p.html\n" for h in (HELD, *free)))
        result: dict = {}

        def job() -> None:
            try:
                result["funnel"] = build(out, seeds=seeds, crawl=WAIT, ray={"files_per_group": 8})
            except BaseException as e:
                result["error"] = e

        runner = threading.Thread(target=job, daemon=True, name="test-build")
        runner.start()
        want = {f"{site.urls[h]}/p.html" for h in free}  # the free hosts' shards end first (maybe one unit each)
        early: set[str] = set()
        try:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and runner.is_alive() and not want <= early:
                early = set().union(set(), *(u["pages"] for u in _committed(str(out / "_work" / "units"))))
                if not want <= early:
                    runner.join(timeout=0.5)  # wakes at once if the job ends (it must not, the page is held)
            held_asked = site.held_asked.is_set()
        finally:
            site.release()
            runner.join(timeout=DEADLINE_S)
        assert not runner.is_alive(), "the job did not end after the held page was released"
        assert "error" not in result, repr(result.get("error"))
        assert want <= early, (
            f"within {DEADLINE_S:.0f} s, while a crawl shard held one page, the committed units "
            f"held rows of {sorted(early)} of {sorted(want)}: phase 1 waits for the whole crawl"
        )
        assert held_asked, "the held page was never requested"
        assert f"{site.urls[HELD]}/p.html" not in early

    funnel = result["funnel"]
    kept = {r["page_url"] for r in read_dir(out / "d_know", ["page_url"])}
    assert kept == {f"{site.urls[h]}/p.html" for h in (HELD, *free)}, kept
    assert funnel["d_know_total"] == 3
    units = _committed(str(out / "_work" / "units"))
    files = [f for u in units for f in u["files"]]
    assert len(units) >= 2 and len(files) == len(set(files))  # the held shard's file came in a later unit
    assert sorted(files) == sorted(glob.glob(str(out / "warc" / "pages-*.warc.gz")))
    stats = json.loads((out / "_work" / "crawl_stats.json").read_text())
    assert stats["pages_ok"] == 3 and stats["seeds"] == 3
