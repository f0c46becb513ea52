"""Common Crawl by language (mella.ccindex): a local index Parquet in Common Crawl's schema, a real Common
Crawl WARC excerpt served by a local aiohttp server that honours Range requests (aiohttp's static
files), the records copied into the job's WARC, and rows that name Common Crawl's record."""

from __future__ import annotations

import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MINIWEB
from webserver import serve_directory

from mella.ccindex import (
    cld2_code,
    load_provenance,
    materialise,
    open_index,
    select_pages,
)
from mella.config import CrawlConfig
from mella.stages.filters.langid import LangIDConfig
from mella.stages.io.extract import ExtractStage
from mella.warc import iter_responses

CC_WARC = MINIWEB / "warc" / "cc-sample-resiliparse.warc.gz"
CC_NAME = "crawl-data/CC-MAIN-2024-42/segments/1/warc/CC-MAIN-sample-00000.warc.gz"
#: Common Crawl's column types (cc-index-table's schema: fetch_status SMALLINT, offsets and lengths INT)
INDEX_SCHEMA = pa.schema(
    [
        ("url", pa.string()),
        ("url_host_name", pa.string()),
        ("fetch_status", pa.int16()),
        ("content_mime_detected", pa.string()),
        ("content_languages", pa.string()),
        ("warc_filename", pa.string()),
        ("warc_record_offset", pa.int32()),
        ("warc_record_length", pa.int32()),
    ]
)

pytestmark = pytest.mark.skipif(not CC_WARC.exists(), reason=f"{CC_WARC} not present")


@pytest.fixture()
def cc(tmp_path):
    """The served tree (``crawl-data/...`` under ``tmp/served``) and a local index of its records: record i
    has primary language hun when i % 3 == 0, tha when i % 3 == 1, else eng (with hun second); plus an
    index row with status 404 and one with an image MIME type (never read)."""
    served = tmp_path / "served"
    (served / CC_NAME).parent.mkdir(parents=True)
    shutil.copy(CC_WARC, served / CC_NAME)
    recs = list(iter_responses(str(served / CC_NAME)))
    langs = ["hun", "tha,eng", "eng,hun"]
    rows = [
        {
            "url": r.url,
            "url_host_name": "h",
            "fetch_status": r.status,
            "content_mime_detected": "text/html",
            "content_languages": langs[i % 3],
            "warc_filename": CC_NAME,
            "warc_record_offset": r.offset,
            "warc_record_length": r.length,
        }
        for i, r in enumerate(recs)
    ]
    rows.append({**rows[0], "fetch_status": 404, "url": "http://x.example/404"})
    rows.append({**rows[0], "content_mime_detected": "image/png", "url": "http://x.example/a.png"})
    index = tmp_path / "index" / "part-00000.parquet"
    index.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), index)
    return {"served": served, "index": str(index.parent), "recs": recs}


def test_cld2_codes_of_the_configured_languages():
    assert [cld2_code(x) for x in ("hu", "th", "ar", "sr", "vi")] == ["hun", "tha", "ara", "srp", "vie"]


def test_select_keeps_status_200_html_of_a_primary_target_language(cc):
    table = select_pages(open_index(cc["index"]), ["hu", "th"])
    want = {r.url for i, r in enumerate(cc["recs"]) if i % 3 in (0, 1)}
    assert set(table.column("url").to_pylist()) == want and table.num_rows == len(want)
    assert set(table.column("lang").to_pylist()) == {"hu", "th"}
    assert select_pages(open_index(cc["index"]), ["hu"]).num_rows == len(
        [i for i in range(len(cc["recs"])) if i % 3 == 0]
    )


def test_materialise_copies_records_by_range_and_rows_carry_common_crawls_provenance(cc, tmp_path):
    warc_dir = tmp_path / "out" / "warc"
    crawl = CrawlConfig(politeness_delay_s=0.0)
    with serve_directory(cc["served"]) as url:
        path, counts = materialise(cc["index"], ["hu"], str(warc_dir), crawl, base_url=url + "/")
        hits = sum(url.hits.values())
        path2, counts2 = materialise(cc["index"], ["hu"], str(warc_dir), crawl, base_url=url + "/")
        assert sum(url.hits.values()) == hits  # the rerun makes no request
    wanted = [r for i, r in enumerate(cc["recs"]) if i % 3 == 0]
    assert counts == counts2 == {"selected": len(wanted), "written": len(wanted)} and path2 == path
    assert hits == len(wanted)
    copied = list(iter_responses(path))
    assert [r.url for r in copied] == [r.url for r in wanted]
    assert [r.body for r in copied] == [r.body for r in wanted]  # the records' bytes, unchanged
    prov = load_provenance(path)
    assert sorted(prov.values()) == sorted((CC_NAME, r.offset, r.length) for r in wanted)
    # the extract stage names Common Crawl's record on every row
    stage = ExtractStage(["hu"], LangIDConfig(), crawl.ai_opt_out_directives, crawl.user_agent)
    stats = tmp_path / "stats"
    stats.mkdir()
    rows = [r for b in stage.read(path, "warc", str(stats)) for r in b]
    assert rows and {r["warc_filename"] for r in rows} == {CC_NAME}
    raw = (cc["served"] / CC_NAME).read_bytes()
    for r in rows:
        rec = gzip.decompress(raw[r["warc_record_offset"] : r["warc_record_offset"] + r["warc_record_length"]])
        assert f"WARC-Target-URI: {r['page_url']}".encode() in rec
    (page_stats,) = [json.loads(p.read_text()) for p in stats.glob("pages-*.json")]
    assert page_stats["pages_in"] == len(wanted)


def test_a_server_without_range_support_is_counted_not_written(cc, tmp_path):
    crawl = CrawlConfig(politeness_delay_s=0.0, max_retries=0)
    with serve_directory(cc["served"]) as url:  # a path that is not there: 404, no record
        path, counts = materialise(cc["index"], ["th"], str(tmp_path / "warc"), crawl, base_url=url + "/nowhere/")
    n = len([i for i in range(len(cc["recs"])) if i % 3 == 1])
    assert counts == {"selected": n, "written": 0, "failed:ValueError": n}
    assert not list(iter_responses(path))


@pytest.mark.slow
def test_cc_index_build_end_to_end_and_rerun_without_requests(tmp_path, ray_session):
    """``--cc-index`` as build_corpus runs it (``common_crawl_pages``): the miniweb's pages captured by our
    crawler, indexed in Common Crawl's schema, served by Range; the images come live from the same origin
    through the host-partitioned fetcher; a rerun of the finished output makes no request at all."""
    import asyncio

    import build_corpus
    from helpers import assert_funnel_balance, build, read_dir

    from mella.config import BuildConfig
    from mella.crawl import crawl_async, read_seeds

    with serve_directory(MINIWEB) as site:
        seeds = [s for s in read_seeds(str(MINIWEB / "seeds.txt"), site) if "/hu/" in s.url or "/cs/" in s.url]
        capture = tmp_path / "capture"
        cfg = CrawlConfig(max_depth=0, politeness_delay_s=0.0, allow_private_hosts=["127.0.0.1"])
        asyncio.run(crawl_async(seeds, cfg, str(capture)))
        (warc,) = capture.glob("pages-*.warc.gz")
        served = tmp_path / "served"
        (served / CC_NAME).parent.mkdir(parents=True)
        shutil.copy(warc, served / CC_NAME)
        recs = [r for r in iter_responses(str(served / CC_NAME)) if r.status == 200 and r.content_type == "text/html"]
        lang3 = {"/hu/": "hun", "/cs/": "ces"}
        rows = [
            {
                "url": r.url,
                "url_host_name": "127.0.0.1",
                "fetch_status": 200,
                "content_mime_detected": "text/html",
                "content_languages": next(v for k, v in lang3.items() if k in r.url),
                "warc_filename": CC_NAME,
                "warc_record_offset": r.offset,
                "warc_record_length": r.length,
            }
            for r in recs
        ]
        index = tmp_path / "index.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), index)
        out = tmp_path / "out"
        with serve_directory(served) as ranges:
            import os

            os.environ["MELLA_CC_BASE_URL"] = ranges + "/"
            try:
                runs = []
                for _ in range(2):
                    before = sum(site.hits.values()) + sum(ranges.hits.values())
                    job = BuildConfig.model_validate(
                        {
                            "output": str(out),
                            "langs": ["hu"],
                            "crawl": {"allow_private_hosts": ["127.0.0.1"], "politeness_delay_s": 0.0},
                        }
                    )
                    job = build_corpus.common_crawl_pages(str(index), job)
                    funnel = build(out, warc=job.warc, crawl={"politeness_delay_s": 0.0}, langs=["hu"])
                    runs.append(
                        (
                            funnel,
                            sum(site.hits.values()) + sum(ranges.hits.values()) - before,
                            sorted(r["id"] for r in read_dir(out / "d_know")),
                        )
                    )
            finally:
                os.environ.pop("MELLA_CC_BASE_URL", None)
    (f1, requests1, ids1), (f2, requests2, ids2) = runs
    assert requests1 > 0 and requests2 == 0
    assert f1["d_know_total"] > 0 and ids1 == ids2 and f1 == f2
    assert_funnel_balance(f1)
    kept = read_dir(out / "d_know")
    hu_pages = {r["warc_record_offset"] for r in rows if r["content_languages"] == "hun"}
    assert {r["warc_filename"] for r in kept} == {CC_NAME} and {r["warc_record_offset"] for r in kept} <= hu_pages
