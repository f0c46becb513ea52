"""build_corpus end to end on real pages: the miniweb (live crawl and WARC replay), a real Common
Crawl excerpt, and the bundled demo web; output schema and loadability."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DEMO_WEB, MINIWEB, needs_miniweb
from helpers import assert_funnel_balance, build, decisions, pair_keys, path_of, read_dir
from oracle import recall
from webserver import serve_directory

from mella.funnel import counter_disagreements
from mella.schema import RECORD_SCHEMA, REJECT_SCHEMA

pytestmark = [pytest.mark.slow]

# real pages, not timeout tests: generous limits so a loaded CI machine does not turn into fetch timeouts
PATIENT = {"read_timeout_s": 30.0, "total_timeout_s": 90.0, "connect_timeout_s": 10.0, "max_depth": 0}


@pytest.fixture(scope="module")
def miniweb_run(tmp_path_factory, ray_session):
    if not (MINIWEB / "seeds.txt").exists():
        pytest.skip("../shared/miniweb not present")
    out = tmp_path_factory.mktemp("miniweb") / "out"
    with serve_directory(MINIWEB) as url:
        funnel = build(out, seeds=MINIWEB / "seeds.txt", base_url=url, crawl=PATIENT, models=True)
        yield {"out": out, "url": url, "funnel": funnel}


@needs_miniweb()
def test_miniweb_funnel_balances_at_every_stage(miniweb_run):
    assert_funnel_balance(miniweb_run["funnel"])


@needs_miniweb()
def test_miniweb_recall_of_expected_pairs(miniweb_run):
    r, missing = recall(str(miniweb_run["out"]), str(MINIWEB / "PAIRS_expected.tsv"), str(miniweb_run["url"]))
    assert r >= 0.95, missing


@needs_miniweb()
def test_miniweb_decisions_equal_recorded_fixture(miniweb_run):
    """Issue 11: the stage-contract refactor kept behaviour — every kept row and every reject reason
    of the miniweb build equals the fixture recorded before it (``tests/record_decisions.py``)."""
    expected = (Path(__file__).parent / "data" / "miniweb_decisions.tsv").read_text(encoding="utf-8").splitlines()
    got = decisions(miniweb_run["out"])
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]}, extra {extra[:10]}"
    assert len(got) == len(expected)


@needs_miniweb()
def test_miniweb_stage_counters_agree_with_funnel(miniweb_run):
    """stage_stats.json (the runners' counters) and funnel.json (counted from the output) agree for every image stage,
    the model stages and the dedup stages included."""
    timing = json.loads((miniweb_run["out"] / "stage_stats.json").read_text())
    assert counter_disagreements(miniweb_run["funnel"], timing) == []


def test_miniweb_no_thai_or_vietnamese_rows(miniweb_run):
    langs = {r["lang"] for r in read_dir(miniweb_run["out"] / "d_know", ["lang"])}
    assert "th" not in langs and "vi" not in langs
    assert {"ar", "cs", "hu", "ko", "ru", "sr"} <= langs


@needs_miniweb()
def test_news_html_only_images_fail_cleanly_and_are_counted(miniweb_run):
    rejects = read_dir(miniweb_run["out"] / "rejects")
    news = [r for r in rejects if "/news-html-only/" in (r["page_url"] or "") and r["stage"] == "fetch"]
    assert news, "off-site images of news-html-only pages must be counted as fetch rejects"
    assert all(r["reason"] for r in news)
    assert not any("/news-html-only/" in r["page_url"] for r in read_dir(miniweb_run["out"] / "d_know", ["page_url"]))


@needs_miniweb()
def test_output_schema_and_datasets_loading(miniweb_run):
    out = miniweb_run["out"]
    files = sorted(glob.glob(str(out / "d_know" / "*.parquet")))
    assert files
    for f in files:
        assert pq.read_schema(f).equals(RECORD_SCHEMA, check_metadata=False)
    for f in glob.glob(str(out / "rejects" / "*.parquet")):
        assert pq.read_schema(f).equals(REJECT_SCHEMA, check_metadata=False)
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == miniweb_run["funnel"]["d_know_total"]
    row = ds[0]
    for col in (
        "id",
        "lang",
        "page_url",
        "image_url",
        "alt_text",
        "width",
        "height",
        "format",
        "image",
        "sha256",
        "lid_lang",
        "lid_prob",
        "source",
        "fetched_at",
    ):
        assert col in row
    assert row["width"] > 256 and row["height"] > 256 and row["source"] == "crawl"
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["d_know_total"] == len(ds)
    # every fetched response was recorded for replay
    assert glob.glob(str(out / "warc" / "pages-*.warc.gz")) and glob.glob(str(out / "warc" / "images-*.warc"))


@needs_miniweb()
def test_rerun_is_idempotent(miniweb_run):
    before = pair_keys(miniweb_run["out"])
    n_files = len(glob.glob(str(miniweb_run["out"] / "d_know" / "*.parquet")))
    url = miniweb_run["url"]
    hits_before = sum(url.hits.values())
    build(miniweb_run["out"], seeds=MINIWEB / "seeds.txt", base_url=url, crawl=PATIENT, models=True)
    assert sum(url.hits.values()) == hits_before  # pages and images all came from the recorded WARCs
    assert pair_keys(miniweb_run["out"]) == before
    assert len(glob.glob(str(miniweb_run["out"] / "d_know" / "*.parquet"))) == n_files


@needs_miniweb()
def test_warc_replay_offline_matches_live_crawl(miniweb_run, tmp_path):
    warc = MINIWEB / "warc" / "miniweb-local-capture.warc.gz"
    funnel = build(tmp_path / "out", warc=[warc], offline=True, models=True)
    replay = pair_keys(tmp_path / "out")
    assert replay and funnel["d_know_total"] == len(replay)
    pages = {k[1] for k in replay} | {
        path_of(r["page_url"]) for r in read_dir(tmp_path / "out" / "rejects", ["page_url"])
    }
    live = {k for k in pair_keys(miniweb_run["out"]) if k[1] in pages}
    assert replay <= live
    # live rows the replay lacks are exactly those whose image the capture did not record
    missing_images = {
        path_of(r["image_url"]) for r in read_dir(tmp_path / "out" / "rejects") if r["reason"] == "not_in_warc"
    }
    assert {k[2] for k in live - replay} <= missing_images
    assert all(r["source"] == "warc" for r in read_dir(tmp_path / "out" / "d_know", ["source"]))


@needs_miniweb()
def test_common_crawl_excerpt_completes_and_counts_other_languages(tmp_path, ray_session):
    warc = MINIWEB / "warc" / "cc-sample-resiliparse.warc.gz"
    funnel = build(tmp_path / "out", warc=[warc], offline=True)
    extract = next(s for s in funnel["stages"] if s["stage"] == "extract")
    assert extract["in"] == 16
    assert extract["reasons"].get("page_lang_not_target", 0) >= 8
    rejects = read_dir(tmp_path / "out" / "rejects")
    other = {r["lang"] for r in rejects if r["reason"] == "page_lang_not_target"}
    assert other and not other & {"ar", "cs", "hu", "ko", "ru", "sr", "th", "vi"}


def test_demo_web_crawl(tmp_path, ray_session):
    with serve_directory(DEMO_WEB) as url:
        funnel = build(tmp_path / "out", seeds=DEMO_WEB / "seeds.txt", base_url=url, crawl=PATIENT)
    r, missing = recall(str(tmp_path / "out"), str(DEMO_WEB / "PAIRS_expected.tsv"), str(url))
    assert r >= 0.95, missing
    assert funnel["d_know"]["th"] == 0 and funnel["d_know"]["vi"] == 0
    timing = json.loads((tmp_path / "out" / "stage_stats.json").read_text())
    assert counter_disagreements(funnel, timing) == []  # alt_text, langid (Ray tasks) and decode/resolution too
    assert timing["alt_text"]["rows_in"] == next(s["in"] for s in funnel["stages"] if s["stage"] == "alt_text") > 0
    assert_funnel_balance(funnel)


def test_langs_subset(tmp_path, ray_session):
    with serve_directory(DEMO_WEB) as url:
        funnel = build(tmp_path / "out", seeds=DEMO_WEB / "seeds.txt", base_url=url, langs=["hu"], crawl=PATIENT)
    assert {r["lang"] for r in read_dir(tmp_path / "out" / "d_know", ["lang"])} == {"hu"}
    assert funnel["d_know"] == {"hu": funnel["d_know_total"]}
