"""A ninth language from data files alone (issue 11, "A language is data"): Greek.

Greek (``el``) is added only through ``tests/data/el_lang/`` (a languages file, its prompt pool, its
seeds), named by ``$MELLA_LANGUAGES``; no package file is touched. Greek is chosen because it is
written in a script none of the eight packaged languages uses, so it exercises the whole script path
(Unicode script data, the unique-script rule of the alt-text check, "Other" no longer meaning
"reject"), has a Snowball stemmer (the METEOR stem stage) and needs a per-language normalisation for
the metrics (accents folded: capitals carry none) expressed as data. Then real Greek pages
(``tests/data/el_web/``, own text, Debian-licensed images) go through build_corpus on a local server,
and the language goes through the prompt pools and the four metrics.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
from helpers import build, path_of, read_dir
from PIL import Image
from webserver import serve_directory

from mella import languages, metrics
from mella.config import BuildConfig
from mella.stages.enrich.translate import lang_code
from mella.train.prompts import POOL_SIZE, _norm, prompts_for

DATA = Path(__file__).resolve().parent / "data"
LANG_FILE = DATA / "el_lang" / "languages.yaml"
WEB = DATA / "el_web"

#: (image path, alt-text) the Greek web must yield as D_know rows (all > 256 px, Greek alt)
EXPECTED = {
    (
        "/img/inst-country-txt.png",
        "Το πρόγραμμα εγκατάστασης του Debian ζητά να διαλέξετε χώρα ή περιοχή από μια λίστα",
    ),
    ("/img/inst-keyboard-txt.png", "Επιλογή διάταξης πληκτρολογίου στο πρόγραμμα εγκατάστασης σε λειτουργία κειμένου"),
    ("/img/straight-lines-intro.png", "Δύο ευθείες γραμμές που τέμνονται και σχηματίζουν ένα μεγάλο Χ"),
    (
        "/img/wilber-simple-defaultgrid.png",
        "Το παράθυρο εικόνας του GIMP με τη μασκότ Wilber και το προεπιλεγμένο πλέγμα",
    ),
    (
        "/img/NewProject.png",
        "Το παράθυρο διαλόγου δημιουργίας νέου έργου στο OmegaT με τις γλώσσες και τους φακέλους του έργου",
    ),
    ("/img/MatchStatistics.png", "Πίνακας με τα στατιστικά αντιστοιχιών ενός έργου στο OmegaT, σε τμήματα και λέξεις"),
}


@pytest.fixture
def greek(monkeypatch):
    monkeypatch.setenv(languages.ENV_VAR, str(LANG_FILE))


def test_without_the_file_greek_is_unknown(monkeypatch):
    monkeypatch.delenv(languages.ENV_VAR, raising=False)
    assert "el" not in languages.load_languages()
    with pytest.raises(ValueError, match="unknown language"):
        BuildConfig.model_validate({"output": "x", "langs": ["el"]})


def test_greek_is_configured_from_data_alone(greek):
    el = languages.language("el")
    assert el.scripts == ("Greek",) and el.prompts == LANG_FILE.parent / "prompts.yaml"
    assert el.seeds.read_text(encoding="utf-8").count("https://") == 3
    assert languages.default_targets()[-1] == "el" and "el" in BuildConfig(output="x").langs
    assert {s: lang_code("el", s) for s in ("nllb", "m2m100", "marian", "deepl", "google")} == {
        "nllb": "ell_Grek",
        "m2m100": "el",
        "marian": "ell",
        "deepl": "EL",
        "google": "el",
    }
    assert languages.normalise_lang_tag("el-GR") == "el" and languages.script_shares("Καλημέρα") == {"Greek": 1.0}


def test_greek_prompt_pool(greek):
    ps = prompts_for("el")
    assert len(ps.train) == POOL_SIZE == len({_norm(p) for p in ps.train})
    for p in [*ps.train, ps.eval_know, ps.eval_ling]:
        assert languages.script_shares(p) == {"Greek": 1.0}, p
    assert all(_norm(ev) not in _norm(p) for ev in (ps.eval_know, ps.eval_ling) for p in ps.train)
    assert ps.draw("d_know:abc", 0) in ps.train


def test_greek_metrics(greek):
    # accents folded (capitals carry none), final sigma = sigma, punctuation dropped
    assert metrics.tokenize("ΕΙΚΟΝΑ: οι εικόνες του παραθύρου.", "el") == [
        "εικονα",
        "οι",
        "εικονεσ",
        "του",
        "παραθυρου",
    ]
    ref = ["Το παράθυρο διαλόγου δημιουργίας νέου έργου στο OmegaT", "Δύο ευθείες γραμμές σχηματίζουν ένα Χ"]
    assert metrics.score_corpus(ref, ref, "el")["bleu"] == pytest.approx(100.0)
    upper = [r.upper() for r in ref]  # Greek capitals drop the accents: still the same words
    same = metrics.score_corpus(upper, ref, "el")
    assert same["keyword_accuracy"] == same["rouge_l"] == same["meteor"] == 1.0 and same["stemmer"] == "greek"
    # no exact token in common (other case and number): only the Greek stemmer's stem stage matches them
    hyp, ref1 = ["Τα παράθυρα των διαλόγων"], ["Το παράθυρο του διαλόγου"]
    s = metrics.score_corpus(hyp, ref1, "el")
    assert s["bleu"] == s["rouge_l"] == s["keyword_accuracy"] == 0.0 and s["meteor"] > 0.5
    partial = metrics.score_corpus(
        ["Ένα παράθυρο του OmegaT με στατιστικά"], ["Πίνακας με τα στατιστικά αντιστοιχιών ενός έργου στο OmegaT"], "el"
    )
    assert 0 < partial["keyword_accuracy"] < 1 and 0 < partial["rouge_l"] < 1 and 0 < partial["bleu"] < 100
    # and through the evaluation job's scorer (Table 3 rows), D_know and D_ling items
    from mella.evaluation import Item, Output, score

    items = [
        Item("el", src, str(i), "", b"", prompts_for("el").eval_know, r)
        for i, (src, r) in enumerate([("d_know", ref[0]), ("d_know", ref[1]), ("d_ling", ref1[0])])
    ]
    rows, facts = score(items, [Output(i.lang, i.source, i.id, 0, "MELLA", "m", i.reference) for i in items])
    assert facts["el"]["stemmer"] == "greek" and facts["el"]["tokenizer"] == "el:whitespace_punct"
    assert {r["metric"]: round(r["value"], 6) for r in rows} == {
        "keyword_accuracy": 100,
        "bleu": 100,
        "rouge_l": 100,
        "meteor": 100,
    }


def test_greek_web_provenance():
    rows = list(csv.DictReader((WEB / "MANIFEST.tsv").open(encoding="utf-8"), delimiter="\t"))
    licences = (WEB / "LICENSES.md").read_text(encoding="utf-8")
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(WEB).as_posix() for p in (WEB / "img").iterdir())
    for r in rows:
        assert r["source"].startswith("deb:") and f"`{r['path']}`" in licences and r["license"] in licences
        assert hashlib.sha256((WEB / r["path"]).read_bytes()).hexdigest() == r["sha256"]
        assert "x".join(map(str, Image.open(WEB / r["path"]).size)) == r["wxh"]


@pytest.fixture(scope="module")
def greek_run(tmp_path_factory):
    """build_corpus on the Greek web, default languages, with $MELLA_LANGUAGES set before Ray starts."""
    import ray

    from mella.runtime import init_ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(languages.ENV_VAR, str(LANG_FILE))
        if ray.is_initialized():
            ray.shutdown()
        init_ray(num_cpus=2)
        try:
            out = tmp_path_factory.mktemp("el") / "out"
            with serve_directory(WEB) as url:
                funnel = build(
                    out, seeds=WEB / "seeds.txt", base_url=url, crawl={"read_timeout_s": 30.0, "total_timeout_s": 90.0}
                )
            yield {"out": out, "funnel": funnel}
        finally:
            ray.shutdown()


@pytest.mark.slow
def test_greek_pages_through_build_corpus(greek_run):
    out = greek_run["out"]
    rows = read_dir(out / "d_know", ["lang", "page_url", "image_url", "alt_text", "page_lang", "width", "height"])
    assert {(path_of(r["image_url"]), r["alt_text"]) for r in rows} == EXPECTED
    assert {r["lang"] for r in rows} == {"el"} and all(r["width"] > 256 and r["height"] > 256 for r in rows)
    # gimp.html declares no language: fastText's line votes (label "el", from the data file) decide
    assert {r["page_lang"].split("(")[0] for r in rows if path_of(r["page_url"]) == "/gimp.html"} == {"lid-lines:el"}
    rejects = {(path_of(r["image_url"]), r["stage"], r["reason"]) for r in read_dir(out / "rejects") if r["image_url"]}
    assert ("/img/home.png", "alt_text", "alt_boilerplate") in rejects  # "Αρχική σελίδα": Greek boilerplate, from data
    assert ("/img/straight-lines-2.png", "alt_text", "alt_boilerplate") in rejects  # "Εικόνα"
    assert ("/img/inst-complete-txt.png", "langid", "alt_script_mismatch") in rejects  # English alt on a Greek page
    assert greek_run["funnel"]["d_know_total"] == len(EXPECTED)
