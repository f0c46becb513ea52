"""Statistics (Figure 4 counterpart): an output dir in the build layout → PNG + JSON via jobs/corpus_stats.py.

The output dir is written from real miniweb data: D_know = the real (image, alt-text) pairs of
PAIRS_expected.tsv, categorised by the real EfficientNet-lite0 categoriser; D_ling = the th/vi
screenshots (no in-language alt on their pages), with, as the "translation" into each language, the real
alt-text that the same screenshot carries on that language's page (no MT model runs on this machine, and
statistics only need real texts of realistic lengths). Assertions check every number against the input.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import MINIWEB, ROOT, needs_miniweb
from PIL import Image

from mella import corpus_stats as statistics
from mella.languages import normalise_lang_tag
from mella.schema import RECORD_SCHEMA, REJECT_SCHEMA, conform, record_id, to_table
from mella.stages.enrich.categorise import CategoriseConfig, EfficientNetCategoriser

pytestmark = needs_miniweb()


def _pairs() -> list[dict]:
    """PAIRS_expected.tsv rows with ``lang`` as the pipeline writes it (``sr-Latn`` → ``sr``)."""
    with open(MINIWEB / "PAIRS_expected.tsv", encoding="utf-8") as f:
        return [{**r, "lang": normalise_lang_tag(r["lang"])} for r in csv.DictReader(f, delimiter="\t")]


def _row(lang, page, img, **kw) -> dict:
    data = (MINIWEB / img).read_bytes()
    p, i = f"http://miniweb.test/{page}", f"http://miniweb.test/{img}"
    return {
        "id": record_id(lang, p, i),
        "lang": lang,
        "page_url": p,
        "image_url": i,
        "image": data,
        "image_bytes": len(data),
        **kw,
    }


def _know_pairs(per_lang: int = 15) -> list[dict]:
    """The first ``per_lang`` pairs of each language (keeps the CPU categoriser's work small)."""
    seen: Counter = Counter()
    out = []
    for p in _pairs():
        seen[p["lang"]] += 1
        if seen[p["lang"]] <= per_lang:
            out.append(p)
    return out


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stats")
    pairs = _pairs()
    know = [
        _row(p["lang"], p["page"], p["img"], alt_text=p["alt"], source="crawl" if i % 4 else "warc")
        for i, p in enumerate(_know_pairs())
    ]
    alt_by_name: dict[tuple[str, str], str] = {(p["lang"], Path(p["img"]).name): p["alt"] for p in pairs}
    ling = []
    for lang in ("th", "vi"):
        for img in sorted((MINIWEB / lang).glob("*/**/*.png")):
            rel = str(img.relative_to(MINIWEB))
            with Image.open(img) as im:
                if min(im.size) <= 256:
                    continue
            for target in ("ar", "cs", "hu", "ko", "ru", "sr"):
                text = alt_by_name.get((target, img.name))
                if text:
                    ling.append(
                        _row(
                            target,
                            rel.rsplit("/", 1)[0] + "/index.html",
                            rel,
                            text=text,
                            source="crawl",
                            caption_en="(fixture)",
                            mt_backend="fixture:same-image-alt",
                        )
                    )
    cat = EfficientNetCategoriser(CategoriseConfig(batch_size=32))
    for name, rows in (("d_know", know), ("d_ling", ling)):
        t = cat(to_table(rows, REJECT_SCHEMA))
        (root / name).mkdir()
        half = t.num_rows // 2  # two parquet parts, as the writer produces
        pq.write_table(conform(t.slice(0, half), RECORD_SCHEMA), root / name / "part-0.parquet")
        pq.write_table(conform(t.slice(half), RECORD_SCHEMA), root / name / "part-1.parquet")
    return root


def test_statistics_job_writes_png_and_json(out_dir):
    png, js = out_dir / "fig4.png", out_dir / "fig4.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "corpus_stats.py"),
            "--data",
            str(out_dir),
            "--png",
            str(png),
            "--json",
            str(js),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "\nhu " in r.stdout
    stats = json.loads(js.read_text())
    know = pq.read_table(out_dir / "d_know").to_pylist()
    ling = pq.read_table(out_dir / "d_ling").to_pylist()
    assert stats["datasets"]["d_know"]["rows"] == len(know) == len(_know_pairs())
    assert stats["datasets"]["d_ling"]["rows"] == len(ling) > 0
    assert stats["total"] == len(know) + len(ling)
    assert stats["datasets"]["d_know"]["per_lang"] == dict(Counter(r["lang"] for r in know))
    assert stats["datasets"]["d_know"]["per_source"] == dict(Counter(r["source"] for r in know))
    assert stats["datasets"]["d_ling"]["per_backend"] == {"fixture:same-image-alt": len(ling)}
    for lang, v in stats["per_lang"].items():
        texts = [r["alt_text"] for r in know if r["lang"] == lang] + [r["text"] for r in ling if r["lang"] == lang]
        assert v["total"] == len(texts)
        assert v["avg_text_chars"] == pytest.approx(sum(map(len, texts)) / len(texts), abs=0.05)
    assert "th" not in stats["per_lang"] and "vi" not in stats["per_lang"]  # no th/vi pairs in either dataset here
    assert sum(stats["categories"]["fine"].values()) == stats["total"]
    assert sum(stats["categories"]["major"].values()) == stats["total"]
    assert stats["categories"]["fine"] == dict(Counter(r["category"] for r in know + ling).most_common())
    assert sum(stats["text_length_hist"]["d_know"]) == len(know) and sum(stats["text_length_hist"]["d_ling"]) == len(
        ling
    )
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 1200 and im.height > 900


def test_statistics_of_missing_output_is_an_error(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "corpus_stats.py"), "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "neither d_know/ nor d_ling/" in r.stderr


def test_statistics_with_only_d_know(tmp_path):
    (tmp_path / "d_know").mkdir()
    rows = [
        {
            "id": "a",
            "lang": "cs",
            "alt_text": "Okno",
            "source": "crawl",
            "category": "screenshot_ui",
            "category_major": "information_technology",
            "image_bytes": 2**20,
        }
    ]
    pq.write_table(to_table(rows), tmp_path / "d_know" / "part-0.parquet")
    stats = statistics.write(str(tmp_path))
    assert stats["datasets"]["d_ling"]["rows"] == 0 and stats["per_lang"] == {
        "cs": {"d_know": 1, "d_ling": 0, "total": 1, "avg_text_chars": 4.0, "image_mb": 1.0}
    }
    assert stats["datasets"]["d_know"]["image_mb"] == 1.0
    assert (tmp_path / "statistics.png").stat().st_size > 10_000
