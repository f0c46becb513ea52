"""Live crawl (paper 3.1.1, B.1): seeds → HTML pages recorded as WARC shards.

The crawler is asynchronous (aiohttp through :class:`mella.net.Fetcher`: robots.txt, SSRF guard,
per-host leases of the job (:mod:`mella.hostlimits`), timeouts, retries, redirect and size limits) and is sharded by
registered domain (public suffix list): each shard is one Ray task that crawls its domains
breadth-first within the domain (scope), up to ``max_depth`` link hops and ``max_pages`` pages per
domain, and writes every response it receives to ``DIR/warc/pages-*.warc.gz``. Downstream stages only
read WARC records, so a live crawl and a Common Crawl WARC share one extraction path, and any crawl
can be replayed with ``--warc DIR/warc/*.warc.gz --offline``.

Resume: responses already in closed WARC shards of ``DIR/warc`` are served from them (no refetch), so a
rerun after a kill re-walks the same frontier from the recorded pages and fetches only what is missing;
failed URLs are remembered in ``DIR/warc/failures-*.jsonl`` (:class:`mella.warc.FailureLog`) and not
requested again (transient failures are, with ``crawl.retry_failed``).

Every URL is normalised once (:func:`mella.urls.normalise_url`, via the extraction module's link
extractor); hosts are counted per origin (``scheme://host:port``), with the URLs cut off by
``max_pages`` (per registered domain) and ``max_depth`` and the network seconds spent per origin
(the slowest are reported: the crawl's tail is bounded by ``url_deadline_s`` per URL).
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import yaml
from publicsuffixlist import PublicSuffixList
from selectolax.lexbor import LexborHTMLParser

from mella.hostlimits import job_gate
from mella.net import CrawlConfig, Fetcher, FetchError
from mella.stages.io.extract import NotHTMLError, decode_html, page_base, page_links
from mella.urls import normalise_url, origin
from mella.warc import FailureLog, RotatingWarcWriter, WarcIndex, shard_paths

#: origins listed under ``slowest_hosts`` in the crawl stats
SLOWEST_HOSTS = 5

_PSL = None


def registered_domain(url_or_host: str) -> str:
    """Registered domain (eTLD+1, public suffix list) of a URL or host; IPs and ``localhost`` map to themselves."""
    global _PSL
    host = urlsplit(url_or_host).hostname if "://" in url_or_host else url_or_host
    host = (host or "").lower().strip(".")
    if _PSL is None:
        _PSL = PublicSuffixList()
    return _PSL.privatesuffix(host) or host


@dataclass
class Seed:
    url: str
    lang: str | None = None  # language the seed list files it under (informational)


def read_seeds(path: str, base_url: str | None = None) -> list[Seed]:
    """Read seeds: a text file (one URL or path a line, ``#`` comments) or YAML ``{lang: [url, ...]}``.

    Lines that are paths (``/hu/page.html``) are joined to ``base_url``.

    Raises:
        ValueError: a line is not an http(s) URL and no ``base_url`` is given.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    seeds: list[Seed] = []
    if path.endswith((".yaml", ".yml")):
        for lang, urls in (yaml.safe_load(text) or {}).items():
            seeds.extend(Seed(u.strip(), str(lang)) for u in urls or [])
    else:
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip() if not line.strip().startswith("http") else line.strip()
            if line:
                seeds.append(Seed(line))
    out = []
    for s in seeds:
        url = s.url
        if not url.startswith(("http://", "https://")):
            if base_url is None:
                raise ValueError(f"seed {url!r} is not an http(s) URL (give full URLs or a base URL)")
            url = base_url.rstrip("/") + "/" + url.lstrip("/")
        norm = normalise_url(None, url)
        if norm is None:
            raise ValueError(f"seed {url!r} is not a usable http(s) URL")
        out.append(Seed(norm, s.lang))
    return out


@dataclass
class CrawlResult:
    """What one crawl shard did: pages fetched, failures with reasons, per-origin counts.

    ``hosts``: origin → ``{"ok": n, "failed": {reason: n}, "cut_off": {"max_pages"|"max_depth": n},
    "seconds": network seconds}``.
    """

    pages_ok: int = 0
    failures: list[dict] = field(default_factory=list)  # {url, host, reason, detail, depth}
    hosts: dict = field(default_factory=dict)
    warc_paths: list[str] = field(default_factory=list)


def _links(url: str, body: bytes, headers: list[tuple[str, str]]) -> list[str]:
    """Normalised links of a page (the extraction module's extractor, frames included)."""
    try:
        text, _ = decode_html(body, dict((k.lower(), v) for k, v in headers).get("content-type"))
    except NotHTMLError:
        return []
    tree = LexborHTMLParser(text)
    return page_links(page_base(url, tree), tree, frames=True)


async def crawl_async(
    seeds: list[Seed], cfg: CrawlConfig, warc_dir: str, shard: int = 0, offline: bool = False
) -> CrawlResult:
    """Crawl ``seeds`` (breadth-first per registered domain) and record responses under ``warc_dir``.

    Never raises for a failing URL: each failure is appended to ``CrawlResult.failures`` with its
    ``reason`` (``dns_error``, ``http_404``, ``robots_disallowed``, ``private_address``, ...).
    """
    cache = WarcIndex()
    for p in shard_paths(warc_dir, "pages"):
        cache.add_file(p)
    writer = RotatingWarcWriter(warc_dir, f"pages-s{shard:03d}", max_bytes=64 * 2**20)
    failures = FailureLog(warc_dir, f"pages-s{shard:03d}", retry_failed=cfg.retry_failed)
    result = CrawlResult()
    hosts: dict = defaultdict(lambda: {"ok": 0, "failed": Counter(), "cut_off": Counter()})
    scope = {registered_domain(s.url) for s in seeds}
    pages_per_domain: Counter = Counter()
    seen: set[str] = set()
    queue: asyncio.Queue = asyncio.Queue()
    for s in seeds:
        if s.url not in seen:
            seen.add(s.url)
            queue.put_nowait((s.url, 0))
    skip_ext = tuple(cfg.skip_link_extensions)

    gate = job_gate(cfg, os.path.normpath(warc_dir))  # the job's per-host leases, shared with the image fetchers
    async with Fetcher(cfg, warc=writer, cache=cache, offline=offline, failures=failures, gate=gate) as fetcher:

        async def worker() -> None:
            while True:
                url, depth = await queue.get()
                try:
                    host = origin(url)
                    dom = registered_domain(url)
                    if pages_per_domain[dom] >= cfg.max_pages:
                        hosts[host]["cut_off"]["max_pages"] += 1
                        continue
                    pages_per_domain[dom] += 1
                    try:
                        resp = await fetcher.get(url, "page")
                    except FetchError as e:
                        hosts[host]["failed"][e.reason] += 1
                        result.failures.append(
                            {"url": url, "host": host, "reason": e.reason, "detail": e.detail[:300], "depth": depth}
                        )
                        continue
                    hosts[host]["ok"] += 1
                    result.pages_ok += 1
                    for link in _links(resp.url, resp.body, resp.headers):
                        if link in seen or registered_domain(link) not in scope:
                            continue
                        if urlsplit(link).path.lower().endswith(skip_ext):
                            continue
                        seen.add(link)
                        if depth >= cfg.max_depth:
                            hosts[origin(link)]["cut_off"]["max_depth"] += 1
                            continue
                        queue.put_nowait((link, depth + 1))
                finally:
                    queue.task_done()

        n_workers = max(1, min(64, cfg.per_host_concurrency * max(1, len(scope))))
        tasks = [asyncio.create_task(worker()) for _ in range(n_workers)]
        try:
            await queue.join()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            failures.close()
        seconds = dict(fetcher.seconds_by_origin)
    result.hosts = _host_summary(hosts, seconds)
    result.warc_paths = writer.closed_paths
    return result


def _host_summary(hosts: dict, seconds: dict) -> dict:
    """Per origin: pages ok, failures and cut-offs by reason, network seconds (``CrawlResult.hosts``)."""
    return {
        h: {
            "ok": v["ok"],
            "failed": dict(v["failed"]),
            "cut_off": dict(v["cut_off"]),
            "seconds": round(seconds.get(h, 0.0), 2),
        }
        for h, v in hosts.items()
    }


def merge_results(results: list[CrawlResult], n_seeds: int) -> tuple[dict, list[dict]]:
    """Crawl shards' results → (crawl stats for the funnel, failures).

    Stats: ``seeds``, ``pages_ok``, ``pages_failed``, ``hosts`` (per origin, as :class:`CrawlResult`),
    ``cut_off`` (URLs not crawled because of ``max_pages``/``max_depth``, totals) and ``slowest_hosts``.
    """
    hosts: dict = {}
    failures: list[dict] = []
    cut: Counter = Counter()
    for res in results:
        failures.extend(res.failures)
        for h, v in res.hosts.items():
            agg = hosts.setdefault(h, {"ok": 0, "failed": {}, "cut_off": {}, "seconds": 0.0})
            agg["ok"] += v["ok"]
            agg["seconds"] = round(agg["seconds"] + v.get("seconds", 0.0), 2)
            for key in ("failed", "cut_off"):
                for k, n in v.get(key, {}).items():
                    agg[key][k] = agg[key].get(k, 0) + n
            cut.update(v.get("cut_off", {}))
    stats = {
        "seeds": n_seeds,
        "pages_ok": sum(r.pages_ok for r in results),
        "pages_failed": len(failures),
        "hosts": hosts,
        "cut_off": dict(cut),
        "slowest_hosts": slowest_hosts(hosts),
    }
    return stats, failures


def slowest_hosts(hosts: dict, n: int = SLOWEST_HOSTS) -> list[dict]:
    """The ``n`` origins with the most network seconds: ``[{"host", "seconds", "ok", "failed"}]``, slowest first."""
    top = sorted(hosts.items(), key=lambda kv: -kv[1].get("seconds", 0.0))[:n]
    return [{"host": h, "seconds": v.get("seconds", 0.0), "ok": v["ok"], "failed": v["failed"]} for h, v in top]


def shard_seeds(seeds: list[Seed], num_shards: int) -> list[list[Seed]]:
    """Split seeds into ≤ ``num_shards`` groups; all seeds of one registered domain share a group (crc32)."""
    groups: dict[int, list[Seed]] = defaultdict(list)
    for s in seeds:
        groups[zlib.crc32(registered_domain(s.url).encode()) % max(1, num_shards)].append(s)
    return [groups[k] for k in sorted(groups)]


def crawl_shard(seeds: list[Seed], cfg: CrawlConfig, warc_dir: str, shard: int, offline: bool = False) -> CrawlResult:
    """Synchronous wrapper for a Ray task: run :func:`crawl_async` in a fresh event loop."""
    return asyncio.run(crawl_async(seeds, cfg, warc_dir, shard, offline))
