"""Per-language facts as data (mella.languages): the packaged file, user files, validation at start."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mella import languages
from mella.config import BuildConfig
from mella.crawl import read_seeds
from mella.stages.filters.alt_text import alt_problem
from mella.stages.filters.langid import check_alt_language

PACKAGED = ["ar", "cs", "hu", "ko", "ru", "sr", "th", "vi"]
SEEDS = Path(languages.__file__).parent / "data" / "seeds"


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    """Write ``{"targets": {code: entry}}`` to a user languages file named by $MELLA_LANGUAGES."""

    def write(targets: dict, **files: str) -> Path:
        for name, text in files.items():
            (tmp_path / name).write_text(text, encoding="utf-8")
        path = tmp_path / "languages.yaml"
        path.write_text(yaml.safe_dump({"targets": targets}, allow_unicode=True), encoding="utf-8")
        monkeypatch.setenv(languages.ENV_VAR, str(path))
        return path

    return write


def entry(**kw) -> dict:
    base = {"name": "Amharic", "fasttext": ["am"], "scripts": ["Ethiopic"], "metric_tokenizer": "whitespace_punct"}
    return {**base, **kw}


def test_packaged_languages(monkeypatch):
    monkeypatch.delenv(languages.ENV_VAR, raising=False)
    reg = languages.registry()
    assert list(reg.targets) == PACKAGED == languages.default_targets() == BuildConfig(output="x").langs
    assert list(reg.source) == ["en"] and languages.language("en").deepl == "EN"
    paper = yaml.safe_load((SEEDS / "paper_sites.yaml").read_text(encoding="utf-8"))
    for code, lang in reg.targets.items():
        assert lang.seeds.parent == SEEDS and [s.url for s in read_seeds(str(lang.seeds))] == paper[code]
        assert lang.prompts.name == "prompts.yaml" and lang.metric_tokenizer and lang.boilerplate
    assert alt_problem("Next") == alt_problem("Předchozí") == alt_problem("слика") == "alt_boilerplate"


def test_a_new_script_is_known_from_unicode_data(user_file):
    # Ethiopic was in no hand table: its letters once counted as "Other" and every alt was rejected
    user_file({"am": entry()})
    assert languages.script_shares("የኢትዮጵያ ባንዲራ") == {"Ethiopic": 1.0}
    d = check_alt_language("የአዲስ አበባ ከተማ ፎቶግራፍ", "am")
    assert d.keep and d.detail.startswith("script:Ethiopic")
    assert not check_alt_language("A photo of Addis Ababa", "am").keep
    assert "am" in BuildConfig(output="x").langs and BuildConfig(output="x", langs=["am"]).langs == ["am"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"scripts": ["Cyrilic"]}, r"'am' \(Amharic\).*unknown Unicode script 'Cyrilic'"),
        ({"stemmer": "amharic"}, r"'am'.*unknown Snowball stemmer 'amharic'"),
        ({"metric_tokenizer": "spaces"}, r"'am'.*metric_tokenizer"),
        ({"colour": "red"}, r"'am'.*colour.*Extra inputs"),
        ({"distinctive": "ሀx"}, r"'am'.*distinctive letters 'x' are not in scripts \['Ethiopic'\]"),
        ({"prompts": "missing.yaml"}, r"'am'.*prompts file .*missing.yaml.* not found"),
        ({"fasttext": ["ru"]}, r"fasttext 'ru' is claimed by both 'ru' and 'am'"),
        ({"scripts": []}, r"target language 'am' lacks scripts"),
    ],
)
def test_bad_language_fails_at_start_naming_it(user_file, bad, match):
    user_file({"am": entry(**bad)})
    with pytest.raises(languages.LanguageFileError, match=match):
        BuildConfig(output="x")  # the default languages come from the files: the error comes at start


def test_user_file_brings_its_own_prompts_and_replaces_whole_entries(user_file):
    pool = {
        "am": {
            "eval_know": "ስዕሉን ይግለጹ",
            "eval_ling": "ይህን ምስል ይግለጹ",
            "train": [f"ጥያቄ ቁጥር {'ሀለሐመሠረሰሸቀበ'[i % 10]}{'ሀለሐመሠረሰሸቀበ'[i // 10]}" for i in range(20)],
        }
    }
    user_file(
        {
            "am": entry(prompts="am_prompts.yaml"),
            "hu": {**entry(name="Magyar"), "fasttext": ["hu"], "scripts": ["Latin"]},
        },
        **{"am_prompts.yaml": yaml.safe_dump(pool, allow_unicode=True)},
    )
    from mella.train.prompts import prompts_for

    assert prompts_for("am").eval_ling == "ይህን ምስል ይግለጹ" and prompts_for("cs").eval_ling
    assert languages.language("hu").name == "Magyar" and languages.language("hu").deepl is None
    with pytest.raises(KeyError, match="no prompt pool for 'hu'"):  # its prompts.yaml (beside the file) has none
        prompts_for("hu")


def test_unreadable_or_malformed_file(tmp_path, monkeypatch):
    monkeypatch.setenv(languages.ENV_VAR, str(tmp_path / "nope.yaml"))
    with pytest.raises(languages.LanguageFileError, match="cannot read"):
        languages.registry()
    (tmp_path / "flat.yaml").write_text("am: {name: Amharic}\n", encoding="utf-8")
    monkeypatch.setenv(languages.ENV_VAR, str(tmp_path / "flat.yaml"))
    with pytest.raises(languages.LanguageFileError, match="'targets' and/or 'source'"):
        languages.registry()
    with pytest.raises(KeyError, match="MELLA_LANGUAGES"):
        monkeypatch.delenv(languages.ENV_VAR)
        languages.language("xx")
