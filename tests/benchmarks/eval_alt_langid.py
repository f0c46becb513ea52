"""Precision / recall of the alt-text language rule (mella.stages.filters.langid) on the real miniweb.

Positives: the pairs of ``../shared/miniweb/PAIRS_expected.tsv`` (alt-text in the page's language,
image > 256 px). Negatives: every other non-empty alt-text of a > 256 px image on the seed pages
(English alts on th/vi/cs pages, untranslated captions, ...). A prediction is "kept for language L"
when extraction assigns L and the langid check accepts it.

    python tests/benchmarks/eval_alt_langid.py [--miniweb ../shared/miniweb]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "platform"))

from mella.stages.filters.langid import assign_language, check_alt_language
from mella.stages.io.extract import parse_page


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--miniweb", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "miniweb"))
    args = ap.parse_args()
    root = os.path.abspath(args.miniweb)
    sizes = {}
    sha = {}
    with open(os.path.join(root, "MANIFEST.tsv"), encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            sha[r["path"]] = r["sha256"]
            if r["kind"] == "image" and "x" in r["info"]:
                w, h = r["info"].split("x")[:2]
                if w.isdigit() and h.isdigit():
                    sizes[r["path"]] = (int(w), int(h))
    expected = {}
    with open(os.path.join(root, "PAIRS_expected.tsv"), encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            expected[(r["page"], r["img"])] = ("sr" if r["lang"].startswith("sr") else r["lang"], r["alt"])
    expected_images = {(sha.get(img, img), lang) for (_p, img), (lang, _a) in expected.items()}
    base = "http://127.0.0.1:1/"
    tp = fp = fn = tn = 0
    per_lang: Counter = Counter()
    errors = []
    with open(os.path.join(root, "seeds.txt"), encoding="utf-8") as f:
        seeds = [ln.strip().lstrip("/") for ln in f if ln.strip()]
    for page in seeds:
        body = open(os.path.join(root, page), "rb").read()
        pg = parse_page(base + page, body, [("Content-Type", "text/html")])
        for ref in pg.images:
            if not ref.image_url.startswith(base):
                continue
            img = ref.image_url[len(base) :]
            w, h = sizes.get(img, (0, 0))
            if not (w > 256 and h > 256) or not ref.alt_text:
                continue
            lang = assign_language(ref.alt_text, pg.candidate_langs)
            kept = lang is not None and check_alt_language(ref.alt_text, lang).keep
            exp = expected.get((page, img))
            if exp:
                ok = kept and lang == exp[0]
                tp += ok
                fn += not ok
                per_lang[(exp[0], "tp" if ok else "fn")] += 1
                if not ok:
                    errors.append(("FN", page, ref.alt_text, lang, pg.candidate_langs))
            elif kept and (sha.get(img, img), lang) in expected_images:
                continue  # the same image is an expected pair on another page: an exact duplicate, not an error
            else:
                fp += kept
                tn += not kept
                if kept:
                    errors.append(("FP", page, ref.alt_text, lang, pg.candidate_langs))
    prec = tp / max(1, tp + fp)
    rec = tp / max(1, tp + fn)
    for e in errors:
        print(*e, sep="\t")
    print(f"positives={tp + fn} negatives={fp + tn}  TP={tp} FP={fp} FN={fn} TN={tn}")
    print(f"precision={prec:.3f} recall={rec:.3f}")
    for lang in sorted({k[0] for k in per_lang}):
        print(f"  {lang}: recall {per_lang[(lang, 'tp')]}/{per_lang[(lang, 'tp')] + per_lang[(lang, 'fn')]}")


if __name__ == "__main__":
    main()
