"""The funnel: counts in and out of every stage, per language, computed from the written output.

Counting from ``d_know/`` and ``rejects/`` (not from live counters) makes the funnel exact and
identical across reruns. Units: ``pages`` for crawl/extract, ``images`` (image-text candidates) after.
"""

from __future__ import annotations

import glob
import os
from collections import Counter, defaultdict

import pyarrow.parquet as pq

from mella.schema import STAGES

IMAGE_STAGES = [s for s in STAGES if s not in ("crawl", "extract")]


def _read_cols(directory: str, cols: list[str]) -> list[dict]:
    rows: list[dict] = []
    for p in sorted(glob.glob(os.path.join(directory, "*.parquet"))):
        rows.extend(pq.read_table(p, columns=cols).to_pylist())
    return rows


def compute(know_dir: str, rejects_dir: str, page_stats: list[dict], crawl_stats: dict | None, langs: list[str]) -> dict:
    """Build the funnel dict (see module docstring) from the output directories and page/crawl stats."""
    kept = Counter(r["lang"] for r in _read_cols(know_dir, ["lang"]))
    rejects = _read_cols(rejects_dir, ["stage", "reason", "lang", "image_url"])
    stages: list[dict] = []

    if crawl_stats is not None:
        reasons = Counter(r["reason"] for r in rejects if r["stage"] == "crawl")
        stages.append({
            "stage": "crawl", "unit": "pages", "in": crawl_stats["pages_ok"] + crawl_stats["pages_failed"],
            "out": crawl_stats["pages_ok"], "rejected": crawl_stats["pages_failed"], "reasons": dict(reasons), "by_lang": {},
        })
    pages_in = sum(s.get("pages_in", 0) for s in page_stats)
    pages_out: Counter = Counter()
    for s in page_stats:
        for k, v in s.items():
            if k.startswith("pages_out:"):
                pages_out[k.split(":", 1)[1]] += v
    reasons = Counter(r["reason"] for r in rejects if r["stage"] == "extract")
    stages.append({
        "stage": "extract", "unit": "pages", "in": pages_in, "out": sum(pages_out.values()),
        "rejected": sum(reasons.values()), "reasons": dict(reasons),
        "by_lang": {lang: {"out": n} for lang, n in sorted(pages_out.items())},
    })

    image_rejects = [r for r in rejects if r["stage"] in IMAGE_STAGES]
    rej_by_stage: dict[str, Counter] = defaultdict(Counter)
    reasons_by_stage: dict[str, Counter] = defaultdict(Counter)
    for r in image_rejects:
        rej_by_stage[r["stage"]][r["lang"]] += 1
        reasons_by_stage[r["stage"]][r["reason"]] += 1
    remaining = Counter(kept)
    for r in image_rejects:
        remaining[r["lang"]] += 1
    for stage in IMAGE_STAGES:
        if stage not in rej_by_stage and stage not in ("alt_text", "fetch", "decode", "resolution", "exact_dedup", "phash_dedup", "langid"):
            continue  # stage not enabled in this build
        n_in = Counter(remaining)
        remaining.subtract(rej_by_stage[stage])
        stages.append({
            "stage": stage, "unit": "images", "in": sum(n_in.values()), "out": sum(remaining.values()),
            "rejected": sum(rej_by_stage[stage].values()), "reasons": dict(reasons_by_stage[stage]),
            "by_lang": {lang: {"in": n_in[lang], "out": remaining[lang]} for lang in sorted(n_in) if n_in[lang]},
        })
    return {
        "stages": stages,
        "d_know": {lang: kept.get(lang, 0) for lang in langs},
        "d_know_total": sum(kept.values()),
        "hosts": (crawl_stats or {}).get("hosts", {}),
    }


def format_table(funnel: dict) -> str:
    """Human-readable funnel: one line per stage, then D_know per language."""
    lines = [f"{'stage':<14}{'unit':<8}{'in':>8}{'out':>8}{'dropped':>9}  top reasons"]
    for s in funnel["stages"]:
        top = ", ".join(f"{k}:{v}" for k, v in sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"{s['stage']:<14}{s['unit']:<8}{s['in']:>8}{s['out']:>8}{s['rejected']:>9}  {top}")
    lines.append("D_know pairs per language: " + "  ".join(f"{k}={v}" for k, v in funnel["d_know"].items()))
    lines.append(f"D_know total: {funnel['d_know_total']}")
    failed_hosts = {h: v["failed"] for h, v in funnel.get("hosts", {}).items() if v.get("failed")}
    if failed_hosts:
        lines.append("hosts with failures: " + "; ".join(
            f"{h} ({', '.join(f'{k}:{n}' for k, n in f.items())})" for h, f in sorted(failed_hosts.items())))
    return "\n".join(lines)
