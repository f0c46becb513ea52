"""Issue 17 end to end: build_corpus on the crawler web (``webserver.serve_crawler_web``), then a rerun of
the finished output, then a rerun with ``retry_failed``, all against the same live server."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest
from helpers import build, path_of, read_dir
from webserver import GALLERY_ALTS, SLOW_PAGE_IMAGES, serve_crawler_web

pytestmark = pytest.mark.slow  # three builds of one site (~1 min each on 2 busy cores)

DEADLINE = 5.0
CRAWL = {"url_deadline_s": DEADLINE, "total_timeout_s": 3.0, "read_timeout_s": 1.5, "max_retries": 2, "max_depth": 3}
RAY = {
    "image_pool": {"batch_size": 4, "pool_size": 2},
    "records_per_slice": 1,
}  # one page a block: the slow pages apart


@pytest.fixture(scope="module")
def web(tmp_path_factory, ray_session):
    tmp = tmp_path_factory.mktemp("crawlerweb")
    seeds = tmp / "seeds.txt"
    seeds.write_text("/index.html\n")
    out = tmp / "out"
    with serve_crawler_web() as url:
        funnel = build(out, seeds=seeds, base_url=url, crawl=CRAWL, ray=RAY)
        page_files = len(list((out / "warc").glob("pages-*.warc.gz")))
        first = Counter(url.hits_qs)
        times = {k: list(v) for k, v in url.times.items()}
        kept, rejects = read_dir(out / "d_know"), read_dir(out / "rejects")
        timing = json.loads((out / "stage_stats.json").read_text())
        funnel2 = build(out, seeds=seeds, base_url=url, crawl=CRAWL, ray=RAY)
        second = Counter(url.hits_qs) - first
        kept2 = read_dir(out / "d_know")
        before_retry = Counter(url.hits_qs)
        build(out, seeds=seeds, base_url=url, crawl={**CRAWL, "retry_failed": True}, ray=RAY)
        third = Counter(url.hits_qs) - before_retry
    return {
        "url": url,
        "funnel": funnel,
        "page_files": page_files,
        "timing": timing,
        "kept": kept,
        "rejects": rejects,
        "hits": first,
        "times": times,
        "funnel2": funnel2,
        "rerun_hits": second,
        "kept2": kept2,
        "retry_hits": third,
    }


def _kept(web, path):
    return [r for r in web["kept"] if path_of(r["image_url"]) == path]


def _reasons(web, path):
    return sorted(r["reason"] for r in web["rejects"] if path in (path_of(r["page_url"]), path_of(r["image_url"])))


def _stage(web, name):
    return next(s for s in web["funnel"]["stages"] if s["stage"] == name)


def test_robots_wildcards_no_disallowed_request_allowed_ones_fetched(web):
    hits = web["hits"]
    for path in ("/photo.png", "/photo2.jpg.png", "/index.html?sid=12345", "/private/secret.html"):
        assert hits.get(path, 0) == 0, path
        assert "robots_disallowed" in _reasons(web, path), path
    assert hits["/private/public.html"] == 1 and len(_kept(web, "/img/public.png")) == 1  # Allow override
    assert hits["/img/robots-ok.png"] == 1 and len(_kept(web, "/img/robots-ok.png")) == 1  # Allow: /img/*.png$


def test_srcset_data_and_cdn_candidates_arrive_as_rows(web):
    data = [r for r in web["kept"] if r["image_url"].startswith("data:image/png;sha256,") and r["width"] == 607]
    assert len(data) == 1 and data[0]["height"] == 472 and data[0]["lang"] == "hu"
    assert data[0]["image_url"].endswith(hashlib.sha256(data[0]["image"]).hexdigest())
    assert len(_kept(web, "/cdn/w_800,h_600/photo.jpg")) == 1
    assert web["hits"].get("/cdn/w_400,h_300/photo.jpg", 0) == 0 and web["hits"].get("/img/srcset-lo.png", 0) == 0
    assert not [p for p in web["hits"] if "iVBOR" in p]  # no data: payload requested as a path


def test_picture_source_used_and_skipped_sources_counted(web):
    assert len(_kept(web, "/img/picture.png")) == 1
    assert web["hits"].get("/img/fallback.png", 0) == 0 and web["hits"].get("/img/x.avif", 0) == 0
    assert _stage(web, "extract")["dropped"]["picture_source_skipped"] == 2


def test_data_image_kept_and_malformed_one_counted(web):
    on_page = [r for r in web["kept"] if path_of(r["page_url"]) == "/p/data.html"]
    assert len(on_page) == 1 and on_page[0]["image_url"].startswith("data:image/png;sha256,")
    assert _stage(web, "fetch")["reasons"].get("data_uri_invalid") == 1


def test_ai_opt_outs_give_no_rows_and_are_counted(web):
    for page in ("/p/optout-xrobots.html", "/p/optout-meta.html", "/p/optout-tdm.html", "/p/reserved/page.html"):
        assert _reasons(web, page) == ["ai_opt_out"], page
        assert not [r for r in web["kept"] if path_of(r["page_url"]) == page]
    for n in range(1, 5):
        assert web["hits"].get(f"/img/optout-page-{n}.png", 0) == 0
    for img in ("/img/optout-xrobots.png", "/img/optout-tdm.png", "/img/reserved/r.jpg"):
        assert _reasons(web, img) == ["ai_opt_out"], img
    assert web["hits"].get("/img/reserved/r.jpg", 0) == 0
    assert len(_kept(web, "/img/otherbot.png")) == 1  # "otherbot: noai" is not addressed to us
    assert _stage(web, "extract")["reasons"]["ai_opt_out"] == 3
    assert _stage(web, "crawl")["reasons"]["ai_opt_out"] == 1
    assert _stage(web, "fetch")["reasons"]["ai_opt_out"] == 3


def test_caption_cap_and_alt_cap(web):
    assert len(_kept(web, "/img/gallery.png")) == 3
    assert _reasons(web, "/img/gallery.png") == ["too_many_captions"] * (GALLERY_ALTS - 3)
    assert _stage(web, "exact_dedup")["reasons"]["too_many_captions"] == GALLERY_ALTS - 3
    long = [r for r in web["rejects"] if path_of(r["image_url"]) == "/img/longalt.png"]
    assert [r["reason"] for r in long] == ["alt_too_long"] and len(long[0]["alt_text"]) == 1000


def test_slow_image_delays_others_by_at_most_its_deadline(web):
    times = web["times"]
    assert _reasons(web, "/img/drip.png") == ["timeout"]
    assert len(times["/img/drip.png"]) <= 2  # a timeout is retried at most once
    others = [times[f"/img/s{i}.png"][0] for i in range(SLOW_PAGE_IMAGES)]
    assert times["/img/drip.png"][-1] - times["/img/drip.png"][0] < DEADLINE  # the retry starts inside the deadline
    assert max(others) - times["/img/drip.png"][0] < DEADLINE + 4.0
    assert all(len(_kept(web, f"/img/s{i}.png")) == 1 for i in range(SLOW_PAGE_IMAGES))


def test_slow_images_in_one_warc_file_do_not_queue_behind_each_other(web):
    # /p/slow.html and /p/slow2.html are in the crawl's one page WARC file; their slices are separate blocks, so
    # the two dripping images are fetched at once, not one deadline after the other (one block: one actor, in turn)
    assert web["page_files"] == 1
    t1, t2 = web["times"]["/img/drip.png"][0], web["times"]["/img/drip2.png"][0]
    assert abs(t2 - t1) < DEADLINE / 2, (t1, t2)
    assert _reasons(web, "/img/drip2.png") == ["timeout"]
    assert len(_kept(web, "/img/s2-0.png")) == 1


def test_a_dripping_page_ends_within_its_deadline(web):
    # the crawl's tail is bounded by the per-URL deadline (not retries x timeouts), and the host is reported
    times = web["times"]["/p/drip.html"]
    assert _reasons(web, "/p/drip.html") == ["timeout"]
    assert len(times) <= 2 and times[-1] - times[0] < DEADLINE
    assert web["timing"]["crawl"]["slowest_hosts"][0]["seconds"] >= DEADLINE - 1


def test_urls_normalised_once(web):
    assert web["hits"]["/p/norm.html"] == 1  # linked six ways
    assert {path_of(r["page_url"]) for r in web["kept"] if "norm" in r["page_url"]} == {"/p/norm.html"}


def test_hosts_by_origin_cut_offs_and_slowest_hosts(web):
    f = web["funnel"]
    assert set(f["hosts"]) == {web["url"]}
    assert f["hosts"][web["url"]]["cut_off"]["max_depth"] >= 1 and web["hits"].get("/p/deep/5.html", 0) == 0
    assert _stage(web, "crawl")["cut_off"]["max_depth"] >= 1
    assert web["timing"]["crawl"]["slowest_hosts"][0]["host"] == web["url"]  # timings: stage_stats.json
    assert "http_404" in _reasons(web, "/p/404.html") and "http_404" in _reasons(web, "/img/404.png")


def test_rerun_of_finished_output_makes_zero_requests(web):
    assert sum(web["rerun_hits"].values()) == 0, web["rerun_hits"]
    assert web["funnel2"]["d_know_total"] == web["funnel"]["d_know_total"]
    assert sorted(r["id"] for r in web["kept2"]) == sorted(r["id"] for r in web["kept"])


def test_retry_failed_refetches_transient_failures_only(web):
    hits = web["retry_hits"]
    assert hits["/p/500.html"] >= 1 and hits["/img/drip.png"] >= 1, hits
    for permanent in ("/p/404.html", "/img/404.png", "/photo.png", "/index.html?sid=12345", "/img/reserved/r.jpg"):
        assert hits.get(permanent, 0) == 0, permanent
