"""Image fetch stage: image URL → image bytes, from the WARC capture when present, else live.

Runs as a Ray Data actor pool (``ActorPoolStrategy``); each actor owns one event loop, one aiohttp
session (:class:`mella.net.Fetcher`: robots.txt, SSRF guard, per-host limits, retries, size cap,
content-type check) in its own thread, and fetches a batch's URLs concurrently; several batches may be in
flight at once (``ray.image_pool.batches_per_actor``): their downloads share the loop while the
calling threads decode. Responses fetched live are written to
``DIR/warc/images-*.warc`` (uncompressed; one closed shard per batch, so a killed job keeps every finished batch
and a rerun or a ``--warc ... --offline`` replay reads them instead of refetching).

Reject reasons: those of :class:`mella.net.FetchError` (``http_404``, ``timeout``, ``content_type``,
``too_large``, ``robots_disallowed``, ``private_address``, ``dns_error``, ``not_in_warc`` ...), and
``ai_opt_out`` for an image whose response carries an ``X-Robots-Tag``/``tdm-reservation`` opt-out
(:mod:`mella.optout`) or whose path ``tdmrep.json`` reserves. Failed URLs are remembered in
``DIR/warc/failures-images-*.jsonl`` and not requested again on a rerun (:class:`mella.warc.FailureLog`).
A ``data:`` image (bytes decoded at extraction, ``image_url`` = ``data:<type>;sha256,<hex>``) is
never fetched: its bytes are already in the row.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time

from mella.hostlimits import job_gate
from mella.net import CrawlConfig, Fetcher, FetchError
from mella.optout import header_opt_out
from mella.stages.base import Stage
from mella.warc import FailureLog, RotatingWarcWriter, WarcIndex, shard_paths


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

    def __init__(
        self,
        cfg: CrawlConfig,
        warc_dir: str | None,
        index_paths: list[str],
        offline: bool = False,
        concurrency: int = 32,
        index_dir: str | None = None,
    ) -> None:
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
        self.failures = (
            FailureLog(self.warc_dir, "images", retry_failed=self.cfg.retry_failed) if self.warc_dir else None
        )
        # One event loop per actor, in its own thread: every batch the actor runs at once (the image pool's
        # batches_per_actor threads) shares its aiohttp session, per-host limits and request cap, and the
        # WARC writer and failure log are only ever touched from this thread.
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="fetch-loop", daemon=True)
        self._loop_thread.start()
        # one lease service per job (mella.hostlimits): per-host limits hold across every actor and the crawl
        gate = job_gate(self.cfg, os.path.normpath(self.index_dir or self.warc_dir or "."))
        self.fetcher = Fetcher(
            self.cfg,
            warc=self.writer,
            cache=self.index,
            offline=self.offline,
            concurrency=self.concurrency,
            failures=self.failures,
            gate=gate,
        )
        self._run(self._open())

    async def _open(self) -> None:
        await self.fetcher.__aenter__()
        self._sem = asyncio.Semaphore(self.concurrency)
        self._loop_clock = time.pthread_getcpuclockid(threading.get_ident())

    async def _close(self) -> None:
        await self.fetcher.__aexit__(None, None, None)
        if self.writer is not None:
            self.writer.close()
        if self.failures is not None:
            self.failures.close()

    async def _rotate(self) -> None:
        if self.writer is not None:
            self.writer.rotate()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def teardown(self) -> None:
        try:
            self._run(self._close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join()
            self.loop.close()

    def helper_cpu_s(self) -> float:
        """CPU seconds of the actor's event-loop thread (requests, WARC writing) so far."""
        clock = getattr(self, "_loop_clock", None)
        return time.clock_gettime(clock) if clock is not None and self._loop_thread.is_alive() else 0.0

    def process(self, rows: list[dict]) -> None:
        try:
            self._run(self._fetch_all(rows))
        finally:
            # this batch's records are all written: close the shard holding them (a concurrent batch's
            # later records go to the next shard), so a killed job keeps every finished batch
            self._run(self._rotate())

    async def _fetch_all(self, rows: list[dict]) -> None:
        by_url: dict[str, asyncio.Task] = {}

        async def one(url: str):
            async with self._sem:  # the actor's request cap, shared by its concurrent batches
                try:
                    return await self.fetcher.get(url, "image")
                except FetchError as e:
                    return e

        for r in rows:
            url = r["image_url"]
            if url.startswith("data:"):
                continue
            if url not in by_url:
                by_url[url] = asyncio.ensure_future(one(url))
        if by_url:
            await asyncio.gather(*by_url.values())
        for r in rows:
            if r["image_url"].startswith("data:"):
                body = r.get("image") or b""
                r.update(image_bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
                continue
            res = by_url[r["image_url"]].result()
            if isinstance(res, FetchError):
                self.reject(r, res.reason, res.detail)
                continue
            why = header_opt_out(res.headers, self.cfg.ai_opt_out_directives, self.cfg.user_agent)
            if why:
                self.reject(r, "ai_opt_out", why)
                continue
            r["image"] = res.body
            r["image_bytes"] = len(res.body)
            r["sha256"] = hashlib.sha256(res.body).hexdigest()
            r["fetched_at"] = res.fetched_at


def _is_image_record(record) -> bool:
    ct = (record.http_headers.get_header("Content-Type") or "") if record.http_headers else ""
    return not ct.lower().startswith(("text/html", "application/xhtml"))


def reopen_units_with_transient_failures(units_dir: str) -> int:
    """``--retry-failed``: uncommit every work unit with a transient ``fetch`` reject (timeout, 5xx ...).

    The unit's ``UNIT.json`` is removed first (the unit is then no longer committed, atomically), then
    its directory; the next phase 1 runs its WARC files again: every image already recorded is served
    from ``DIR/warc`` and permanent failures from the failure log, so only the transient ones are
    requested again. Returns how many units were reopened.
    """
    import glob
    import os
    import shutil

    import pyarrow.parquet as pq

    from mella.warc import is_transient

    n = 0
    for marker in glob.glob(os.path.join(units_dir, "*", "UNIT.json")):
        unit = os.path.dirname(marker)
        reasons = set()
        for p in glob.glob(os.path.join(unit, "parts", "*.parquet")):
            t = pq.read_table(p, columns=["stage", "reason"]).to_pylist()
            reasons.update(r["reason"] for r in t if r["stage"] == "fetch" and r["reason"])
        if any(is_transient(r) for r in reasons):
            os.remove(marker)
            shutil.rmtree(unit)
            n += 1
    return n
