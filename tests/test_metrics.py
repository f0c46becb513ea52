"""mella.metrics on hand-checkable pairs in every language (issue 6, acceptance: metric values).

Each language has a reference R, a hypothesis H made from R's words (reordered, some dropped) and a
sentence D sharing no word with R; the expected tokens are written out by hand. Expected values are
computed here independently: BLEU from its closed form and from sacrebleu on the hand tokens, ROUGE-L
from a small LCS function, METEOR from its formula with hand-counted chunks, keyword accuracy from a
TF-IDF written with numpy.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from mella import metrics

# lang: (R, R tokens, H, H tokens, D, D tokens, chunks of H against R)
PAIRS = {
    "ar": (
        "القطة السوداء، تنام على الكرسي الخشبي في الحديقة؟",
        ["القطة", "السوداء", "تنام", "على", "الكرسي", "الخشبي", "في", "الحديقة"],
        "تنام القطة السوداء على الكرسي في الحديقة",
        ["تنام", "القطة", "السوداء", "على", "الكرسي", "في", "الحديقة"],
        "رجل يقرأ كتاباً قديماً.",
        ["رجل", "يقرأ", "كتاباً", "قديماً"],
        4,
    ),
    "cs": (
        "Malý pes běží přes zelenou louku k řece.",
        ["malý", "pes", "běží", "přes", "zelenou", "louku", "k", "řece"],
        "Pes malý běží přes louku k řece",
        ["pes", "malý", "běží", "přes", "louku", "k", "řece"],
        "Stará kočka spí doma.",
        ["stará", "kočka", "spí", "doma"],
        4,
    ),
    "hu": (
        "Egy kis kutya gyorsan fut át zöld mezőn.",
        ["egy", "kis", "kutya", "gyorsan", "fut", "át", "zöld", "mezőn"],
        "Kis egy kutya gyorsan fut át mezőn",
        ["kis", "egy", "kutya", "gyorsan", "fut", "át", "mezőn"],
        "Öreg macska alszik otthon.",
        ["öreg", "macska", "alszik", "otthon"],
        4,
    ),
    "ko": (
        "고양이가 정원에서 생선을 먹는다.",
        ["고양이", "가", "정원", "에서", "생선", "을", "먹", "는다"],
        "정원에서 고양이가 생선을 먹는다",
        ["정원", "에서", "고양이", "가", "생선", "을", "먹", "는다"],
        "강아지는 밤에 짖었다",
        ["강아지", "는", "밤", "에", "짖", "었", "다"],
        3,
    ),
    "ru": (
        "Маленькая собака быстро бежит через зелёный луг.",
        ["маленькая", "собака", "быстро", "бежит", "через", "зелёный", "луг"],
        "Собака маленькая бежит через луг",
        ["собака", "маленькая", "бежит", "через", "луг"],
        "Старый кот спит дома.",
        ["старый", "кот", "спит", "дома"],
        4,
    ),
    # Cyrillic reference, Latin hypothesis: both are compared in Gaj's Latin.
    "sr": (
        "Мала мачка спава на старој столици у башти.",
        ["mala", "mačka", "spava", "na", "staroj", "stolici", "u", "bašti"],
        "Mačka mala spava na stolici u bašti",
        ["mačka", "mala", "spava", "na", "stolici", "u", "bašti"],
        "Велики пас лаје ноћу.",
        ["veliki", "pas", "laje", "noću"],
        4,
    ),
    "th": (
        "แมวดำนอนบนเก้าอี้ในสวน",
        ["แมว", "ดำ", "นอน", "บน", "เก้าอี้", "ใน", "สวน"],
        "แมวนอนบนเก้าอี้",
        ["แมว", "นอน", "บน", "เก้าอี้"],
        "หมากินข้าว",
        ["หมา", "กินข้าว"],
        2,
    ),
    "vi": (
        "Con mèo đen ngủ trên ghế trong vườn.",
        ["con", "mèo", "đen", "ngủ", "trên", "ghế", "trong", "vườn"],
        "Mèo đen con ngủ trên ghế",
        ["mèo", "đen", "con", "ngủ", "trên", "ghế"],
        "Chó lớn sủa ban đêm.",
        ["chó", "lớn", "sủa", "ban", "đêm"],
        3,
    ),
    "en": (
        "An old man feeds grey pigeons near the river.",
        ["an", "old", "man", "feeds", "grey", "pigeons", "near", "the", "river"],
        "Old man an feeds pigeons near river",
        ["old", "man", "an", "feeds", "pigeons", "near", "river"],
        "Children play football at school.",
        ["children", "play", "football", "at", "school"],
        5,
    ),
}
# A word not in R, appended to R for the closed-form BLEU check.
EXTRA = {
    "ar": "سماء",
    "cs": "nebe",
    "hu": "ég",
    "ko": "하늘",
    "ru": "небо",
    "sr": "небо",
    "th": "ปลา",
    "vi": "trời",
    "en": "sky",
}
LANGS = list(PAIRS)


def lcs_len(a, b):
    """Length of the longest common subsequence (textbook dynamic programme)."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_f(hyp, ref):
    lcs = lcs_len(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return 2 * p * r / (p + r)


def meteor_formula(matches, chunks, hyp_len, ref_len, alpha=0.9, beta=3.0, gamma=0.5):
    """Lavie & Agarwal (2007) METEOR from counts."""
    p, r = matches / hyp_len, matches / ref_len
    fmean = p * r / (alpha * p + (1 - alpha) * r)
    return (1 - gamma * (chunks / matches) ** beta) * fmean


def tfidf_keywords(docs, k):
    """Top-k TF-IDF terms per document: tf = count/len, idf = ln((1+N)/(1+df)) + 1, ties by position."""
    vocab = sorted({t for d in docs for t in d})
    index = {t: i for i, t in enumerate(vocab)}
    counts = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for t in d:
            counts[i, index[t]] += 1
    tfidf = counts / counts.sum(1, keepdims=True) * (np.log((1 + len(docs)) / (1 + (counts > 0).sum(0))) + 1)
    return [sorted(dict.fromkeys(d), key=lambda t: (-tfidf[i, index[t]], d.index(t)))[:k] for i, d in enumerate(docs)]


@pytest.mark.parametrize("lang", LANGS)
def test_tokens_by_hand(lang):
    r, r_tok, h, h_tok, d, d_tok, _ = PAIRS[lang]
    assert metrics.tokenize(r, lang) == r_tok
    assert metrics.tokenize(h, lang) == h_tok
    assert metrics.tokenize(d, lang) == d_tok
    assert not set(r_tok) & set(d_tok)


@pytest.mark.parametrize("lang", LANGS)
def test_identical_scores_maximum(lang):
    r, _, h, _, d, _, _ = PAIRS[lang]
    s = metrics.score_corpus([r, d, h], [r, d, h], lang)
    assert s["bleu"] == pytest.approx(100.0)
    assert (s["rouge_l"], s["meteor"], s["keyword_accuracy"]) == (pytest.approx(1.0),) * 3
    one_word = metrics.score_corpus([d.split()[0]], [d.split()[0]], lang)  # nltk alone gives 0.5 here
    assert (one_word["bleu"], one_word["meteor"]) == (pytest.approx(100.0), 1.0)


@pytest.mark.parametrize("lang", LANGS)
def test_disjoint_scores_zero(lang):
    r, _, _, _, d, _, _ = PAIRS[lang]
    s = metrics.score_corpus([d, r], [r, d], lang)
    assert (s["bleu"], s["rouge_l"], s["meteor"], s["keyword_accuracy"]) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("lang", LANGS)
def test_bleu_closed_form_and_sacrebleu_on_hand_tokens(lang):
    r, r_tok, h, h_tok, _, _, _ = PAIRS[lang]
    n = len(r_tok)
    # R plus one new word: n-grams of order k match n-k+1 of n-k+2, BP = 1.
    score, signature = metrics.bleu([f"{r} {EXTRA[lang]}"], [r], lang)
    assert score == pytest.approx(100 * ((n - 3) / (n + 1)) ** 0.25)
    assert signature == f"nrefs:1|case:mixed|eff:yes|tok:none|smooth:exp|version:{sacrebleu.__version__}"
    expected = sacrebleu.corpus_bleu([" ".join(h_tok)], [[" ".join(r_tok)]], tokenize="none", use_effective_order=True)
    assert metrics.bleu([h], [r], lang)[0] == pytest.approx(expected.score)
    assert 0 < expected.score < 100


@pytest.mark.parametrize("lang", LANGS)
def test_rouge_l_against_lcs(lang):
    r, r_tok, h, h_tok, d, d_tok, _ = PAIRS[lang]
    got = metrics.rouge_l([h, d], [r, r], lang)
    assert got == pytest.approx((rouge_l_f(h_tok, r_tok) + 0.0) / 2)
    assert 0 < rouge_l_f(h_tok, r_tok) < 1


@pytest.mark.parametrize("lang", LANGS)
def test_meteor_against_formula(lang):
    r, r_tok, h, h_tok, _, _, chunks = PAIRS[lang]
    # Every H word is an R word (no stem or synonym stage needed); chunks counted by hand above.
    expected = meteor_formula(len(h_tok), chunks, len(h_tok), len(r_tok))
    assert metrics.meteor([h], [r], lang) == pytest.approx(expected)
    assert 0 < expected < 1


def test_meteor_stem_stage():
    # Snowball: большая/большие -> больш, кошка/кошки -> кошк; one chunk of 2 stem matches.
    assert metrics.meteor(["большие кошки"], ["большая кошка"], "ru") == pytest.approx(meteor_formula(2, 1, 2, 2))
    # Czech, and Serbian across scripts (the Serbian stemmer works in Latin).
    assert metrics.meteor(["velkého psa"], ["velký pes"], "cs") > 0
    assert metrics.meteor(["mačke"], ["мачка"], "sr") == pytest.approx(meteor_formula(1, 1, 1, 1))
    # No stemmer for Vietnamese: only identical syllables match.
    assert metrics.meteor(["mèo"], ["mèo đen"], "vi") == pytest.approx(meteor_formula(1, 1, 1, 2))


def test_keyword_accuracy_by_hand():
    refs = ["the cat sat on the mat", "the dog sat on the log", "a bird flew"]
    # N = 3; idf(df=1) = ln(4/2)+1 = 1.693, idf(df=2) = ln(4/3)+1 = 1.288.
    # ref 1: the 2/6*1.288 = .429, cat = mat = 1/6*1.693 = .282, sat = on = .215
    assert metrics.keywords(refs, "en", top_k=3) == [
        ["the", "cat", "mat"],
        ["the", "dog", "log"],
        ["a", "bird", "flew"],
    ]
    preds = ["a cat on a mat", "The dog!", "birds flew away"]  # 2/3, 2/3, 1/3 keywords present
    assert metrics.keyword_accuracy(preds, refs, "en", top_k=3) == pytest.approx(5 / 9)
    # A larger corpus changes idf. N = 7, df(the) = 6: the = 2/6*(ln(8/7)+1) = .378 < cat = mat = 1/6*(ln(8/2)+1) = .398
    corpus = refs + ["the end", "the sun", "the moon", "the sea"]
    assert metrics.keywords(refs[:1], "en", top_k=2, corpus=corpus) == [["cat", "mat"]]


@pytest.mark.parametrize("lang", LANGS)
def test_keyword_accuracy_against_numpy_tfidf(lang):
    r, r_tok, h, h_tok, d, d_tok, _ = PAIRS[lang]
    for k in (1, 3, 5):
        kws = tfidf_keywords([r_tok, d_tok], k)
        assert metrics.keywords([r, d], lang, top_k=k) == kws
        expected = (sum(t in h_tok for t in kws[0]) / len(kws[0]) + 1.0) / 2
        assert metrics.keyword_accuracy([h, d], [r, d], lang, top_k=k) == pytest.approx(expected)


def test_rouge_default_tokenizer_trap():
    ref = "Маленькая собака быстро бежит через зелёный луг."
    default = rouge_scorer.RougeScorer(["rougeL"]).score(ref, ref)["rougeL"].fmeasure
    assert default == 0.0  # keeps only [a-z0-9]: Cyrillic vanishes
    assert metrics.rouge_l([ref], [ref], "ru") == 1.0
    assert metrics.rouge_l(["Собака бежит"], [ref], "ru") > 0


def test_normalisation_across_forms():
    assert metrics.tokenize("Tie\u0302\u0301ng Vie\u0323\u0302t", "vi") == ["tiếng", "việt"]  # NFD input
    assert metrics.tokenize("\ufe8d\ufedf\ufedc\ufe98\ufe8e\ufe8f ٢٠٢٤", "ar") == [
        "الكتاب",
        "2024",
    ]  # presentation forms
    assert metrics.tokenize("العــربية", "ar") == ["العربية"]  # tatweel
    assert metrics.tokenize("ปี ๒๕๖๗ น้ำตก", "th") == ["ปี", "2567", "น้ำตก"]  # Thai digits; waterfall is one word
    assert "\u0e33" in metrics.tokenize("น้ำ", "th")[0]  # SARA AM kept (NFKC would split it)
    assert metrics.tokenize("Љубав, ЊЕГА и џем", "sr") == ["ljubav", "njega", "i", "džem"]


def test_meteor_without_wordnet_offline(tmp_path):
    """nltk's METEOR runs with WordNet absent; its lazy ``nltk.corpus.wordnet`` is never loaded."""
    code = (
        "import nltk, nltk.corpus\n"
        "from nltk.translate.meteor_score import single_meteor_score\n"
        "from mella import metrics\n"
        "print(metrics.meteor(['большие кошки'], ['большая кошка'], 'ru'))\n"
        "print(type(nltk.corpus.wordnet).__name__)\n"
        "try:\n"
        "    single_meteor_score(['a'], ['b'])\n"
        "    print('wordnet-installed')\n"
        "except LookupError:\n"
        "    print('default-needs-wordnet')\n"
    )
    env = {"NLTK_DATA": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert float(out[0]) == pytest.approx(0.9375)
    assert out[1] == "LazyCorpusLoader"
    assert out[2] in {"default-needs-wordnet", "wordnet-installed"}


class SynonymTable:
    """A user-supplied synonym resource with nltk's WordNet interface (``synsets(word)[i].lemmas()[j].name()``)."""

    class _Lemma:
        def __init__(self, name):
            self._name = name

        def name(self):
            return self._name

    class _Synset:
        def __init__(self, names):
            self._lemmas = [SynonymTable._Lemma(n) for n in names]

        def lemmas(self):
            return self._lemmas

    def __init__(self, groups):
        self.groups = groups

    def synsets(self, word):
        return [self._Synset(g) for g in self.groups if word in g]


def test_meteor_optional_wordnet_english_only():
    # nltk looks synonyms up on the stemmed leftovers of the stem stage: pick words that are their own stems.
    wn = SynonymTable([["car", "auto"]])
    assert metrics.meteor(["auto"], ["car"], "en") == 0.0
    assert metrics.meteor(["auto"], ["car"], "en", wordnet=wn) == pytest.approx(meteor_formula(1, 1, 1, 1))
    with pytest.raises(ValueError, match="English only"):
        metrics.meteor(["a"], ["a"], "ru", wordnet=wn)


def test_empty_prediction_scores_zero():
    s = metrics.score_corpus(["", "..."], ["Stará kočka spí doma.", "Pes běží."], "cs")
    assert (s["bleu"], s["rouge_l"], s["meteor"], s["keyword_accuracy"]) == (0.0, 0.0, 0.0, 0.0)


def test_score_corpus_fields():
    r, _, h, _, _, _, _ = PAIRS["th"]
    s = metrics.score_corpus([h], [r], "th", keyword_top_k=3)
    assert s["tokenizer"] == "th:pythainlp_newmm" and s["stemmer"] == "none" and s["keyword_top_k"] == 3
    assert s["n"] == 1 and s["bleu_signature"].startswith("nrefs:1|")
    assert s["meteor"] == metrics.meteor([h], [r], "th") and s["rouge_l"] == metrics.rouge_l([h], [r], "th")
    assert metrics.score_corpus([h], [r], "ru")["stemmer"] == "russian"


@pytest.mark.parametrize(
    "preds, refs, lang, exc, match",
    [
        (["a"], ["a", "b"], "en", ValueError, "1 predictions but 2 references"),
        ([], [], "en", ValueError, "no references"),
        (["a"], ["!!!"], "en", ValueError, "reference 0 has no tokens"),
        (["a"], ["a"], "xx", ValueError, "no metric tokenizer for language 'xx'"),
        ([None], ["a"], "en", TypeError, "must be str"),
    ],
)
def test_bad_input(preds, refs, lang, exc, match):
    with pytest.raises(exc, match=match):
        metrics.score_corpus(preds, refs, lang)


def test_bad_top_k_and_empty_keyword_reference():
    with pytest.raises(ValueError, match="top_k"):
        metrics.keyword_accuracy(["a"], ["a"], "en", top_k=0)
    with pytest.raises(ValueError, match="no tokens"):
        metrics.keywords(["a b", " - "], "en")


def test_meteor_chunk_counts_are_right():
    # Guard the hand-counted chunks above with a second count from positions.
    for lang, (_, r_tok, _, h_tok, _, _, chunks) in PAIRS.items():
        pos = [r_tok.index(t) for t in h_tok]
        assert 1 + sum(b != a + 1 for a, b in zip(pos, pos[1:])) == chunks, lang
    assert math.isclose(meteor_formula(2, 1, 2, 2), 0.9375)
