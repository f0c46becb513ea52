"""Alt-text usability (paper 3.1.1): reject empty, filename-like and boilerplate alt-text.

Rules, checked on the whitespace-normalised alt (reasons in brackets):
- missing ``alt`` attribute or empty string [``alt_empty``];
- longer than ``filters.max_alt_chars`` characters [``alt_too_long``] (the row keeps the first
  ``max_alt_chars`` characters, so a 1 MB attribute does not travel to the output);
- no letters at all (``"2"``, ``"---"``) or a single letter [``alt_too_short``];
- a file name or camera/CMS id: ``IMG_1234.jpg``, ``DSC01234``, ``photo-2023-01-01.png``,
  ``a1b2c3d4e5f6`` [``alt_filename``];
- boilerplate (case-folded exact match) — generic words for "image/photo/logo/icon/banner", navigation
  labels ("previous", "next", "home") and placeholders ("null", "undefined"), in English and the
  target languages (``boilerplate`` in ``languages.yaml``) [``alt_boilerplate``].
"""

from __future__ import annotations

import re

from mella.languages import registry
from mella.stages.base import Filter

_FILENAME = re.compile(r"^[\w\-.()~%+ ]*\.(jpe?g|jfif|png|gif|webp|svg|bmp|tiff?|avif|heic|ico)(\?.*)?$", re.I)
_CAMERA_ID = re.compile(
    r"^(img|dsc[nf]?|dcim|pict?|pxl|mvimg|photo|image|screenshot|scan|untitled|file)[\s_\-]*\d{2,}\b", re.I
)
_HEX_OR_DIGITS = re.compile(r"^(?=.*\d)[0-9a-f\-_]{8,}$", re.I)

_BOILERPLATE: list = [None, frozenset()]  # [the registry it was built from, the words]


def boilerplate() -> frozenset[str]:
    """Case-folded boilerplate alt-texts: the union of every configured language's ``boilerplate``
    (``languages.yaml``, source language English included: English labels appear on every site)."""
    langs = registry()
    if _BOILERPLATE[0] is not langs:
        _BOILERPLATE[:] = [langs, frozenset(w.casefold() for lg in langs.all().values() for w in lg.boilerplate)]
    return _BOILERPLATE[1]


#: default ``filters.max_alt_chars``, characters
MAX_ALT_CHARS = 1000


def alt_problem(alt: str | None, max_chars: int = MAX_ALT_CHARS) -> str | None:
    """Reason code why ``alt`` is unusable as a D_know text, or None when it is usable."""
    if alt is None or not alt.strip():
        return "alt_empty"
    text = alt.strip()
    if len(text) > max_chars:
        return "alt_too_long"
    if sum(ch.isalpha() for ch in text) < 2:
        return "alt_too_short"
    if _FILENAME.match(text) or _CAMERA_ID.match(text) or _HEX_OR_DIGITS.match(text):
        return "alt_filename"
    if text.casefold().strip(" .:!-–—|") in boilerplate():
        return "alt_boilerplate"
    return None


class AltTextStage(Filter):
    """Drop rows whose alt-text is unusable (reasons: :func:`alt_problem`).

    With ``route_to_d_ling`` (D_ling enabled) such a row is not dropped: it stays active with
    ``d_ling_reason = "alt_text:<reason>"`` so its image goes through the image filters and, if it
    passes them, to captioning (paper 3.1.2: images without usable alt-text form D_ling).
    """

    name = "alt_text"
    reads = ("alt_text",)
    routable = True

    def __init__(self, route_to_d_ling: bool = False, max_chars: int = MAX_ALT_CHARS) -> None:
        self.route_to_d_ling = route_to_d_ling
        self.max_chars = max_chars

    def filter(self, row: dict) -> tuple[str, str] | None:
        problem = alt_problem(row.get("alt_text"), self.max_chars)
        if problem is None:
            return None
        if problem == "alt_too_long":  # cut it: a 1 MB alt attribute must not travel on in the row
            n = len(row["alt_text"])
            row["alt_text"] = row["alt_text"][: self.max_chars]
            return problem, f"{n} characters > {self.max_chars}"
        return problem, repr(row.get("alt_text"))[:200]
