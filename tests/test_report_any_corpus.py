"""The report and the dataset card are written for any corpus: no near-duplicate group, a language with no rows,
a D_know with no rows, D_ling only; and a real build of one page showing one picture under ten alt-texts
(exact duplicates, no near-duplicate pair) exits 0 with its report and card, leaving no staging folder.

Real components: parquet parts in the real schema (tests/synthetic_corpus.py), a local Ray making the
thumbnails, Hugging Face ``datasets`` reading the card; the real build job against a real aiohttp server.
"""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import pytest
from conftest import DEMO_WEB
from synthetic_corpus import write_corpus
from webserver import serve_directory

from mella.io import write_parquet_atomic
from mella.schema import RECORD_SCHEMA, to_table


def _no_rows(out: Path, name: str) -> None:
    (out / name).mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(to_table([], RECORD_SCHEMA), str(out / name / "part-00000.parquet"))


def _no_near_duplicates(out: Path) -> None:  # rejects after the fetch stage, none of them a near-duplicate
    write_corpus(str(out), {"hu": 5, "ko": 3}, rows_per_file=4, near_dups=0, rejects_per_reason=2)


def _empty_language(out: Path) -> None:  # ko configured and counted in the funnel, no row of it anywhere
    write_corpus(str(out), {"hu": 5}, {"hu": 2}, rows_per_file=4, near_dups=1)
    (out / "funnel.json").write_text(json.dumps({"d_know": {"hu": 5, "ko": 0}, "stages": []}))


def _d_know_without_rows(out: Path) -> None:
    _no_rows(out, "d_know")
    write_corpus(str(out / "ling"), {}, {"th": 3}, rows_per_file=2)
    shutil.move(str(out / "ling" / "d_ling"), str(out / "d_ling"))


def _d_ling_only(out: Path) -> None:
    write_corpus(str(out), {}, {"th": 3, "vi": 2}, rows_per_file=2)
    shutil.rmtree(out / "d_know")


def _nothing_kept(out: Path) -> None:  # both datasets present, no row in either; rejects only
    _no_rows(out, "d_know")
    _no_rows(out, "d_ling")
    write_corpus(str(out / "r"), {"hu": 1}, rows_per_file=1, rejects_per_reason=2)
    shutil.move(str(out / "r" / "rejects"), str(out / "rejects"))


CASES = {
    "no_near_duplicate_group": _no_near_duplicates,
    "empty_language": _empty_language,
    "d_know_without_rows": _d_know_without_rows,
    "d_ling_only": _d_ling_only,
    "nothing_kept": _nothing_kept,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_and_card_for_any_corpus(case, tmp_path, ray_session):
    import datasets
    import pyarrow.parquet as pq
    import yaml

    from mella.dataset_card import write_card
    from mella.report import write_report

    out = tmp_path / "corpus"
    out.mkdir()
    CASES[case](out)
    rows = {
        ds: sum(pq.ParquetFile(f).metadata.num_rows for f in glob.glob(str(out / ds / "*.parquet")))
        for ds in ("d_know", "d_ling")
    }
    index = Path(write_report(str(out), page_size=4, max_pages=1))
    assert index.is_file() and (index.parent / "near-duplicates.html").is_file()
    card = Path(write_card(str(out)))
    front = yaml.safe_load(card.read_text(encoding="utf-8").split("---\n")[1])
    assert not glob.glob(str(out / "**" / "*staging*"), recursive=True)
    assert not glob.glob(str(out / ".staging-*")) and not glob.glob(str(out / "*.staging-*"))
    if rows["d_know"] + rows["d_ling"]:
        ds = datasets.load_dataset(str(out))
        assert {k: v.num_rows for k, v in ds.items()} == {k: n for k, n in rows.items() if n}
    else:
        assert not [c for c in front.get("configs", []) if c["config_name"] == "default"]
    if case == "empty_language":
        assert "ko" not in front["language"]


def test_a_failed_report_leaves_no_staging_folder(tmp_path, monkeypatch, ray_session):
    from mella import report

    write_corpus(str(tmp_path), {"hu": 3}, rows_per_file=3)

    def broken(*a, **k):
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(report, "_near_page", broken)
    with pytest.raises(RuntimeError):
        report.write_report(str(tmp_path))
    assert not glob.glob(str(tmp_path / ".staging-*")) and not (tmp_path / "report").exists()


ALTS = [
    "Budapest látképe a Gellérthegyről",
    "A Parlament épülete a Duna partján",
    "Régi villamos a körúton",
    "Téli este a belvárosban",
    "A Lánchíd éjszakai kivilágításban",
    "Piac a Nagycsarnokban",
    "Kilátás a Halászbástyáról",
    "Könyvtár olvasóterme délután",
    "Vasútállomás a reggeli csúcsban",
    "Egy utcai kávézó teraszán",
]


def test_one_picture_under_ten_alts_builds_report_and_card(tmp_path, ray_session, capsys):
    """One page, one picture, ten alt-texts: the exact duplicates go, no near-duplicate pair exists; exit 0."""
    import build_corpus

    web = tmp_path / "web"
    (web / "img").mkdir(parents=True)
    src = sorted(
        glob.glob(str(DEMO_WEB / "**" / "*.jpg"), recursive=True)
        + glob.glob(str(DEMO_WEB / "**" / "*.png"), recursive=True)
    )
    from PIL import Image

    src = next(p for p in src if min(Image.open(p).size) > 256)
    shutil.copyfile(src, web / "img" / f"pic{Path(src).suffix}")
    imgs = "\n".join(f'<p><img src="/img/pic{Path(src).suffix}" alt="{a}"></p>' for a in ALTS)
    (web / "index.html").write_text(
        f'<!doctype html><html lang="hu"><head><meta charset="utf-8"><title>Képek</title>'
        f"</head><body><h1>Képek Budapestről</h1>{imgs}</body></html>",
        encoding="utf-8",
    )
    (web / "seeds.txt").write_text("/index.html\n")
    out = tmp_path / "out"
    with serve_directory(web) as url:
        rc = build_corpus.main(
            [
                "--seeds",
                str(web / "seeds.txt"),
                "--base-url",
                str(url),
                "--output",
                str(out),
                "--allow-private-hosts",
                "127.0.0.1",
                "--langs",
                "hu",
                "crawl.politeness_delay_s=0",
            ]
        )
    printed = capsys.readouterr()
    assert rc == 0, printed
    funnel = json.loads((out / "funnel.json").read_text())
    exact = next(s for s in funnel["stages"] if s["stage"] == "exact_dedup")
    assert funnel["d_know"]["hu"] >= 1 and exact["rejected"] >= 6, funnel  # at most 3 captions per image are kept
    assert not any(s["rejected"] for s in funnel["stages"] if s["stage"] in ("phash_dedup", "semantic_dedup"))
    assert (out / "report" / "index.html").is_file() and (out / "README.md").is_file()
    assert not glob.glob(str(out / ".staging-*")) and not glob.glob(str(out / "*.staging-*"))
    assert "warning" not in printed.err.lower() or "report" not in printed.err.lower(), printed.err


def test_a_failed_report_step_leaves_the_rows_and_exit_0(tmp_path, monkeypatch, capsys):
    """After the rows are written, a failing report or card is one warning naming the step; the job still succeeds."""
    import build_corpus

    from mella import dataset_card, report

    write_corpus(str(tmp_path), {"hu": 2}, rows_per_file=2)

    def broken(out_dir):
        raise ValueError("cannot render")

    monkeypatch.setattr(report, "write_report", broken)
    assert build_corpus.write_report_and_card(str(tmp_path)) is False
    err = capsys.readouterr().err
    assert "the report step failed (ValueError: cannot render); the rows in" in err and len(err.splitlines()) == 1
    assert (tmp_path / "README.md").is_file()  # the card step still ran
    monkeypatch.setattr(dataset_card, "write_card", broken)
    assert build_corpus.write_report_and_card(str(tmp_path)) is False
    assert "the dataset card step failed" in capsys.readouterr().err
