"""One crawl of a real aiohttp site where every path is a bad input; each case must end in a counted
reject with its reason (or a kept row after a retry), and the job must finish."""

from __future__ import annotations

import os

import pytest
from helpers import assert_funnel_balance, build, path_of, read_dir
from webserver import serve_bad_web

SEEDS_TEXT = "/index.html\n"


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("bad")
    seeds = tmp / "seeds.txt"
    seeds.write_text(SEEDS_TEXT)
    with serve_bad_web(slow_s=4.0) as url:
        funnel = build(tmp / "out", seeds=seeds, base_url=url, crawl={"max_redirects": 5})
        hits = dict(url.hits)
    rejects = read_dir(tmp / "out" / "rejects")
    kept = read_dir(tmp / "out" / "d_know")
    return {"funnel": funnel, "rejects": rejects, "kept": kept, "hits": hits, "out": tmp / "out"}


def _reasons(run, path):
    return {r["reason"] for r in run["rejects"] if path in (path_of(r["page_url"]), path_of(r["image_url"]))}


def _kept(run, image_path):
    return [r for r in run["kept"] if path_of(r["image_url"]) == image_path]


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/p/404.html", "http_404"),
        ("/p/500.html", "http_500"),
        ("/p/slow.html", "timeout"),
        ("/p/loop1.html", "redirect_loop"),
        ("/p/redirect/0.html", "too_many_redirects"),
        ("/private/secret.html", "robots_disallowed"),
        ("/p/big.html", "too_large"),
        ("/p/big-chunked.html", "too_large"),
        ("/p/garbage.html", "not_html"),
        ("/img/notimage.png", "content_type"),
        ("/img/truncated.png", "truncated"),
        ("/img/bomb.png", "decompression_bomb"),
        ("/img/huge.jpg", "too_large"),
        ("/img/huge-chunked.jpg", "too_large"),
        ("/img/vector.svg", "format_svg"),
        ("/img/404.png", "http_404"),
        ("/img/slow.png", "timeout"),
    ],
)
def test_bad_input_is_rejected_with_reason(bad_run, path, reason):
    assert reason in _reasons(bad_run, path), (path, _reasons(bad_run, path))


@pytest.mark.parametrize(
    "image_path, lang",
    [
        ("/img/ok.png", "hu"),
        ("/img/flakypage.png", "hu"),  # page: 500 once, then OK (retry)
        ("/img/ratelimited.png", "hu"),  # page: 429 + Retry-After, then OK
        ("/img/broken.png", "hu"),  # broken but recoverable HTML
        ("/img/flaky.png", "hu"),  # image: 503 once, then OK
        ("/img/cp1251.png", "ru"),  # windows-1251 declared in the HTTP header
        ("/img/cp1251-meta.png", "ru"),  # ... in <meta charset>
        ("/img/cp1251-nodecl.png", "ru"),  # ... not declared: detected
    ],
)
def test_recoverable_inputs_are_kept(bad_run, image_path, lang):
    rows = _kept(bad_run, image_path)
    assert len(rows) == 1 and rows[0]["lang"] == lang, rows


def test_windows_1251_alt_is_decoded(bad_run):
    for r in bad_run["kept"]:
        if r["lang"] == "ru":
            assert any("а" <= ch <= "я" for ch in r["alt_text"].lower()), r["alt_text"]
            assert "\ufffd" not in r["alt_text"]


def test_binary_links_are_not_crawled_as_pages(bad_run):
    # links ending in .pdf/.zip/... (CrawlConfig.skip_link_extensions) are never requested as pages
    assert bad_run["hits"].get("/p/document.pdf", 0) == 0


def test_retries_happened(bad_run):
    assert bad_run["hits"]["/p/flaky.html"] >= 2
    assert bad_run["hits"]["/img/flaky.png"] >= 2
    assert bad_run["hits"]["/p/500.html"] == 3  # 1 + max_retries


def test_exactly_the_good_rows_are_kept(bad_run):
    assert len(bad_run["kept"]) == 8
    assert bad_run["funnel"]["d_know_total"] == 8


def test_every_reject_has_stage_and_reason_and_no_bytes(bad_run):
    assert bad_run["rejects"]
    for r in bad_run["rejects"]:
        assert r["stage"] and r["reason"]
        assert r["image"] is None


def test_funnel_counts_add_up(bad_run):
    stages = bad_run["funnel"]["stages"]
    for s in stages:
        assert s["in"] - s["rejected"] == s["out"], s
    image_stages = [s for s in stages if s["unit"] == "images"]
    for a, b in zip(image_stages, image_stages[1:]):
        assert a["out"] == b["in"]
    assert image_stages[-1]["out"] == bad_run["funnel"]["d_know_total"]
    assert_funnel_balance(bad_run["funnel"])
    assert os.path.exists(bad_run["out"] / "funnel.json")


def test_private_address_refused_without_flag(tmp_path, ray_session):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(SEEDS_TEXT)
    with serve_bad_web() as url:
        funnel = build(tmp_path / "out", seeds=seeds, base_url=url, crawl={"allow_private_hosts": []})
        assert url.hits.get("/index.html", 0) == 0  # nothing was requested
    rejects = read_dir(tmp_path / "out" / "rejects")
    assert {r["reason"] for r in rejects} == {"private_address"}
    assert funnel["d_know_total"] == 0


def test_paper_seed_sites_offline_end_cleanly_with_every_host_counted(tmp_path, ray_session):
    """The 24 sites of paper Table 6 with no network: the job finishes, each host's failure counted."""
    from conftest import ROOT

    from mella.crawl import read_seeds
    from mella.urls import origin

    seeds = ROOT / "platform" / "mella" / "data" / "seeds" / "paper_sites.yaml"
    hosts = {origin(s.url) for s in read_seeds(str(seeds))}  # funnel hosts are origins (scheme://host[:port])
    assert len(hosts) == 24
    funnel = build(tmp_path / "out", seeds=seeds, crawl={"allow_private_hosts": [], "max_retries": 0})
    assert funnel["d_know_total"] == 0
    assert set(funnel["hosts"]) == hosts
    for host, v in funnel["hosts"].items():
        assert v["ok"] == 0 and sum(v["failed"].values()) >= 1, (host, v)
