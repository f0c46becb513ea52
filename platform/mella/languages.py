"""Per-language facts (``data/languages.yaml``): codes, scripts, LID labels, MT codes.

Adding a language is adding an entry to ``data/languages.yaml`` (plus seeds and a prompt pool).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources

import yaml

TARGET_LANGS: tuple[str, ...] = ("ar", "cs", "hu", "ko", "ru", "sr", "th", "vi")


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    fasttext: tuple[str, ...]
    confusable: tuple[str, ...]
    scripts: tuple[str, ...]
    html_codes: tuple[str, ...]
    distinctive: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)


@functools.lru_cache(maxsize=1)
def load_languages() -> dict[str, Language]:
    """Parse ``mella/data/languages.yaml`` → ``{code: Language}``.

    Raises:
        KeyError: an entry lacks ``name``, ``fasttext`` or ``scripts``.
    """
    text = resources.files("mella").joinpath("data/languages.yaml").read_text("utf-8")
    out: dict[str, Language] = {}
    for code, e in yaml.safe_load(text).items():
        known = {"name", "fasttext", "confusable", "scripts", "html_codes", "distinctive"}
        out[code] = Language(
            code=code,
            name=e["name"],
            fasttext=tuple(e["fasttext"]),
            confusable=tuple(e.get("confusable") or ()),
            scripts=tuple(e["scripts"]),
            html_codes=tuple(c.lower().replace("_", "-") for c in (e.get("html_codes") or [code])),
            distinctive=e.get("distinctive") or "",
            extra={k: v for k, v in e.items() if k not in known},
        )
    return out


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
    langs = load_languages()
    for code, lang in langs.items():
        if t in lang.html_codes:
            return code
    return t.split("-")[0]


# ---------------------------------------------------------------------------------- scripts
_SCRIPT_PREFIXES = (
    ("ARABIC", "Arabic"),
    ("CYRILLIC", "Cyrillic"),
    ("LATIN", "Latin"),
    ("HANGUL", "Hangul"),
    ("THAI", "Thai"),
    ("CJK", "Han"),
    ("HIRAGANA", "Kana"),
    ("KATAKANA", "Kana"),
    ("GREEK", "Greek"),
    ("HEBREW", "Hebrew"),
    ("DEVANAGARI", "Devanagari"),
    ("GEORGIAN", "Georgian"),
    ("ARMENIAN", "Armenian"),
)


@functools.lru_cache(maxsize=65536)
def _char_script(ch: str) -> str | None:
    try:
        name = unicodedata.name(ch)
    except ValueError:
        return None
    for prefix, script in _SCRIPT_PREFIXES:
        if name.startswith(prefix):
            return script
    return None


def script_shares(text: str) -> dict[str, float]:
    """Share of letters per Unicode script (from ``unicodedata.name``), e.g. ``{"Latin": 0.8, "Cyrillic": 0.2}``.

    Only alphabetic characters count; digits, punctuation and spaces are ignored. Empty dict if none.
    """
    counts: dict[str, int] = {}
    total = 0
    for ch in text:
        if not ch.isalpha():
            continue
        s = _char_script(ch) or "Other"
        counts[s] = counts.get(s, 0) + 1
        total += 1
    return {s: c / total for s, c in counts.items()} if total else {}


def dominant_script(text: str) -> str | None:
    """The script with the largest share of letters in ``text`` (None when there are no letters)."""
    shares = script_shares(text)
    return max(shares, key=shares.get) if shares else None
