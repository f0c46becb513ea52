"""An alt-text filter added without touching the platform: this file, plus one line in the plan
(``stages.extra: ["alt_min_words:MinWordsFilter@langid min_words=3"]`` or ``--stage`` with the same text).
It is the example of docs/architecture.md ("Add a stage").

``routable = True``: the filter judges the alt-text, not the image, so with D_ling on a row it rejects keeps its
image and goes to D_ling to be captioned (``d_ling_reason = "alt_min_words:too_few_words"``), as ``alt_text``
and ``langid`` do; with D_ling off it is dropped under this stage's name.
"""

from __future__ import annotations

from mella.stages.base import Filter


class MinWordsFilter(Filter):
    """Reject alt-texts of fewer than ``min_words`` whitespace-separated words (reason ``too_few_words``)."""

    name = "alt_min_words"
    reads = ("alt_text",)
    routable = True

    def __init__(self, min_words: int = 2) -> None:
        self.min_words = min_words

    def filter(self, row: dict) -> tuple[str, str] | None:
        n = len((row.get("alt_text") or "").split())
        return None if n >= self.min_words else ("too_few_words", f"{n} word(s) < {self.min_words}")
