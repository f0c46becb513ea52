"""Unit tests: SSRF guard, robots.txt, fetch limits against a real local server, WARC round trip."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime, timezone

import pytest
from webserver import serve_bad_web

from mella.config import CrawlConfig
from mella.net import AddressPolicy, Fetcher, FetchError
from mella.warc import RotatingWarcWriter, WarcIndex, cleanup_open_shards, iter_responses, slice_offsets


@pytest.mark.parametrize(
    "ip, allowed",
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("172.16.5.5", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fe80::1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
        ("2001:4860:4860::8888", True),
    ],
)
def test_address_policy_default_refuses_non_global(ip, allowed):
    assert AddressPolicy([]).permits(ip) is allowed


def test_address_policy_allow_list():
    p = AddressPolicy(["127.0.0.1", "10.0.0.0/8"])
    assert p.permits("127.0.0.1") and p.permits("10.9.9.9") and not p.permits("192.168.1.1")
    assert AddressPolicy(["*"]).permits("192.168.1.1")


def _fetch(url, cfg, kind="page"):
    async def go():
        async with Fetcher(cfg) as f:
            return await f.get(url, kind)

    return asyncio.run(go())


def test_hostname_resolving_to_loopback_is_refused():
    with serve_bad_web() as url:
        port = url.rsplit(":", 1)[1]
        with pytest.raises(FetchError) as e:
            _fetch(f"http://localhost:{port}/p/ok.html", CrawlConfig(politeness_delay_s=0))
        assert e.value.reason == "private_address"
        assert url.hits.get("/p/ok.html", 0) == 0


def test_fetch_limits_against_real_server():
    cfg = CrawlConfig(
        politeness_delay_s=0,
        allow_private_hosts=["127.0.0.1"],
        read_timeout_s=1,
        total_timeout_s=3,
        max_retries=1,
        backoff_base_s=0.01,
        max_page_bytes=1_000_000,
    )
    with serve_bad_web(slow_s=3) as url:
        assert _fetch(url + "/p/ok.html", cfg).status == 200
        for path, reason in [
            ("/p/404.html", "http_404"),
            ("/private/secret.html", "robots_disallowed"),
            ("/p/loop1.html", "redirect_loop"),
            ("/p/big.html", "too_large"),
            ("/p/slow.html", "timeout"),
            ("/p/document.pdf", "content_type"),
        ]:
            with pytest.raises(FetchError) as e:
                _fetch(url + path, cfg)
            assert e.value.reason == reason, (path, e.value)
        with pytest.raises(FetchError) as e:
            _fetch(url + "/img/notimage.png", cfg, kind="image")
        assert e.value.reason == "content_type"


def test_warc_roundtrip_index_and_atomic_shards(tmp_path):
    w = RotatingWarcWriter(str(tmp_path), "images", max_bytes=10**9)
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    w.write_response(
        "http://a.example/x.png",
        200,
        "OK",
        [("Content-Type", "image/png"), ("Content-Encoding", "gzip")],
        b"\x89PNGdata",
        now,
    )
    assert not list(tmp_path.glob("*.warc.gz")) and list(tmp_path.glob("*.open"))  # not visible until closed
    w.write_response("http://a.example/y.html", 404, "Not Found", [("Content-Type", "text/html")], b"nope", now)
    w.close()
    shards = sorted(tmp_path.glob("*.warc.gz"))
    assert len(shards) == 1 and not list(tmp_path.glob("*.open"))
    recs = list(iter_responses(str(shards[0])))
    assert [(r.url, r.status, r.body) for r in recs] == [
        ("http://a.example/x.png", 200, b"\x89PNGdata"),
        ("http://a.example/y.html", 404, b"nope"),
    ]
    assert recs[0].header("content-encoding") is None and recs[0].date == now
    idx = WarcIndex()
    idx.add_file(str(shards[0]))
    assert idx.get("http://a.example/x.png").body == b"\x89PNGdata" and "http://nope/" not in idx
    # a crash leaves only .open files, which cleanup removes
    w2 = RotatingWarcWriter(str(tmp_path), "pages")
    w2.write_response("http://a.example/", 200, "OK", [], b"x", now)
    assert cleanup_open_shards(str(tmp_path)) == 1
    assert len(list(tmp_path.glob("*.warc.gz"))) == 1 and os.listdir(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_warc_slices_read_the_file_exactly_once_and_survive_damage(tmp_path, gz):
    from mella.stages.filters.langid import LangIDConfig
    from mella.stages.io.extract import ExtractStage

    w = RotatingWarcWriter(str(tmp_path), "pages", gzip=gz)
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    for i in range(23):
        w.write_response(
            f"http://a.example/p{i}.html",
            200,
            "OK",
            [("Content-Type", "text/html")],
            f"<html lang=hu><p>{i}</p><img src=/i{i}.png alt='kép {i}'></html>".encode(),
            now,
        )
    w.close()
    (path,) = map(str, tmp_path.glob("pages-*.warc*"))
    whole = list(iter_responses(path))
    offsets = slice_offsets(path, 5)
    assert len(offsets) == 5 and offsets[0] == 0 and offsets == sorted(offsets)
    sliced = [[r for r in iter_responses(path, o, 5)] for o in offsets]
    assert [len(s) for s in sliced] == [5, 5, 5, 5, 3]
    assert [(r.url, r.offset) for s in sliced for r in s] == [(r.url, r.offset) for r in whole]
    assert slice_offsets(path, 100) == [0]
    with pytest.raises(ValueError):
        slice_offsets(path, 0)
    # a damaged file: sliced up to the damage; the extract stage counts it and keeps what it read
    cut = tmp_path / ("cut.warc.gz" if gz else "cut.warc")
    cut.write_bytes(open(path, "rb").read()[: offsets[2]] + b"garbage, not a WARC record\r\n\r\n" * 8)
    cut_offsets = slice_offsets(str(cut), 5)
    assert cut_offsets == offsets[:2]  # the damaged record would start the third slice: the last slice reads on
    crawl = CrawlConfig()
    stage = ExtractStage(["hu"], LangIDConfig(), crawl.ai_opt_out_directives, crawl.user_agent)
    stats = tmp_path / "stats"
    stats.mkdir()
    limits = [5] * (len(cut_offsets) - 1) + [None]  # as build_corpus reads slices: the last one to the end
    rows = [
        r
        for o, n in zip(cut_offsets, limits)
        for batch in stage.read(str(cut), "warc", str(stats), o, n)
        for r in batch
    ]
    assert {r["page_url"] for r in rows} == {f"http://a.example/p{i}.html" for i in range(10)}
    import json

    counts = [json.loads(p.read_text()) for p in stats.glob("pages-*.json")]
    assert sum(c.get("dropped:warc_unreadable", 0) for c in counts) == 1
    assert sum(c["pages_in"] for c in counts) == 10
    # not a WARC at all: one slice, counted, no rows, no exception
    junk = tmp_path / "junk.warc"
    junk.write_bytes(b"<html>this is not a WARC</html>")
    assert slice_offsets(str(junk), 5) == [0]
    assert not [r for batch in stage.read(str(junk), "warc", str(stats), 0, 5) for r in batch]
