"""Prompt pool (paper 3.3, C.2) and evaluation prompts (paper 4.1.2): completeness, leakage, scripts."""

import unicodedata
from collections import Counter

import pytest

from mella.train.prompts import POOL_SIZE, _norm, _validate, load_prompts, prompts_for

LANGS = ["ar", "cs", "hu", "ko", "ru", "sr", "th", "vi"]
# Unicode script each language's prompts must be written in (Serbian: Cyrillic, see prompts.yaml)
SCRIPT = {
    "ar": "ARABIC",
    "cs": "LATIN",
    "hu": "LATIN",
    "ko": "HANGUL",
    "ru": "CYRILLIC",
    "sr": "CYRILLIC",
    "th": "THAI",
    "vi": "LATIN",
}


def test_every_language_has_pool_and_eval_prompts():
    sets = load_prompts()
    assert set(LANGS) <= set(sets)
    for lang in LANGS:
        ps = sets[lang]
        assert len(ps.train) == POOL_SIZE == len({_norm(p) for p in ps.train})
        assert ps.eval_know and ps.eval_ling and _norm(ps.eval_know) != _norm(ps.eval_ling)


@pytest.mark.parametrize("lang", LANGS)
def test_eval_prompts_never_in_training_pool(lang):
    ps = prompts_for(lang)
    for ev in (ps.eval_know, ps.eval_ling):
        assert all(_norm(ev) not in _norm(p) for p in ps.train)


@pytest.mark.parametrize("lang", LANGS)
def test_prompts_are_in_the_language_script(lang):
    ps = prompts_for(lang)
    for p in [*ps.train, ps.eval_know, ps.eval_ling]:
        scripts = Counter(unicodedata.name(ch).split()[0] for ch in p if ch.isalpha())
        assert scripts and scripts.most_common(1)[0][0] == SCRIPT[lang], (lang, p, scripts)
        if lang == "sr":  # Cyrillic only, no Latin letters mixed in
            assert set(scripts) == {"CYRILLIC"}, p


def test_paper_eval_prompts_kept_verbatim():
    # paper 4.1.2 (Hungarian) and figure 9 (Korean) quote these exact prompts
    assert prompts_for("hu").eval_know == "Ismertesse a képet, mutasson rá a rajta lévő személyekre és tárgyakra!"
    assert prompts_for("ko").eval_know == "그림에 있는 사람과 사물을 가리키며 그림을 설명해 보세요"


def test_draw_is_deterministic_and_covers_the_pool():
    ps = prompts_for("hu")
    assert ps.draw("d_know:abc", 1) == ps.draw("d_know:abc", 1)
    drawn = Counter(ps.draw(f"d_know:{i}", 0) for i in range(2000))
    assert set(drawn) == set(ps.train)
    assert max(drawn.values()) < 3 * min(drawn.values())  # roughly uniform


def test_unknown_language_and_bad_entries_are_rejected():
    with pytest.raises(KeyError, match="known"):
        prompts_for("xx")
    entry = {"train": [f"Kérdés {i}" for i in range(POOL_SIZE)], "eval_know": "x", "eval_ling": "Kérdés 3"}
    with pytest.raises(ValueError, match="leaks"):
        _validate("hu", entry)
    with pytest.raises(ValueError, match="20 distinct"):
        _validate("hu", {**entry, "train": entry["train"][:19], "eval_ling": "y"})
    with pytest.raises(ValueError, match="needs keys"):
        _validate("hu", {"train": []})
