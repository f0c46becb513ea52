"""The corpus report (mella.report, jobs/inspect_corpus.py) and the dataset card (mella.dataset_card).

Real components: parquet parts in the real schema (a synthetic corpus from tests/synthetic_corpus.py, and
the demo web built by the real job), a local Ray making the thumbnails, Jinja2, headless Chromium (Debian
``chromium``) rendering the pages, Hugging Face ``datasets`` loading the card's configs.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEMO_WEB, ROOT, needs_miniweb
from selectolax.lexbor import LexborHTMLParser as HTMLParser
from synthetic_corpus import ALT, write_corpus

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium not installed (.ci/run installs it)"
)
PY = sys.executable
ARABIC, HANGUL, CYRILLIC, THAI = (
    re.compile(p) for p in ("[\u0600-\u06ff]", "[\uac00-\ud7a3]", "[\u0400-\u04ff]", "[\u0e00-\u0e7f]")
)


def render(page: Path, tmp: Path, screenshot: Path | None = None) -> tuple[HTMLParser, list[str]]:
    """Open ``page`` from file:// in headless Chromium: (rendered DOM, console messages). With ``screenshot``,
    also save a PNG of the first 1400×1800 px."""
    common = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1400,1800",
    ]
    proc = subprocess.run(
        common + ["--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot is not None:
        shot = subprocess.run(
            common + [f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True, timeout=120
        )
        assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    return HTMLParser(proc.stdout), console


# ----------------------------------------------------------------------------------------- synthetic corpus
KNOW = {"ar": 30, "th": 25, "ko": 5, "ru": 12}
LING = {"th": 7, "ar": 3}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, ray_session):
    from synthetic_corpus import _row, image_pool

    from mella.io import write_parquet_atomic
    from mella.report import write_report
    from mella.schema import RECORD_SCHEMA, to_table

    out = tmp_path_factory.mktemp("synthetic") / "corpus"
    counts = write_corpus(str(out), KNOW, LING, rows_per_file=20, near_dups=3, rejects_per_reason=4)
    # one alt-text with markup: it must come out as text, never as HTML
    row = {**_row("ru", 999, image_pool(1)[0], "d_know"), "alt_text": "<script>alert(1)</script> <b>окно</b>"}
    write_parquet_atomic(to_table([row], RECORD_SCHEMA), str(out / "d_know" / "part-markup.parquet"))
    counts["d_know"]["ru"] += 1
    index = write_report(str(out), page_size=10, max_pages=2)
    return out, counts, Path(index)


def _dom(path: Path) -> HTMLParser:
    return HTMLParser(path.read_text(encoding="utf-8"))


def test_galleries_sampled_paginated_counts_exact(synthetic):
    import pyarrow.parquet as pq

    out, counts, index = synthetic
    report = index.parent
    assert index.exists() and (report / "statistics.png").exists()
    ids = {}
    for p in glob.glob(str(out / "d_know" / "*.parquet")):
        for r in pq.read_table(p, columns=["id", "lang"]).to_pylist():
            ids.setdefault(r["lang"], []).append(r["id"])
    for lang, n in counts["d_know"].items():
        shown = min(n, 20)  # page_size 10 × max_pages 2
        pages = sorted(report.glob(f"know-{lang}-*.html"))
        assert len(pages) == -(-shown // 10)
        cards = [c for p in pages for c in _dom(p).css("#gallery .card")]
        assert len(cards) == shown
        # a uniform sample: the smallest ids, whatever file they are in
        assert [c.attributes["data-id"] for c in cards] == sorted(ids[lang])[:shown]
        assert all(c.css_first("img.thumb").attributes["src"].startswith("data:image/jpeg;base64,") for c in cards)
        assert f"{n} rows in d_know for" in pages[0].read_text(encoding="utf-8")
    ar = _dom(report / "know-ar-1.html").css("#gallery .card .text")
    assert ar and all(
        t.attributes["dir"] == "rtl" and t.attributes["lang"] == "ar" and t.text() == ALT["ar"] for t in ar
    )
    assert all(t.attributes["dir"] == "auto" for t in _dom(report / "know-th-1.html").css("#gallery .card .text"))
    # D_ling: image, English caption, translation, QE, backend
    ling = (report / "ling-th-1.html").read_text(encoding="utf-8")
    assert (
        ALT["th"] in ling
        and "A screenshot of an installer dialog" in ling
        and "nllb:nllb-200" in ling
        and "0.810" in ling
    )
    assert len(_dom(report / "ling-th-1.html").css("#gallery .card img.thumb")) == LING["th"]
    # markup in an alt-text is escaped
    ru = "".join(p.read_text(encoding="utf-8") for p in report.glob("know-ru-*.html"))
    assert "<script>alert(1)" not in ru and "&lt;script&gt;alert(1)&lt;/script&gt;" in ru


def test_rejects_and_near_duplicate_groups(synthetic):
    out, counts, index = synthetic
    rej = _dom(index.parent / "rejects.html")
    for (stage, reason), n in counts["rejects"].items():
        sec = rej.css_first(f'section[data-stage="{stage}"] div[data-reason="{reason}"]')
        assert sec is not None and f"{n} rows" in sec.css_first("h3").text()
        assert len(sec.css(".card")) == min(n, 12)
    # too_small images had been fetched but rejects keep no bytes (and this corpus has no work units)
    assert "no thumbnail (image not stored" in rej.css_first('div[data-reason="too_small"]').text()
    assert "no image (dropped at alt_text)" in rej.css_first('div[data-reason="alt_empty"]').text()
    near = _dom(index.parent / "near-duplicates.html")
    for stage, measure in (("phash_dedup", "pHash distance 3 <= 4"), ("semantic_dedup", "cosine 0.9712 >= 0.96")):
        sec = near.css_first(f'section[data-stage="{stage}"]')
        groups = sec.css(".group")
        assert len(groups) == 3 * len(KNOW) and f"{3 * len(KNOW)} groups" in sec.css_first("h2").text()
        for g in groups:
            kept, dropped = g.css_first(".card.kept"), g.css(".card.dropped")
            assert kept.css_first("img.thumb").attributes["src"].startswith("data:image/jpeg")  # found in d_know
            assert len(dropped) == 1 and measure in dropped[0].text()


@needs_chromium
def test_synthetic_report_in_chromium_thai_arabic_no_console_errors(synthetic, tmp_path):
    _, _, index = synthetic
    for page, script, lang in (
        ("ling-th-1.html", THAI, "th"),
        ("know-th-1.html", THAI, "th"),
        ("know-ar-1.html", ARABIC, "ar"),
        ("know-ko-1.html", HANGUL, "ko"),
        ("know-ru-1.html", CYRILLIC, "ru"),
    ):
        dom, console = render(index.parent / page, tmp_path)
        texts = [t for t in dom.css(f'#gallery .card .text[lang="{lang}"]') if script.search(t.text())]
        assert texts, page
        assert not console, (page, console)
    dom, console = render(index, tmp_path, screenshot=tmp_path / "synthetic-index.png")
    assert not console and dom.css_first("#funnel-chart") is None  # no funnel.json in a synthetic corpus


def test_sample_is_bottom_k_with_exact_counts_across_batches(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from mella.report import sample

    write_corpus(str(tmp_path), {"hu": 40, "ko": 17}, rows_per_file=13, near_dups=5)
    monkeypatch.setattr(sample, "BATCH_ROWS", 7)  # batches split every file
    sel = sample.select(str(tmp_path), per_lang=6, per_reason=2, near_groups=3, near_dropped=1)
    rows = [
        r
        for p in glob.glob(str(tmp_path / "d_know" / "*.parquet"))
        for r in pq.read_table(p, columns=["id", "lang"]).to_pylist()
    ]
    for lang in ("hu", "ko"):
        ids = sorted(r["id"] for r in rows if r["lang"] == lang)
        assert sel.know.counts[lang] == len(ids)
        assert [r["id"] for r in sel.know.rows[lang]] == ids[:6]
        for r in sel.know.rows[lang]:  # the located row is that row
            assert pq.read_table(r["_file"], columns=["id"]).column("id")[r["_row"]].as_py() == r["id"]
    assert sel.rejects.counts[("phash_dedup", "near_duplicate")] == 10
    assert sel.near.n_groups["phash_dedup"] == 10 and sel.near.n_rows["semantic_dedup"] == 10
    assert sum(1 for k in sel.near.groups if k[0] == "phash_dedup") == 3


def test_dataset_card_loads_with_datasets(tmp_path):
    import datasets
    import yaml

    from mella.dataset_card import write_card

    out = tmp_path / "corpus"
    write_corpus(str(out), {"ar": 9, "th": 4, "ko": 6}, {"th": 5, "vi": 2}, rows_per_file=7)
    path = write_card(str(out))
    text = Path(path).read_text(encoding="utf-8")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["language"] == ["ar", "ko", "th", "vi"] and front["size_categories"] == ["n<1K"]
    assert {c["config_name"] for c in front["configs"]} == {"default", "d_know", "d_ling"}
    assert "## Licence" in text and "| th (Thai) | 4 | 5 |" in text and "pHash" in text
    files = sorted(os.listdir(out / "d_know"))
    assert files == ["part-ar-00000.parquet", "part-ko-00000.parquet", "part-th-00000.parquet"]
    write_card(str(out))  # rerun: already one language per file, nothing rewritten
    assert sorted(os.listdir(out / "d_know")) == files
    ds = datasets.load_dataset(str(out))
    assert {k: v.num_rows for k, v in ds.items()} == {"d_know": 19, "d_ling": 7}
    know = datasets.load_dataset(str(out), "d_know")
    assert {k: v.num_rows for k, v in know.items()} == {"ar": 9, "ko": 6, "th": 4}
    assert set(know["ar"]["alt_text"]) == {ALT["ar"]}
    # the card declares features: image decodes to PIL, columns keep their types
    feats = ds["d_know"].features
    assert isinstance(feats["image"], datasets.Image) and isinstance(know["th"].features["image"], datasets.Image)
    assert feats["width"] == datasets.Value("int32") and feats["lid_prob"] == datasets.Value("float32")
    assert feats["fetched_at"].dtype.startswith("timestamp[ms") and feats["alt_text"] == datasets.Value("string")
    img = ds["d_know"][0]["image"]
    assert img.size == (320, 240), img


def _inspect(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(
        [PY, str(ROOT / "jobs" / "inspect_corpus.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        **kw,
    )


def test_inspect_usage_errors_fail_in_one_line_before_ray(tmp_path):
    (tmp_path / "d_know").mkdir()
    for args, msg in (
        ([str(tmp_path / "missing")], "no such directory"),
        ([str(ROOT / "docs")], "is not a build output"),
        ([str(tmp_path), "--train", str(tmp_path)], "no mella_train.json"),
        ([str(tmp_path), "--eval", str(tmp_path)], "no report.json"),
        ([str(tmp_path), "--page-size", "0"], "must be >= 1"),
    ):
        proc = _inspect(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and msg in proc.stderr, proc.stderr
        assert "ray" not in proc.stderr.lower() and not proc.stdout


def _inspect_main(argv: list[str], capsys) -> tuple[int, str]:
    """jobs/inspect_corpus.py's ``main`` in this process (its ``init_ray`` joins the module's Ray)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("inspect_corpus_job", ROOT / "jobs" / "inspect_corpus.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    rc = job.main(argv)
    return rc, capsys.readouterr().out


def test_inspect_with_training_and_evaluation_reports(tmp_path, ray_session, capsys):
    from synthetic_corpus import image_pool

    from mella.evaluation import Item, Output, score, write_report
    from mella.train.artifacts import write_metadata

    out = tmp_path / "corpus"
    write_corpus(str(out), {"hu": 6, "ar": 4}, rows_per_file=5)
    from peft import LoraConfig

    adapter = tmp_path / "train" / "hu" / "adapter"
    LoraConfig(r=8, target_modules=["q_proj"]).save_pretrained(str(adapter))  # adapter_config.json, as training writes
    write_metadata(
        adapter,
        {
            "lang": "hu",
            "backbone": "qwen2-vl",
            "mix": "dual",
            "seed": 0,
            "steps": 12,
            "final_loss": 1.25,
            "rows": {"d_know": 6},
            "hyperparameters": {"lora_r": 8},
        },
    )
    img = image_pool(1)[0]
    items = [
        Item("hu", "d_know", f"id{k}", f"sha{k}", img, "Mi látható a képen?", ref)
        for k, ref in enumerate(["A telepítő nyelvválasztó képernyője", "Beállítások ablak betűkészlet"])
    ]
    outputs = [
        Output(i.lang, i.source, i.id, 0, m, name, text)
        for i in items
        for m, name, text in (("-", "base", "egy kép"), ("MELLA", "mella-hu", i.reference))
    ]
    rows, facts = score(items, outputs)
    write_report(
        tmp_path / "eval",
        items=items,
        outputs=outputs,
        rows=rows,
        facts=facts,
        backbone="tiny",
        langs=["hu"],
        methods=["-", "MELLA"],
        config={},
        missing=[],
    )
    rc, stdout = _inspect_main([str(out), "--train", str(tmp_path / "train"), "--eval", str(tmp_path / "eval")], capsys)
    assert rc == 0
    index = Path(next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("report: ")))
    assert index == out / "report" / "index.html" and (out / "README.md").exists()
    train = (index.parent / "training.html").read_text(encoding="utf-8")
    assert "final_loss" in train and "1.25" in train and "hyperparameters.lora_r" in train
    ev = _dom(index.parent / "evaluation.html")
    assert "keyword_accuracy" in ev.text() and (index.parent / "evaluation" / "chart.png").exists()
    pairs = ev.css("#pairs tr")[1:]
    assert len(pairs) == 2 and "Beállítások ablak betűkészlet" in ev.css_first("#pairs").text()
    assert (index.parent / "evaluation" / "pairs.html").exists()
    assert 'href="training.html"' in index.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------- the demo web
TINY_DLING = [
    "d_ling.caption.mllm.min_pixels=3136",
    "d_ling.caption.mllm.max_pixels=12544",
    "d_ling.caption.generation.max_new_tokens=8",
    "d_ling.caption.generation.min_new_tokens=4",
    "d_ling.caption.generation.repetition_penalty=1.5",
    "d_ling.translate.seq2seq.generation.max_new_tokens=8",
    "d_ling.translate.seq2seq.generation.num_beams=1",
    "d_ling.caption.num_cpus=0.25",
    "d_ling.translate.num_cpus=0.25",
    "d_ling.categorise.num_cpus=0.25",
]


@pytest.mark.slow
@needs_chromium
@needs_miniweb()
def test_demo_build_writes_report_and_card_rendered_in_chromium(tmp_path):
    """The demo build (all filters, plus D_ling with tiny random-weight models) prints its report; Chromium
    renders every page without console errors; thumbnails for every language with pairs; Arabic, Korean and
    Cyrillic alt-texts; rejects per stage as in the funnel; the CNN near-duplicate group; the card loads.

    Thai: the demo web's Thai pages carry only English or icon alt-texts (no Thai D_know pairs) and the D_ling
    translations of a random-weight model are not Thai, so Thai rendering is checked on the synthetic corpus
    (test_synthetic_report_in_chromium_thai_arabic_no_console_errors); here the Thai D_ling page must render."""
    import datasets
    from conftest_train import tiny_qwen2vl
    from test_dling import tiny_marian

    qwen, marian = tiny_qwen2vl(tmp_path / "qwen"), tiny_marian(tmp_path / "marian")
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [
            PY,
            str(ROOT / "jobs" / "build_corpus.py"),
            "--output",
            str(out),
            "--num-cpus",
            "2",
            "-q",
            "--d-ling",
            "--caption-model",
            str(qwen),
            "--mt-model",
            str(marian),
            *TINY_DLING,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = Path(next(line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("report: ")))
    assert index == out / "report" / "index.html"
    funnel = json.loads((out / "funnel.json").read_text())
    report = index.parent

    dom, console = render(index, tmp_path, screenshot=tmp_path / "demo-index.png")
    assert not console, console
    assert len(dom.css("#funnel-chart svg g.stage")) == len(funnel["stages"]) and dom.css_first(
        'img.figure[src="statistics.png"]'
    )
    scripts = {"ar": ARABIC, "ko": HANGUL, "ru": CYRILLIC, "sr": CYRILLIC}
    for lang, n in funnel["d_know"].items():
        if not n:
            assert not list(report.glob(f"know-{lang}-*.html"))
            continue
        shot = tmp_path / f"demo-know-{lang}.png" if lang == "ar" else None
        dom, console = render(report / f"know-{lang}-1.html", tmp_path, screenshot=shot)
        assert not console, (lang, console)
        cards = dom.css("#gallery .card")
        assert len(cards) == min(n, 48) and all(c.css_first("img.thumb") for c in cards), lang
        if lang in scripts:
            texts = [c.css_first(".text") for c in cards]
            assert sum(bool(scripts[lang].search(t.text())) for t in texts) >= len(cards) // 2, lang
            assert all(t.attributes["dir"] == ("rtl" if lang == "ar" else "auto") for t in texts)
    for lang, n in funnel["d_ling"].items():
        if n:
            dom, console = render(report / f"ling-{lang}-1.html", tmp_path)
            assert not console and len(dom.css("#gallery .card img.thumb")) == n, lang
    assert funnel["d_ling"]["th"] > 0

    dom, console = render(report / "rejects.html", tmp_path, screenshot=tmp_path / "demo-rejects.png")
    assert not console
    for s in funnel["stages"]:
        sec = dom.css_first(f'section[data-stage="{s["stage"]}"]')
        assert (sec is not None) == (s["rejected"] > 0), s["stage"]
        if sec is not None:
            assert f"{s['rejected']} rejected" in sec.css_first("h2").text()
    # resolution rejects had been fetched: their thumbnails come from the build's image WARCs
    assert dom.css('div[data-reason="too_small"] img.thumb')
    dom, console = render(report / "near-duplicates.html", tmp_path)
    assert not console
    sem = next(s for s in funnel["stages"] if s["stage"] == "semantic_dedup")
    groups = dom.css('section[data-stage="semantic_dedup"] .group')
    assert sem["rejected"] >= 1 and len(groups) >= 1
    assert all(g.css_first(".card.kept img.thumb") and "cosine" in g.css_first(".card.dropped").text() for g in groups)

    ds = datasets.load_dataset(str(out))
    assert {k: v.num_rows for k, v in ds.items()} == {
        "d_know": funnel["d_know_total"],
        "d_ling": funnel["d_ling_total"],
    }
    know = datasets.load_dataset(str(out), "d_know")
    assert {k: v.num_rows for k, v in know.items()} == {k: v for k, v in funnel["d_know"].items() if v}
    assert DEMO_WEB.exists()
