"""Issue 17, fast pieces (no Ray): URL normalisation, WHATWG srcset, AI opt-out parsing, the retry
helper, robots.txt (RFC 9309 wildcards, a 10 MB file, one fetch per origin), TDMRep, the failure log,
max_pages cut-offs, and the decode pixel budget."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time

import pytest
from PIL import Image
from webserver import serve_crawler_web

from mella.crawl import Seed, crawl_async
from mella.net import CrawlConfig, Fetcher, FetchError
from mella.optout import header_opt_out, meta_opt_out, parse_tdmrep, tdmrep_reserved
from mella.retry import Retryable, RetryPolicy, parse_retry_after, retry_async
from mella.stages.io.extract import data_image, parse_srcset
from mella.urls import normalise_url, origin
from mella.warc import FailureLog

CFG = dict(
    politeness_delay_s=0.0,
    read_timeout_s=1.5,
    total_timeout_s=3.0,
    connect_timeout_s=2.0,
    max_retries=2,
    backoff_base_s=0.05,
    backoff_max_s=1.0,
    allow_private_hosts=["127.0.0.1"],
)


@pytest.mark.parametrize(
    "base, href, expected",
    [
        ("http://EXAMPLE.com:80/a/b.html", "../x y.png#frag", "http://example.com/x%20y.png"),
        ("https://example.com:443/", "/p", "https://example.com/p"),
        ("http://ｅｘａｍｐｌｅ．ｃｏｍ/", "/a", "http://example.com/a"),  # full-width host: UTS #46 mapping
        ("http://bücher.de/", "/a", "http://xn--bcher-kva.de/a"),
        ("http://a.com/", "/%7euser/%41", "http://a.com/~user/A"),  # unreserved characters decoded
        ("http://a.com/", " /p/no\trm.html\n ", "http://a.com/p/norm.html"),  # WHATWG: strip, drop tab/newline
        ("http://a.com/x/", "//b.com/y", "http://b.com/y"),
        ("http://a.com/", "/cdn/w_800,h_600/x.png", "http://a.com/cdn/w_800,h_600/x.png"),
        ("http://a.com/", "#top", None),
        ("http://a.com/", "mailto:x@a.com", None),
        ("http://a.com/", "data:,x", None),
        ("http://a.com/", "javascript:void(0)", None),
        ("http://a.com/", "", None),
        ("http://a.com/", "http://[bad", None),
    ],
)
def test_normalise_url(base, href, expected):
    assert normalise_url(base, href) == expected


def test_origin_keeps_port_drops_default():
    assert origin("http://127.0.0.1:8080/a") == "http://127.0.0.1:8080"
    assert origin("https://example.com/a") == "https://example.com"


@pytest.mark.parametrize(
    "value, expected",
    [
        (
            "lo.png 1x, data:image/png;base64,iVBORw0K== 2x",
            [("lo.png", None, 1.0), ("data:image/png;base64,iVBORw0K==", None, 2.0)],
        ),
        (
            "/cdn/w_800,h_600/x.png 800w, /cdn/w_400,h_300/x.png 400w",
            [("/cdn/w_800,h_600/x.png", 800.0, None), ("/cdn/w_400,h_300/x.png", 400.0, None)],
        ),
        ("a.png, b.png 2x,", [("a.png", None, None), ("b.png", None, 2.0)]),  # a trailing comma ends a URL
        ("a.png,b.png 2x", [("a.png,b.png", None, 2.0)]),  # commas inside a URL are the URL's
        ("a.png 100w 2x, b.png 0w, c.png -1x, d.png (x y) 1x, e.png 3x", [("e.png", None, 3.0)]),  # invalid dropped
        ("  ,, ", []),
    ],
)
def test_parse_srcset_whatwg(value, expected):
    assert parse_srcset(value) == expected


def test_data_image_digest_and_errors():
    key, data, err = data_image("data:image/png;base64,iVBORw0KGgo=")
    assert err is None and data == b"\x89PNG\r\n\x1a\n" and key.startswith("data:image/png;sha256,")
    assert data_image("data:image/png;base64,iVBORw0KGgo=")[0] == key  # stable
    assert data_image("data:image/png;base64,@@@")[2] == "data_uri_invalid"
    assert data_image("data:image/png;base64," + "A" * 4000, max_bytes=100)[2] == "data_uri_too_large"


def test_lazy_loading_placeholders_lose_to_real_urls():
    from mella.stages.io.extract import parse_page

    html = (
        "<html lang=ru><body><picture><source srcset='data:image/webp;base64,UklGRh4AAABXRUJQ' "
        "data-lazyimage-srcset='/a-big.webp 1380w, /a-small.webp 420w' type='image/webp'>"
        "<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw=' alt='один'></picture>"
        "<img src='data:image/gif;base64,R0lGODlhAQABAAAAACw=' data-lazyimage-src='/b.jpg' alt='два'>"
        "<img srcset='lo.png 1x, data:image/png;base64,iVBORw0KGgo= 2x' alt='три'></body></html>"
    ).encode()
    imgs = parse_page("http://h.test/p/", html, []).images
    assert [i.image_url for i in imgs[:2]] == ["http://h.test/a-big.webp", "http://h.test/b.jpg"]
    assert imgs[2].image_url == "http://h.test/p/lo.png"  # a data: placeholder (8 bytes) never displaces a URL


def test_opt_out_parsing():
    ua = "MELLA-corpus-builder/0.1 (+https://example.org)"
    assert header_opt_out([("X-Robots-Tag", "noai, noimageai")], user_agent=ua) == "X-Robots-Tag: noai"
    assert header_opt_out([("X-Robots-Tag", "otherbot: noai")], user_agent=ua) is None
    assert header_opt_out([("X-Robots-Tag", "mella-corpus-builder: noimageai")], user_agent=ua)
    assert header_opt_out([("X-Robots-Tag", "noindex")], directives=("noai",), user_agent=ua) is None  # configurable
    assert header_opt_out([("X-Robots-Tag", "unavailable_after: 25 Jun 2010 15:00:00 PST")], user_agent=ua) is None
    assert header_opt_out([("tdm-reservation", "1")]) == "tdm-reservation: 1"
    assert header_opt_out([("tdm-reservation", "0")]) is None
    assert meta_opt_out([("robots", "index, noimageai")], user_agent=ua)
    assert meta_opt_out([("robots", "max-image-preview:large")], user_agent=ua) is None
    rules = parse_tdmrep(
        b'[{"location": "/img/*.jpg$", "tdm-reservation": 1}, {"location": "/", "tdm-reservation": 0}]'
    )
    assert tdmrep_reserved(rules, "/img/a/b.jpg") and not tdmrep_reserved(rules, "/img/a.jpg?x=1")
    assert not tdmrep_reserved(rules, "/p/x.html") and parse_tdmrep(b"not json") == []


def test_retry_helper_deadline_timeouts_and_retry_after():
    calls: list[float] = []

    async def timing_out(n, left):
        calls.append(time.monotonic())
        raise Retryable(TimeoutError("slow"), timeout=True)

    # timeouts retried at most once, even with retries left
    with pytest.raises(TimeoutError):
        asyncio.run(retry_async(timing_out, RetryPolicy(retries=5, backoff_base_s=0.01, max_timeout_retries=1)))
    assert len(calls) == 2
    # the deadline bounds the whole call: no sleep that would pass it is begun
    calls.clear()

    async def server_error(n, left):
        calls.append(left)
        raise Retryable(RuntimeError("503"), retry_after=0.3)

    t0 = time.monotonic()
    with pytest.raises(RuntimeError):
        asyncio.run(retry_async(server_error, RetryPolicy(retries=10, backoff_max_s=5, deadline_s=1.0)))
    assert time.monotonic() - t0 < 1.0 and 2 <= len(calls) <= 4 and calls[1] < calls[0]
    assert parse_retry_after("2") == 2.0 and parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


def _fetch_all(cfg, urls, kind="page", failures=None):
    async def go():
        out = []
        async with Fetcher(cfg, failures=failures) as f:
            for u in urls:
                try:
                    out.append(await f.get(u, kind))
                except FetchError as e:
                    out.append(e)
        return out

    return asyncio.run(go())


def test_robots_rfc9309_wildcards_allow_overrides_and_one_fetch_per_origin():
    with serve_crawler_web() as url:
        port = url.rsplit(":", 1)[1]
        res = _fetch_all(
            CrawlConfig(**CFG),
            [
                url + "/photo.png",
                url + "/photo2.jpg.png",
                url + "/index.html?sid=12345",
                url + "/private/secret.html",
                url + "/private/public.html",
                url + "/p/norm.html",
                f"HTTP://127.0.0.1:{port}/p/./norm.html#x",
            ],
        )
        hits, hits_qs = dict(url.hits), dict(url.hits_qs)
    assert [getattr(r, "reason", None) for r in res[:4]] == ["robots_disallowed"] * 4
    assert all(getattr(r, "status", None) == 200 for r in res[4:])
    assert hits.get("/photo.png", 0) == hits.get("/photo2.jpg.png", 0) == hits.get("/private/secret.html", 0) == 0
    assert hits_qs.get("/index.html?sid=12345", 0) == 0
    assert hits["/robots.txt"] == 1 and hits["/private/public.html"] == 1
    assert hits["/p/norm.html"] == 2  # fetched twice (no cache here), robots.txt once for both spellings


def test_ten_megabyte_robots_txt_is_parsed_to_500_kib_not_an_error():
    with serve_crawler_web(robots_pad_bytes=10 * 2**20) as url:
        res = _fetch_all(CrawlConfig(**CFG), [url + "/p/norm.html", url + "/photo.png"], "page")
        hits = dict(url.hits)
    assert res[0].status == 200  # the Disallow beyond 10 MB is not seen; the host is not blocked
    assert res[1].reason == "robots_disallowed"  # rules within the first 500 KiB hold
    assert hits["/robots.txt"] == 1


def test_tdmrep_json_reserved_path_is_never_requested():
    with serve_crawler_web() as url:
        res = _fetch_all(CrawlConfig(**CFG), [url + "/p/reserved/page.html", url + "/img/reserved/r.jpg"], "image")
        hits = dict(url.hits)
    assert [r.reason for r in res] == ["ai_opt_out", "ai_opt_out"]
    assert hits.get("/p/reserved/page.html", 0) == hits.get("/img/reserved/r.jpg", 0) == 0
    assert hits["/.well-known/tdmrep.json"] == 1


def test_failure_log_remembers_permanent_and_transient_until_retry_failed(tmp_path):
    cfg = CrawlConfig(**{**CFG, "max_retries": 0})
    with serve_crawler_web() as url:
        urls = [url + "/p/404.html", url + "/p/500.html", url + "/p/norm.html"]
        first = _fetch_all(cfg, urls, failures=FailureLog(str(tmp_path), "t"))
        before = dict(url.hits)
        again = _fetch_all(cfg, urls, failures=FailureLog(str(tmp_path), "t"))
        mid = dict(url.hits)
        _fetch_all(cfg, urls, failures=FailureLog(str(tmp_path), "t", retry_failed=True))
        after = dict(url.hits)
    assert [getattr(r, "reason", 200) for r in first] == ["http_404", "http_500", 200]
    assert [getattr(r, "reason", 200) for r in again] == ["http_404", "http_500", 200]
    assert again[0].detail.startswith("remembered:")
    assert mid["/p/404.html"] == before["/p/404.html"] == 1 and mid["/p/500.html"] == before["/p/500.html"]
    assert after["/p/500.html"] == before["/p/500.html"] + 1  # transient: refetched with retry_failed
    assert after["/p/404.html"] == 1  # permanent: never again
    assert [f for f in os.listdir(tmp_path) if f.startswith("failures-")]


def test_url_deadline_is_enforced_inside_the_fetcher(tmp_path):
    """The per-URL deadline (2 s) ends a response that drips 1 byte / 0.2 s even though the per-request total
    timeout (30 s) and the socket read timeout (20 s) would let it run on: a recorded ``timeout`` within the
    deadline (plus a margin for robots.txt/tdmrep and a busy machine), the request not retried after it."""
    deadline = 2.0
    cfg = CrawlConfig(
        **{
            **CFG,
            "total_timeout_s": 30.0,
            "read_timeout_s": 20.0,
            "url_deadline_s": deadline,
            "max_retries": 3,
            "max_timeout_retries": 1,
        }
    )
    log = FailureLog(str(tmp_path), "t")
    with serve_crawler_web(drip_s=60.0) as url:
        t0 = time.monotonic()
        [res] = _fetch_all(cfg, [url + "/img/drip.png"], "image", failures=log)
        elapsed = time.monotonic() - t0
        hits = url.hits["/img/drip.png"]
    log.close()
    assert isinstance(res, FetchError) and res.reason == "timeout", res
    assert "per-URL deadline" in res.detail  # the deadline fired, not the (30 s) request timeout
    assert elapsed < deadline + 4.0, elapsed
    assert 1 <= hits <= 2  # a timeout is retried at most once, and never after the deadline is spent
    rec = log.remembered(url + "/img/drip.png")
    assert rec["reason"] == "timeout" and rec["transient"]  # counted: in the failure log, as transient


def _rerun_fetch(cfg, warc_dir, urls, retry_failed=False):
    """One run over ``warc_dir`` wired as the image fetch stage and the crawler are: a WARC writer, the
    recorded responses as cache, the failure log beside them. Returns each URL's reason (or its status)."""
    from mella.warc import RotatingWarcWriter, WarcIndex, shard_paths

    cfg = cfg.model_copy(update={"retry_failed": retry_failed})

    async def go():
        cache = WarcIndex()
        for p in shard_paths(warc_dir, "images"):
            cache.add_file(p)
        writer = RotatingWarcWriter(warc_dir, "images", gzip=False)
        failures = FailureLog(warc_dir, "images", retry_failed=retry_failed)
        out = []
        try:
            async with Fetcher(cfg, warc=writer, cache=cache, failures=failures) as f:
                for u, kind in urls:
                    try:
                        out.append((await f.get(u, kind)).status)
                    except FetchError as e:
                        out.append(e.reason)
        finally:
            writer.close()
            failures.close()
        return out

    return asyncio.run(go())


def test_failures_without_a_warc_record_are_not_refetched_on_rerun(tmp_path):
    """A rerun over the same output makes no request for a permanent failure that left no WARC record (too
    large by Content-Length, too large while streaming: the body is never written), so only the failure log
    can remember it; a transient one without a record (a timeout) is asked again only with ``retry_failed``.
    (404/500 answers are WARC records, so the end-to-end rerun test alone would not show this.)"""
    from webserver import serve_bad_web

    cfg = CrawlConfig(**{**CFG, "max_retries": 0, "max_image_bytes": 2**20, "max_page_bytes": 2**20})
    warc_dir = str(tmp_path / "warc")
    with serve_bad_web(slow_s=4.0, big_html_bytes=2 * 2**20, huge_image_bytes=2 * 2**20, bomb_side=1000) as url:
        urls = [
            (url + "/img/huge.jpg", "image"),
            (url + "/img/huge-chunked.jpg", "image"),
            (url + "/p/big-chunked.html", "page"),
            (url + "/img/slow.png", "image"),
            (url + "/img/ok.png", "image"),
        ]
        first = _rerun_fetch(cfg, warc_dir, urls)
        before = dict(url.hits)
        again = _rerun_fetch(cfg, warc_dir, urls)
        mid = dict(url.hits)
        retried = _rerun_fetch(cfg, warc_dir, urls, retry_failed=True)
        after = dict(url.hits)
    assert first == ["too_large", "too_large", "too_large", "timeout", 200]
    assert again == first and retried == first
    assert all(
        before[p] == 1
        for p in (
            "/img/huge.jpg",
            "/img/huge-chunked.jpg",
            "/p/big-chunked.html",
            "/img/slow.png",
            "/img/ok.png",
            "/robots.txt",
        )
    )
    assert mid == before  # rerun: zero requests (robots.txt and ok.png from the WARC, failures from the log)
    diff = {p: after[p] - mid.get(p, 0) for p in after if after[p] != mid.get(p, 0)}
    assert diff == {"/img/slow.png": 1}  # retry_failed: only the transient failure is asked again


def test_max_pages_cut_off_counted_per_origin(tmp_path):
    with serve_crawler_web() as url:
        res = asyncio.run(
            crawl_async([Seed(url + "/index.html")], CrawlConfig(**{**CFG, "max_pages": 3}), str(tmp_path / "warc"))
        )
    host = res.hosts[url]
    assert res.pages_ok + len(res.failures) == 3
    assert host["cut_off"]["max_pages"] >= 10 and set(res.hosts) == {url}


def test_decode_pixel_budget_bounds_memory(tmp_path):
    """A 5000 x 5000 JPEG decoded with a 2 MP budget uses far less memory than without one (subprocess peak RSS).

    Peak RSS is the child's own VmHWM (/proc/self/status, reset at exec), compared between two fresh
    processes that import the same modules, so the difference is the decode's (a full decode holds >= 75 MB
    of RGB plus the bytes it hashes; the budgeted one a 1/4-scale draft). ``getrusage``'s ``ru_maxrss`` is no good
    here: Linux keeps it across fork + exec, so the child reported the pytest process's 1 GB peak.
    """
    path = tmp_path / "big.jpg"
    Image.new("RGB", (5000, 5000), (30, 120, 200)).save(path, quality=80)
    code = (
        "import re, sys\n"
        "from mella.stages.filters.decode import DecodeConfig, decode_image\n"
        "d = open(sys.argv[1], 'rb').read()\n"
        "out = decode_image(d, DecodeConfig(decode_max_pixels=int(sys.argv[2])))\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
        "print(out['width'], out['height'], hwm)\n"
    )

    def run(budget: int) -> tuple[int, int, int]:
        out = subprocess.run(
            [sys.executable, "-c", code, str(path), str(budget)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ},
        ).stdout.split()
        return tuple(int(x) for x in out)

    w, h, small = run(2_000_000)
    w2, h2, full = run(100_000_000)
    assert (w, h) == (w2, h2) == (5000, 5000)  # sizes are the file's
    assert full - small > 60 * 1024, (small, full)  # KiB: the unbudgeted decode's extra peak is >= 60 MiB


def test_decode_budget_keeps_small_images_exact():
    from mella.config import FilterConfig
    from mella.stages.filters.decode import decode_image

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (1, 2, 3)).save(buf, "PNG")
    a = decode_image(buf.getvalue(), FilterConfig())
    b = decode_image(buf.getvalue(), FilterConfig(decode_max_pixels=10**9))
    assert a == b


def test_image_fetch_stage_serves_concurrent_batches_from_one_loop(tmp_path):
    """The image pool runs ``batches_per_actor`` batches of one fetch stage at once, from several threads: every
    batch gets its images, and each WARC shard holds whole records (a replay serves every image)."""
    import hashlib
    import threading

    from conftest import DEMO_WEB
    from webserver import serve_directory

    from mella.stages.io.fetch import ImageFetchStage
    from mella.warc import WarcIndex, shard_paths

    paths = sorted(p.relative_to(DEMO_WEB).as_posix() for p in DEMO_WEB.rglob("*.png"))[:48]
    assert len(paths) == 48
    warc = tmp_path / "warc"
    warc.mkdir()
    with serve_directory(DEMO_WEB) as url:
        batches = [[{"image_url": f"{url}/{p}", "reason": None} for p in paths[i::4]] for i in range(4)]
        stage = ImageFetchStage(CrawlConfig(**CFG), str(warc), [], concurrency=8)
        with stage:
            threads = [threading.Thread(target=stage.process, args=(b,)) for b in batches]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert stage.helper_cpu_s() > 0
    rows = [r for b in batches for r in b]
    assert all(
        r.get("reason") is None
        and r["sha256"] == hashlib.sha256((DEMO_WEB / r["image_url"].split("/", 3)[3]).read_bytes()).hexdigest()
        for r in rows
    )
    index = WarcIndex()
    for p in shard_paths(str(warc), "images"):
        index.add_file(p)
    assert all(r["image_url"] in index for r in rows)
