"""Benchmark: time to score 1,600 samples (8 languages x 200) with all four metrics (issue 6: target < 10 s).

References are real sentences from the miniweb HTML pages in /work/shared/miniweb (2 to 3 sentences of
one language per reference, like a D_ling caption); predictions are perturbed copies (words dropped,
swapped, and taken from other references), so every metric lands strictly between 0 and its maximum.
Every string is distinct, so the per-text token cache gives no unfair reuse.

Compared in the same run with the obvious alternative: the libraries' defaults (sacrebleu ``13a``,
rouge-score's default tokenizer, nltk METEOR on ``str.split`` tokens) — faster, but wrong for most of
our scripts (see the per-language scores printed beside it).

    python tests/benchmarks/bench_metrics.py [--per-lang 200] [--miniweb /work/shared/miniweb]
"""

from __future__ import annotations

import argparse
import pathlib
import random
import resource
import time

import regex
import sacrebleu
from nltk.translate.meteor_score import single_meteor_score
from rouge_score import rouge_scorer
from selectolax.lexbor import LexborHTMLParser

from mella import metrics

LANGS = ["ar", "cs", "hu", "ko", "ru", "sr", "th", "vi"]
# A sentence counts as being in the language if it has a letter only that language's text would have.
IN_LANG = {
    "ar": r"\p{Arabic}",
    "ru": r"\p{Cyrillic}",
    "sr": r"[\p{Cyrillic}šđčćž]",
    "th": r"\p{Thai}",
    "ko": r"\p{Hangul}",
    "cs": r"[ěščřžůťď]",
    "hu": r"[őűáéö]",
    "vi": r"[ơưđăạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ]",
}


def sentences(root: pathlib.Path, lang: str) -> list[str]:
    """Distinct sentences (20-300 chars) from the body text of ``root/lang/**/*.htm*``."""
    out = []
    for page in sorted((root / lang).rglob("*.htm*")):
        tree = LexborHTMLParser(page.read_bytes().decode("utf-8", "replace"))
        for node in tree.css("script, style, noscript"):
            node.decompose()
        if tree.body is None:
            continue
        for line in tree.body.text(separator="\n").split("\n"):
            for s in regex.split(r"(?<=[.!?؟])\s+", " ".join(line.split())):
                if 20 <= len(s) <= 300 and regex.search(IN_LANG[lang], s.lower()):
                    out.append(s)
    return list(dict.fromkeys(out))


def perturb(text: str, rng: random.Random, donors: list[str]) -> str:
    words = text.split()
    words = [w for w in words if rng.random() > 0.15]  # drop ~15 %
    for _ in range(max(1, len(words) // 8)):  # swap neighbours
        i = rng.randrange(max(1, len(words) - 1))
        words[i : i + 2] = words[i : i + 2][::-1]
    donor = rng.choice(donors).split()
    return " ".join(words + donor[: rng.randint(1, max(1, len(donor) // 2))])


def build(root: pathlib.Path, per_lang: int, seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    rng = random.Random(seed)
    data = {}
    for lang in LANGS:
        pool = sentences(root, lang)
        if len(pool) < 10:
            raise SystemExit(f"{lang}: only {len(pool)} sentences under {root / lang}")
        refs: list[str] = []
        seen = set()
        while len(refs) < per_lang:
            ref = " ".join(rng.sample(pool, rng.randint(2, 3)))
            if ref not in seen:
                seen.add(ref)
                refs.append(ref)
        preds = [perturb(r, rng, pool) for r in refs]
        data[lang] = (preds, refs)
    return data


def library_defaults(preds: list[str], refs: list[str]) -> dict:
    """The obvious alternative: each library with its own default tokenisation."""
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return {
        "bleu": sacrebleu.corpus_bleu(preds, [refs]).score,
        "rouge_l": sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(refs),
        "meteor": sum(
            single_meteor_score(r.split(), p.split(), wordnet=metrics._NoWordNet()) for p, r in zip(preds, refs)
        )
        / len(refs),
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-lang", type=int, default=200)
    ap.add_argument("--miniweb", type=pathlib.Path, default=pathlib.Path("/work/shared/miniweb"))
    args = ap.parse_args()

    data = build(args.miniweb, args.per_lang)
    n = sum(len(r) for _, r in data.values())
    print(f"{n} samples built; peak RSS before scoring {peak_rss_mib():.0f} MiB")

    t0, c0 = time.perf_counter(), time.process_time()  # cold: Kiwi and the newmm dictionary load inside
    ours = {lang: metrics.score_corpus(p, r, lang) for lang, (p, r) in data.items()}
    t_ours, cpu_ours = time.perf_counter() - t0, time.process_time() - c0
    rss_ours = peak_rss_mib()
    metrics._tokens.cache_clear()
    t0 = time.perf_counter()  # warm: models loaded, token cache empty (a second evaluation in one process)
    for lang, (p, r) in data.items():
        metrics.score_corpus(p, r, lang)
    t_warm = time.perf_counter() - t0

    t0 = time.perf_counter()
    base = {lang: library_defaults(p, r) for lang, (p, r) in data.items()}
    t_base = time.perf_counter() - t0
    n_tok = sum(len(metrics.tokenize(r, lang)) for lang, (_, refs) in data.items() for r in refs)
    print(f"mean reference length {n_tok / n:.1f} tokens")

    print(
        f"\n{'lang':4} {'kw_acc':>7} {'BLEU':>6} {'ROUGE-L':>7} {'METEOR':>6} | library defaults: {'BLEU':>6} {'ROUGE-L':>7} {'METEOR':>6}"
    )
    for lang in LANGS:
        o, b = ours[lang], base[lang]
        print(
            f"{lang:4} {o['keyword_accuracy']:7.3f} {o['bleu']:6.2f} {o['rouge_l']:7.3f} {o['meteor']:6.3f} |"
            f"                   {b['bleu']:6.2f} {b['rouge_l']:7.3f} {b['meteor']:6.3f}"
        )
    print(f"\nBLEU signature: {ours['th']['bleu_signature']} (tokens: mella.metrics per language)")
    print(
        f"mella.metrics.score_corpus, all four metrics, {n} samples: {t_ours:.2f} s "
        f"({'meets' if t_ours < 10 else 'MISSES'} the < 10 s target) cold "
        f"(CPU {cpu_ours:.2f} s; wall time suffers when other processes share the cores), {t_warm:.2f} s warm; "
        f"peak RSS {rss_ours:.0f} MiB"
    )
    print(
        f"library defaults (BLEU 13a, rouge default tokenizer, METEOR on str.split; no keyword accuracy): "
        f"{t_base:.2f} s; time ratio ours/defaults = {t_ours / t_base:.2f} cold, {t_warm / t_base:.2f} warm"
    )


if __name__ == "__main__":
    main()
