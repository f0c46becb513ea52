"""Prompt pool for SFT (paper 3.3, appendix C.2) and the two evaluation prompts (paper 4.1.2).

The text lives in ``mella/data/prompts.yaml`` (one entry per language), or in the file a language's
``prompts`` key names in ``languages.yaml`` (a user's language brings its own file, see
:mod:`mella.languages`); this module only loads and validates it, and draws a training prompt per
sample. Kept free of torch so evaluation can import it.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from dataclasses import dataclass
from functools import cache

import yaml

from mella.languages import load_languages

#: Paper 3.3: "we first manually crafted 20 prompts for each language".
POOL_SIZE = 20


def _norm(text: str) -> str:
    """NFC, case-folded, letters/digits/marks only: used to compare prompts for leakage."""
    text = unicodedata.normalize("NFC", text).casefold()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LNM")


@dataclass(frozen=True)
class PromptSet:
    """One language's prompts: ``train`` (the pool P), ``eval_know`` and ``eval_ling``."""

    lang: str
    train: tuple[str, ...]
    eval_know: str
    eval_ling: str

    def draw(self, key: str, seed: int = 0) -> str:
        """The training prompt for one sample: uniform over the pool, deterministic in ``(seed, key)``.

        ``key`` is a stable sample key (e.g. ``"d_know:" + sha256``), so a restarted run or another
        worker draws the same prompt for the same sample.
        """
        digest = hashlib.sha256(f"{seed}\x1f{key}".encode()).digest()
        return random.Random(digest).choice(self.train)


def _validate(lang: str, entry: dict) -> PromptSet:
    try:
        train, eval_know, eval_ling = entry["train"], entry["eval_know"], entry["eval_ling"]
    except (TypeError, KeyError) as exc:
        raise ValueError(f"prompts.yaml[{lang}]: needs keys train, eval_know, eval_ling") from exc
    if len(train) != POOL_SIZE or len(set(map(_norm, train))) != POOL_SIZE:
        raise ValueError(f"prompts.yaml[{lang}]: train needs {POOL_SIZE} distinct prompts, has {len(train)}")
    if any(not isinstance(p, str) or not p.strip() for p in [*train, eval_know, eval_ling]):
        raise ValueError(f"prompts.yaml[{lang}]: empty or non-string prompt")
    for ev in (eval_know, eval_ling):
        if any(_norm(ev) in _norm(p) for p in train):
            raise ValueError(f"prompts.yaml[{lang}]: evaluation prompt {ev!r} leaks into the training pool")
    return PromptSet(lang, tuple(train), eval_know, eval_ling)


@cache
def _load_file(path: str) -> dict[str, PromptSet]:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping {{lang: {{train, eval_know, eval_ling}}}}")
    return {str(lang): _validate(str(lang), entry) for lang, entry in data.items()}


def load_prompts(path: str | None = None) -> dict[str, PromptSet]:
    """Prompt sets, validated: every entry of ``path``; by default, each target language's set from the
    file its ``prompts`` key names (``mella/data/prompts.yaml`` unless the language names another).

    Raises:
        ValueError: a language lacks a key, has other than 20 distinct training prompts, or an
            evaluation prompt occurs (normalised) inside a training prompt.
    """
    if path is not None:
        return _load_file(str(path))
    out = {}
    for code, lang in load_languages().items():
        sets = _load_file(str(lang.prompts)) if lang.prompts else {}
        if code in sets:
            out[code] = sets[code]
    return out


def prompts_for(lang: str) -> PromptSet:
    """The prompt set of ``lang``. Raises ``KeyError`` naming the known languages."""
    sets = load_prompts()
    if lang not in sets:
        raise KeyError(f"no prompt pool for {lang!r}; known: {sorted(sets)}")
    return sets[lang]
