"""Per-language facts, loaded and validated once: ``mella/data/languages.yaml`` plus the user's files.

Every fact the platform needs about a language (fastText labels and confusable neighbours, Unicode
scripts, distinctive letters, HTML tags, NLLB/M2M100/Marian/DeepL/Google codes, metric tokenizer,
transliteration, Snowball stemmer, boilerplate alt-texts, seeds file, prompt-pool file) is data; no
language list lives in code. ``$MELLA_LANGUAGES`` names extra YAML files of the same shape
(``os.pathsep``-separated); their entries are added, or replace a packaged entry of the same code
whole, so a user adds a language without forking (README, "Add a language"). Ray workers started by
:func:`mella.runtime.init_ray` get the variable too.

Validation (pydantic, at first use; errors name the file and the language): unknown keys; a target
without ``name``, ``fasttext``, ``scripts`` or ``metric_tokenizer``; a script that Unicode does not
know (checked with the ``regex`` module's ``\\p{Script_Extensions=...}``, i.e. its Unicode tables, not
a hand table); a stemmer PyStemmer lacks; a ``distinctive`` letter outside the language's
scripts; a fastText label or HTML tag claimed by two targets; a seeds or prompts file that is missing.
"""

from __future__ import annotations

import functools
import os
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import regex
import Stemmer
import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from mella.resources import Strict

#: environment variable naming extra language files (``os.pathsep``-separated paths)
ENV_VAR = "MELLA_LANGUAGES"
_PACKAGE_FILE = "data/languages.yaml"


class LanguageFileError(ValueError):
    """A languages file is unreadable or invalid; the message names the file and the language."""


class Language(Strict):
    """One language's facts (keys documented at the top of ``languages.yaml``)."""

    model_config = ConfigDict(frozen=True)  # unknown keys are refused by Strict

    code: str = Field(pattern=r"^[a-z]{2,3}$", description="ISO 639-1/-3 code = BCP 47 primary subtag")
    name: str = Field(min_length=1)
    default: bool = Field(True, description="built when no languages are given")
    fasttext: tuple[str, ...] = ()
    confusable: tuple[str, ...] = ()
    scripts: tuple[str, ...] = ()
    distinctive: str = ""
    html_codes: tuple[str, ...] = ()
    nllb: str | None = None
    m2m100: str | None = None
    marian: str | None = None
    deepl: str | None = None
    google: str | None = None
    metric_tokenizer: Literal["whitespace_punct", "pythainlp_newmm", "kiwi_morphemes"] | None = None
    metric_transliteration: dict[str, str] = Field(default_factory=dict)
    stemmer: str | None = None
    boilerplate: tuple[str, ...] = ()
    seeds: Path | None = None
    prompts: Path | None = None

    @field_validator("html_codes")
    @classmethod
    def _norm_tags(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(c.lower().replace("_", "-") for c in v)

    @field_validator("scripts")
    @classmethod
    def _known_scripts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for s in v:
            script_pattern(s)  # raises ValueError naming the script
        return v

    @field_validator("stemmer")
    @classmethod
    def _known_stemmer(cls, v: str | None) -> str | None:
        if v is not None and v not in Stemmer.algorithms():
            raise ValueError(f"unknown Snowball stemmer {v!r}; PyStemmer has {Stemmer.algorithms()} (or null)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_tags(cls, data: dict) -> dict:
        if isinstance(data, dict) and not data.get("html_codes") and data.get("code"):
            data = {**data, "html_codes": [data["code"]]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Language:
        stray = [ch for ch in self.distinctive if ch.isalpha() and script_of(ch, self.scripts) is None]
        if stray:
            raise ValueError(f"distinctive letters {''.join(stray)!r} are not in scripts {list(self.scripts)}")
        for key in ("seeds", "prompts"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ValueError(f"{key} file {str(path)!r} not found")
        return self


class Languages(Strict):
    """All languages: ``targets`` (corpus languages) and ``source`` (English: captions, MT source)."""

    model_config = ConfigDict(frozen=True)  # unknown keys are refused by Strict

    targets: dict[str, Language]
    source: dict[str, Language] = Field(default_factory=dict)
    files: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _no_clash(self) -> Languages:
        both = set(self.targets) & set(self.source)
        if both:
            raise ValueError(f"language(s) {sorted(both)} are both a target and a source language")
        for key in ("fasttext", "html_codes"):
            owner: dict[str, str] = {}
            for code, lang in self.targets.items():
                for label in getattr(lang, key):
                    if owner.setdefault(label, code) != code:
                        raise ValueError(f"{key} {label!r} is claimed by both {owner[label]!r} and {code!r}")
        return self

    def get(self, code: str) -> Language:
        """The target or source language ``code``. Raises ``KeyError`` naming the known ones and files."""
        lang = self.targets.get(code) or self.source.get(code)
        if lang is None:
            raise KeyError(
                f"language {code!r} is not configured; known: {sorted({**self.targets, **self.source})} "
                f"(from {', '.join(self.files)}; add one with ${ENV_VAR}, see README 'Add a language')"
            )
        return lang

    def all(self) -> dict[str, Language]:
        """Targets then source languages, ``{code: Language}``."""
        return {**self.targets, **self.source}


_REQUIRED_FOR_TARGETS = ("fasttext", "scripts", "metric_tokenizer")


def _entries(path: str, text: str) -> dict[str, dict[str, dict]]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise LanguageFileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"targets", "source"}:
        raise LanguageFileError(f"{path}: expected a mapping with keys 'targets' and/or 'source', got {list(data)[:5]}")
    base = Path(path).parent
    out: dict[str, dict[str, dict]] = {}
    for section in ("targets", "source"):
        for code, entry in (data.get(section) or {}).items():
            if not isinstance(entry, dict):
                raise LanguageFileError(f"{path}: {section}.{code}: expected a mapping of facts")
            entry = {**entry, "code": str(code)}
            for key in ("seeds", "prompts"):  # paths are relative to the file that names them
                if entry.get(key) is not None:
                    entry[key] = base / str(entry[key])
            if section == "targets":
                missing = [k for k in ("name", *_REQUIRED_FOR_TARGETS) if not entry.get(k)]
                if missing:
                    raise LanguageFileError(f"{path}: target language {code!r} lacks {', '.join(missing)}")
                if "prompts" not in entry and (base / "prompts.yaml").is_file():
                    entry["prompts"] = base / "prompts.yaml"
            out.setdefault(section, {})[str(code)] = entry
    return out


@functools.lru_cache(maxsize=8)
def _load(extra: str) -> Languages:
    package = resources.files("mella").joinpath(_PACKAGE_FILE)
    sources = [(str(package), package.read_text("utf-8"))]
    for p in (x for x in extra.split(os.pathsep) if x.strip()):
        try:
            sources.append((os.path.abspath(p), Path(p).read_text("utf-8")))
        except OSError as exc:
            raise LanguageFileError(f"${ENV_VAR}: cannot read {p!r}: {exc.strerror}") from exc
    merged: dict[str, dict[str, Language]] = {"targets": {}, "source": {}}
    for path, text in sources:
        for section, entries in _entries(path, text).items():
            for code, entry in entries.items():
                try:
                    lang = Language.model_validate(entry)
                except ValidationError as exc:
                    errs = "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg'].removeprefix('Value error, ')}"
                        for e in exc.errors()
                    )
                    kind = "target" if section == "targets" else "source"
                    raise LanguageFileError(f"{path}: {kind} language {code!r} ({entry.get('name')}): {errs}") from None
                other = "source" if section == "targets" else "targets"
                merged[other].pop(code, None)  # a later file may move a language between sections
                merged[section][code] = lang
    try:
        return Languages(targets=merged["targets"], source=merged["source"], files=tuple(p for p, _ in sources))
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise LanguageFileError(f"{', '.join(p for p, _ in sources)}: {msg}") from None


def registry() -> Languages:
    """All configured languages (package file + ``$MELLA_LANGUAGES``), validated once per file set.

    Raises:
        LanguageFileError: a file is unreadable or invalid (message names file, language and fact).
    """
    return _load(os.environ.get(ENV_VAR, ""))


def load_languages() -> dict[str, Language]:
    """The target languages, ``{code: Language}`` in file order. Raises as :func:`registry`."""
    return registry().targets


def language(code: str) -> Language:
    """A target or source language (``en``) by code. Raises ``KeyError`` naming the known codes."""
    return registry().get(code)


def default_targets() -> list[str]:
    """Codes of the target languages with ``default: true``: what a build covers when none are given."""
    return [code for code, lang in load_languages().items() if lang.default]


def normalise_lang_tag(tag: str | None) -> str | None:
    """Map an HTML/HTTP language tag to a language code.

    ``"sr-Latn-RS"`` → ``"sr"``, ``"sr_latin"`` → ``"sr"``, ``"cs-CZ"`` → ``"cs"``, ``"en-US"`` → ``"en"``.
    Returns None for empty or malformed tags. Tags of configured languages are matched against
    their ``html_codes``; any other tag returns its primary subtag (BCP 47, RFC 5646 section 2.1).
    """
    if not tag:
        return None
    t = tag.strip().lower().replace("_", "-").split(",")[0].split(";")[0].strip()
    if not t or not re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]{1,8})*", t):
        return None
    for code, lang in load_languages().items():
        if t in lang.html_codes:
            return code
    return t.split("-")[0]


# ---------------------------------------------------------------------------------- scripts
@functools.cache
def script_pattern(script: str) -> regex.Pattern:
    """Compiled ``\\p{Script_Extensions=<script>}`` (the ``regex`` module's Unicode data, UAX #24).

    Script_Extensions rather than Script so that letters shared by a few scripts count for each of them
    (Arabic tatweel U+0640 is Script=Common but Script_Extensions=Arabic, Syriac, ...).

    Raises:
        ValueError: ``script`` is not a Unicode script name (e.g. ``"Cyrilic"``), with the names to use.
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z_ ]*", script or ""):
        raise ValueError(f"bad Unicode script name {script!r}")
    try:
        return regex.compile(rf"\p{{Script_Extensions={script}}}")
    except regex.error:
        raise ValueError(
            f"unknown Unicode script {script!r} (Unicode Script property names: Latin, Cyrillic, "
            "Greek, Arabic, Hebrew, Devanagari, Hangul, Han, Thai, Georgian, Armenian, ...)"
        ) from None


@functools.lru_cache(maxsize=65536)
def script_of(ch: str, scripts: tuple[str, ...]) -> str | None:
    """The first of ``scripts`` (Unicode script names) whose Script_Extensions hold ``ch``; None if none."""
    for s in scripts:
        if script_pattern(s).match(ch):
            return s
    return None


def _configured_scripts() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for lang in registry().all().values() for s in lang.scripts))


def script_shares(text: str) -> dict[str, float]:
    """Share of letters per Unicode script, e.g. ``{"Latin": 0.8, "Cyrillic": 0.2}``.

    Only letters count (``str.isalpha``: Unicode categories L*); digits, marks, punctuation and spaces
    are ignored. Scripts are those of the configured languages (Unicode Script_Extensions via ``regex``);
    letters of any other script count as ``"Other"``. Empty dict if ``text`` has no letters.
    """
    scripts = _configured_scripts()
    counts: dict[str, int] = {}
    total = 0
    for ch in text:
        if not ch.isalpha():
            continue
        s = script_of(ch, scripts) or "Other"
        counts[s] = counts.get(s, 0) + 1
        total += 1
    return {s: c / total for s, c in counts.items()} if total else {}
