"""Evaluation metrics on lists of strings: keyword accuracy, BLEU, ROUGE-L, METEOR (paper 4.1.2, Table 3).

Keyword accuracy is scored on D_know, BLEU / ROUGE-L / METEOR on D_ling. Every metric runs on the
same language-aware tokens, because the libraries' own tokenisers are wrong for most of our scripts:
rouge-score's default keeps only ``[a-z0-9]`` (Russian, Arabic, Thai, Korean score 0), sacrebleu's
``13a``/``intl`` leave Thai unsegmented, ``flores200``/``spm`` download a model, ``ko-mecab`` needs
MeCab-ko, and nltk's ``word_tokenize`` needs ``punkt_tab`` data that no PyPI package ships.

Tokens, per language (``metric_tokenizer``, ``metric_transliteration`` and ``stemmer`` of the language in
``mella/data/languages.yaml``, a target or the source language ``en``; as shipped):

=====  ==================  =============================================================================
lang   tokenizer           what happens (always: decimal digits of any script to ASCII,
                           casefold, punctuation and symbols dropped)
=====  ==================  =============================================================================
ar     whitespace_punct    NFKC (folds presentation forms), tatweel U+0640 removed, split on anything
                           that is not a letter/mark/number, so Arabic ، ؛ ؟ separate words.
                           Harakat are kept (they are marks inside the word).
cs hu  whitespace_punct    NFKC, casefold, split on non letter/mark/number (diacritics kept).
ru en  whitespace_punct    same.
sr     whitespace_punct    same, then Cyrillic transliterated to Gaj's Latin (љ→lj, њ→nj, џ→dž ...;
                           ``metric_transliteration``), so a Latin answer to a Cyrillic reference is
                           scored on its words, not its script.
vi     whitespace_punct    same; tokens are syllables (no word segmenter), as in WMT/IWSLT vi BLEU.
th     pythainlp_newmm     NFC (not NFKC: it splits SARA AM U+0E33 and breaks the dictionary), casefold,
                           pythainlp ``word_tokenize(engine="newmm")`` (dictionary shipped, offline),
                           then each word split as above (drops spaces and punctuation).
ko     kiwi_morphemes      NFC (not NFKC: it turns compatibility jamo into conjoining jamo), casefold,
                           kiwipiepy morphemes (forms of ``Kiwi(load_multi_dict=False).tokenize``:
                           먹었다 → 먹 었 다), then split as above. Alternative: eojeol (whitespace) tokens, which
                           penalise every particle/ending difference as a whole-word miss.
=====  ==================  =============================================================================

Metrics (units: BLEU 0-100 as sacrebleu reports it; the others 0-1):

- ``bleu``: sacrebleu ``BLEU(tokenize="none", effective_order=True)`` corpus BLEU on the tokens joined by
  spaces; ``effective_order`` so that a corpus of sentences shorter than 4 tokens is not 0 by definition.
  Report ``bleu_signature`` together with ``tokenizer`` (``tok:none`` means "tokenised by mella.metrics").
- ``rouge_l``: rouge-score ``RougeScorer(["rougeL"], tokenizer=...)`` with our tokens, mean F-measure
  (beta = 1) over pairs.
- ``meteor``: nltk ``single_meteor_score`` (Lavie & Agarwal 2007: alpha 0.9, beta 3, gamma 0.5) on our
  tokens, mean over pairs. Stages: exact; stem with the language's PyStemmer Snowball ``stemmer`` (ar, cs,
  hu, ru, sr on the Latin transliteration, en; none for ko, th, vi: Snowball has none); WordNet synonyms only
  when a WordNet is passed, for ``en`` only (nltk calls ``synsets(word)`` in English, on the stems left
  over by the stem stage). WordNet is never required or downloaded: without one an object with no
  synsets is passed, so nltk's lazy ``nltk.corpus.wordnet`` is never loaded. nltk gives a perfect m-token
  match ``1 - 0.5 / m**3`` (0.5 for one token); Meteor 1.5 (Denkowski & Lavie 2014; MeteorScorer.java
  sets fragmentation to 0 when both sides match completely in one chunk) gives 1.0, and so do we for
  identical token sequences. (Not for complete one-chunk stem matches: nltk weights stem matches like
  exact ones, Meteor 1.5 does not.)
- ``keyword_accuracy`` (paper 4.1.2, after DeFactoNLP, Reddy et al. 2018): the top-k keywords of each
  reference by TF-IDF over the language's reference corpus (default: the references themselves), and
  the share of them found among the prediction's tokens, averaged over pairs. See ``keywords``.

Errors: ``ValueError`` for an unknown language, lists of different or zero length, or a reference that
has no tokens; ``TypeError`` for items that are not ``str``. An empty prediction is valid and scores 0.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections import Counter
from collections.abc import Sequence

import regex
import sacrebleu
import Stemmer
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer

from mella import languages

_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_DIGIT = regex.compile(r"(?![0-9])\p{Nd}")  # decimal digits of any script (Arabic-Indic, Thai, ...)
_TATWEEL = "\u0640"  # Arabic tatweel (kashida): elongation only, removed


def _fold(text: str) -> str:
    text = text.replace(_TATWEEL, "")
    return _DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), text) if _DIGIT.search(text) else text


def _language(lang: str) -> languages.Language:
    try:
        language = languages.language(lang)
    except KeyError as exc:
        raise ValueError(f"no metric tokenizer for language {lang!r}: {exc.args[0]}") from None
    if language.metric_tokenizer is None:
        raise ValueError(f"no metric tokenizer for language {lang!r}: languages.yaml gives it no metric_tokenizer")
    return language


@functools.lru_cache(maxsize=64)
def _transliteration(table: tuple) -> dict:
    return str.maketrans(dict(table))


def tokenizer_name(lang: str) -> str:
    """Name of the metric tokenizer for ``lang`` (ISO 639-1). Raises ``ValueError`` if unknown."""
    return _language(lang).metric_tokenizer


def stemmer_name(lang: str) -> str:
    """PyStemmer Snowball algorithm of METEOR's stem stage for ``lang`` (``"none"`` when it has none).
    Raises ``ValueError`` if the language is unknown."""
    return _language(lang).stemmer or "none"


def normalize(text: str, lang: str) -> str:
    """Unicode-normalised, casefolded ``text`` as the tokenizers see it (see module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    language = _language(lang)
    form = "NFKC" if language.metric_tokenizer == "whitespace_punct" else "NFC"
    text = _fold(unicodedata.normalize(form, text)).casefold()
    if language.metric_transliteration:
        text = text.translate(_transliteration(tuple(language.metric_transliteration.items())))
    return text


@functools.cache
def _kiwi():
    from kiwipiepy import Kiwi  # ~1.5 s and ~200 MB to load: only when Korean is scored

    # No multi-word dictionary: its entries ("파일 탐색기") are split on the space by ``_words`` anyway,
    # and skipping it halves load time (about 4 s to 1.5 s here) and saves about 190 MB.
    return Kiwi(load_multi_dict=False)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


@functools.lru_cache(maxsize=200_000)
def _tokens(text: str, lang: str) -> tuple[str, ...]:
    name = tokenizer_name(lang)
    text = normalize(text, lang)
    if name == "whitespace_punct":
        return tuple(_words(text))
    if name == "pythainlp_newmm":
        from pythainlp.tokenize import word_tokenize

        pieces = word_tokenize(text, engine="newmm", keep_whitespace=False)
    elif name == "kiwi_morphemes":
        pieces = [t.form for t in _kiwi().tokenize(text)]
    else:
        raise ValueError(f"unknown metric_tokenizer {name!r} for {lang!r} in languages.yaml")
    return tuple(w for piece in pieces for w in _words(piece))


def tokenize(text: str, lang: str) -> list[str]:
    """Language-aware metric tokens of ``text`` (list of str; punctuation dropped). Cached per (text, lang).

    Raises ``ValueError`` for a language with no metric tokenizer, ``TypeError`` if ``text`` is not str.
    """
    return list(_tokens(text, lang))


def _check(predictions: Sequence[str], references: Sequence[str], lang: str) -> None:
    tokenizer_name(lang)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no references to score")
    for i, (p, r) in enumerate(zip(predictions, references)):
        if not isinstance(p, str) or not isinstance(r, str):
            raise TypeError(f"pair {i}: predictions and references must be str")
        if not _tokens(r, lang):
            raise ValueError(f"reference {i} has no tokens after normalisation: {r!r}")


def keywords(
    references: Sequence[str], lang: str, top_k: int = 5, corpus: Sequence[str] | None = None
) -> list[list[str]]:
    """Top-``top_k`` TF-IDF keywords of each reference (list of token lists, best first).

    For reference d with n tokens, term t with count c(t, d), and a corpus of N documents of which df(t)
    contain t: ``tfidf(t, d) = c(t, d) / n * (ln((1 + N) / (1 + df(t))) + 1)`` (smoothed idf, as in
    scikit-learn's TfidfVectorizer default; written out here so that no scikit-learn is needed). Ties are
    broken by first position in the reference. ``corpus`` defaults to ``references`` (the language's
    reference set, paper 4.1.2); pass a larger reference set of the same language for steadier idf.
    A reference with fewer than ``top_k`` distinct tokens contributes all of them; one with no tokens
    raises ``ValueError``.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    docs = [_tokens(d, lang) for d in (references if corpus is None else corpus)]
    df = Counter(t for doc in docs for t in set(doc))
    n_docs = len(docs)
    out = []
    for ref in references:
        toks = _tokens(ref, lang)
        if not toks:
            raise ValueError(f"reference has no tokens after normalisation: {ref!r}")
        counts = Counter(toks)
        first = {t: i for i, t in reversed(list(enumerate(toks)))}
        score = {t: c / len(toks) * (math.log((1 + n_docs) / (1 + df[t])) + 1) for t, c in counts.items()}
        out.append(sorted(counts, key=lambda t: (-score[t], first[t]))[:top_k])
    return out


def keyword_accuracy(
    predictions: Sequence[str],
    references: Sequence[str],
    lang: str,
    top_k: int = 5,
    corpus: Sequence[str] | None = None,
) -> float:
    """Mean over pairs of (reference keywords present among the prediction's tokens) / (keywords), in [0, 1]."""
    _check(predictions, references, lang)
    kws = keywords(references, lang, top_k=top_k, corpus=corpus)
    hits = []
    for pred, kw in zip(predictions, kws):
        present = set(_tokens(pred, lang))
        hits.append(sum(k in present for k in kw) / len(kw))
    return sum(hits) / len(hits)


def bleu(predictions: Sequence[str], references: Sequence[str], lang: str) -> tuple[float, str]:
    """Corpus BLEU (0-100, one reference per prediction) and the sacrebleu signature string."""
    _check(predictions, references, lang)
    metric = sacrebleu.metrics.BLEU(tokenize="none", effective_order=True)
    hyps = [" ".join(_tokens(p, lang)) for p in predictions]
    refs = [" ".join(_tokens(r, lang)) for r in references]
    return metric.corpus_score(hyps, [refs]).score, str(metric.get_signature())


class _RougeTokenizer:
    """rouge-score tokenizer interface (``tokenize(text) -> list[str]``) over our tokens."""

    def __init__(self, lang: str):
        self.lang = lang

    def tokenize(self, text: str) -> list[str]:
        return list(_tokens(text, self.lang))


def rouge_l(predictions: Sequence[str], references: Sequence[str], lang: str) -> float:
    """Mean ROUGE-L F-measure in [0, 1] (rouge-score, LCS over our tokens)."""
    _check(predictions, references, lang)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_RougeTokenizer(lang))
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


class _Stemmer:
    """nltk stemmer interface (``stem(word) -> str``) over PyStemmer; identity where none exists."""

    def __init__(self, lang: str):
        self.algorithm = _language(lang).stemmer
        self._stemmer = Stemmer.Stemmer(self.algorithm) if self.algorithm else None

    def stem(self, word: str) -> str:
        return self._stemmer.stemWord(word) if self._stemmer else word


class _NoWordNet:
    """WordNet stand-in with no synsets: nltk's synonym stage then matches nothing and never loads WordNet."""

    def synsets(self, word: str) -> list:
        return []


def meteor(predictions: Sequence[str], references: Sequence[str], lang: str, wordnet=None) -> float:
    """Mean sentence METEOR in [0, 1] (nltk, our tokens, per-language stemmer; see module docstring).

    ``wordnet``: an object with nltk's ``synsets(word)`` interface (e.g. ``nltk.corpus.wordnet`` where its
    data is installed) to enable the synonym stage; English only, ``ValueError`` for other languages.
    """
    _check(predictions, references, lang)
    if wordnet is not None and lang != "en":
        raise ValueError(f"WordNet synonyms exist for English only, not {lang!r}")
    stemmer, wn = _Stemmer(lang), wordnet if wordnet is not None else _NoWordNet()
    total = 0.0
    for p, r in zip(predictions, references):
        hyp, ref = _tokens(p, lang), _tokens(r, lang)
        total += 1.0 if hyp == ref else single_meteor_score(ref, hyp, preprocess=str, stemmer=stemmer, wordnet=wn)
    return total / len(references)


def score_corpus(
    predictions: Sequence[str],
    references: Sequence[str],
    lang: str,
    keyword_top_k: int = 5,
    keyword_corpus: Sequence[str] | None = None,
    wordnet=None,
) -> dict:
    """All four metrics for one language.

    Returns a dict: ``lang``, ``n`` (pairs), ``keyword_accuracy``, ``rouge_l``, ``meteor`` (floats in
    [0, 1]), ``bleu`` (0-100), ``bleu_signature`` (sacrebleu), ``tokenizer`` (ours, e.g.
    ``th:pythainlp_newmm``), ``stemmer`` (METEOR stem stage, or ``none``), ``keyword_top_k``.
    Raises as described in the module docstring.
    """
    _check(predictions, references, lang)
    bleu_score, signature = bleu(predictions, references, lang)
    return {
        "lang": lang,
        "n": len(references),
        "keyword_accuracy": keyword_accuracy(predictions, references, lang, keyword_top_k, keyword_corpus),
        "bleu": bleu_score,
        "rouge_l": rouge_l(predictions, references, lang),
        "meteor": meteor(predictions, references, lang, wordnet=wordnet),
        "bleu_signature": signature,
        "tokenizer": f"{lang}:{tokenizer_name(lang)}",
        "stemmer": stemmer_name(lang),
        "keyword_top_k": keyword_top_k,
    }
