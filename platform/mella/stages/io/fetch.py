"""Image fetch stage: image URL → image bytes, from the WARC capture when present, else live.

Runs as a Ray Data actor pool (``ActorPoolStrategy``); each actor owns one event loop, one aiohttp
session (:class:`mella.net.Fetcher`: robots.txt, SSRF guard, per-host limits, retries, size cap,
content-type check) and fetches a batch's URLs concurrently. Responses fetched live are written to
``DIR/warc/images-*.warc`` (uncompressed; one closed shard per batch, so a killed job keeps every finished batch
and a rerun or a ``--warc ... --offline`` replay reads them instead of refetching).

Reject reasons: those of :class:`mella.net.FetchError` (``http_404``, ``timeout``, ``content_type``,
``too_large``, ``robots_disallowed``, ``private_address``, ``dns_error``, ``not_in_warc`` ...).
"""

from __future__ import annotations

import asyncio
import hashlib

from mella.config import CrawlConfig
from mella.net import FetchError, Fetcher
from mella.stages.base import Stage
from mella.warc import RotatingWarcWriter, WarcIndex, shard_paths


class ImageFetchStage(Stage):
    """Image URL → image bytes (see module docstring); an actor-pool stage.

    Args:
        cfg: HTTP settings.
        warc_dir: where live responses are recorded (None: not recorded).
        index_paths: WARC files whose image responses are served instead of fetching.
        index_dir: a directory whose ``images-*.warc`` shards are served too, read at :meth:`setup`
            (the job's own ``DIR/warc``: images fetched for earlier work units).
        offline: never fetch live; a URL missing from the WARCs is rejected ``not_in_warc``.
        concurrency: simultaneous requests of this actor.
    """

    name = "fetch"
    reads = ("image_url",)
    writes = ("image", "image_bytes", "sha256", "fetched_at")
    rejects = True

    def __init__(self, cfg: CrawlConfig, warc_dir: str | None, index_paths: list[str], offline: bool = False,
                 concurrency: int = 32, index_dir: str | None = None) -> None:
        self.cfg = cfg
        self.warc_dir = warc_dir
        self.index_paths = list(index_paths)
        self.index_dir = index_dir
        self.offline = offline
        self.concurrency = concurrency

    def setup(self) -> None:
        self.index = WarcIndex()
        paths = self.index_paths + (shard_paths(self.index_dir, "images") if self.index_dir else [])
        for p in dict.fromkeys(paths):
            self.index.add_file(p, url_filter=_is_image_record)
        self.writer = RotatingWarcWriter(self.warc_dir, "images", gzip=False) if self.warc_dir else None
        self.loop = asyncio.new_event_loop()
        self.fetcher = Fetcher(self.cfg, warc=self.writer, cache=self.index, offline=self.offline,
                               concurrency=self.concurrency)
        self.loop.run_until_complete(self.fetcher.__aenter__())

    def teardown(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.loop.run_until_complete(self.fetcher.__aexit__(None, None, None))
        self.loop.close()

    def process(self, rows: list[dict]) -> None:
        try:
            self.loop.run_until_complete(self._fetch_all(rows))
        finally:
            if self.writer is not None:
                self.writer.rotate()

    async def _fetch_all(self, rows: list[dict]) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        by_url: dict[str, asyncio.Task] = {}

        async def one(url: str):
            async with sem:
                try:
                    return await self.fetcher.get(url, "image")
                except FetchError as e:
                    return e

        for r in rows:
            url = r["image_url"]
            if url not in by_url:
                by_url[url] = asyncio.ensure_future(one(url))
        if by_url:
            await asyncio.gather(*by_url.values())
        for r in rows:
            res = by_url[r["image_url"]].result()
            if isinstance(res, FetchError):
                self.reject(r, res.reason, res.detail)
                continue
            r["image"] = res.body
            r["image_bytes"] = len(res.body)
            r["sha256"] = hashlib.sha256(res.body).hexdigest()
            r["fetched_at"] = res.fetched_at


def _is_image_record(record) -> bool:
    ct = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
    return not ct.lower().startswith(("text/html", "application/xhtml"))
