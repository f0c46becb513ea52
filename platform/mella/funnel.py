"""The funnel: counts in and out of every stage, per language, computed from the written output.

Counting from ``d_know/`` and ``rejects/`` (not from live counters) makes the funnel exact and
identical across reruns. Units: ``pages`` for crawl/extract, ``images`` (image-text candidates) after.
"""

from __future__ import annotations

import glob
import os
from collections import Counter, defaultdict

import pyarrow.parquet as pq

#: Page-level steps at the head of every plan (units: pages); the rest count images.
PAGE_STAGES = ("crawl", "extract")


def _read_cols(directory: str, cols: list[str]) -> list[dict]:
    rows: list[dict] = []
    for p in sorted(glob.glob(os.path.join(directory, "*.parquet"))):
        present = [c for c in cols if c in pq.read_schema(p).names]
        rows.extend(pq.read_table(p, columns=present).to_pylist())
    return [{c: r.get(c) for c in cols} for r in rows]


def compute(
    know_dir: str,
    rejects_dir: str,
    page_stats: list[dict],
    crawl_stats: dict | None,
    langs: list[str],
    *,
    stages: list[str],
    listed: list[str] = (),
    ling_stages: list[str] = (),
    candidates_dir: str | None = None,
    ling_dir: str | None = None,
) -> dict:
    """Build the funnel dict (see module docstring) from the output directories and page/crawl stats.

    ``stages``: every stage name in plan order (:func:`mella.plan.stage_names`, ``crawl`` first);
    ``listed``: the stages that exist to drop rows (filters, dedup), listed even when they dropped
    nothing — other stages appear only when they rejected something. ``ling_stages``: the plan's
    D_ling stages. With D_ling, ``candidates_dir`` holds the images routed to D_ling that passed
    the image stages (they count as the image stages' output, and ``routed_to_d_ling`` of the
    alt_text/langid lines says how many each of those two stages sent there) and ``ling_dir`` the
    D_ling rows; the D_ling stages (caption → translate → qe) follow, then ``d_ling`` rows per language.
    """
    image_stages = [s for s in stages if s not in PAGE_STAGES and s not in ling_stages]
    kept = Counter(r["lang"] for r in _read_cols(know_dir, ["lang"]))
    cands = _read_cols(candidates_dir, ["lang", "d_ling_reason"]) if candidates_dir else []
    rejects = _read_cols(rejects_dir, ["stage", "reason", "lang", "image_url", "d_ling_reason"])
    lines = [] if crawl_stats is None else [_crawl_line(crawl_stats, rejects)]
    lines.append(_extract_line(page_stats, rejects))
    lines += _image_lines(image_stages, listed, kept, cands, rejects)
    out = {
        "stages": lines,
        "d_know": {lang: kept.get(lang, 0) for lang in langs},
        "d_know_total": sum(kept.values()),
        # counts only: the funnel of a rerun equals the first run's (network seconds are timings: stage_stats.json)
        "hosts": {
            h: {k: v for k, v in agg.items() if k != "seconds"}
            for h, agg in (crawl_stats or {}).get("hosts", {}).items()
        },
    }
    if ling_dir is not None:
        ling = Counter(r["lang"] for r in _read_cols(ling_dir, ["lang"]))
        cand_by_lang = Counter(r["lang"] for r in cands)
        lines += _d_ling_lines(ling_stages, rejects, sum(cand_by_lang.values()), sum(ling.values()))
        out["d_ling_candidates"] = dict(sorted(cand_by_lang.items()))
        out["d_ling"] = {lang: ling.get(lang, 0) for lang in langs}
        out["d_ling_total"] = sum(ling.values())
    return out


def _crawl_line(crawl_stats: dict, rejects: list[dict]) -> dict:
    """The crawl's line (pages): fetched, failed by reason, and the URLs never requested (``cut_off``)."""
    reasons = Counter(r["reason"] for r in rejects if r["stage"] == "crawl")
    return {
        "stage": "crawl",
        "unit": "pages",
        "in": crawl_stats["pages_ok"] + crawl_stats["pages_failed"],
        "out": crawl_stats["pages_ok"],
        "rejected": crawl_stats["pages_failed"],
        "reasons": dict(reasons),
        "by_lang": {},
        "cut_off": crawl_stats.get("cut_off", {}),  # URLs never requested: max_pages / max_depth
    }


def _extract_line(page_stats: list[dict], rejects: list[dict]) -> dict:
    """The extract line (pages), from the source's per-slice ``pages-*.json`` counters."""
    pages_in = sum(s.get("pages_in", 0) for s in page_stats)
    pages_out: Counter = Counter()
    for s in page_stats:
        for k, v in s.items():
            if k.startswith("pages_out:"):
                pages_out[k.split(":", 1)[1]] += v
    reasons = Counter(r["reason"] for r in rejects if r["stage"] == "extract")
    not_taken: Counter = Counter()  # items inside kept pages that never became rows (<picture> sources skipped)
    skipped: Counter = Counter()  # WARC response records that are no page: http_<status>, not_html
    for s in page_stats:
        not_taken.update({k.split(":", 1)[1]: v for k, v in s.items() if k.startswith("dropped:")})
        skipped.update({k.split(":", 1)[1]: v for k, v in s.items() if k.startswith("records_skipped:")})
    return {
        "stage": "extract",
        "unit": "pages",
        "in": pages_in,
        "out": sum(pages_out.values()),
        "rejected": sum(reasons.values()),
        "reasons": dict(reasons),
        "by_lang": {lang: {"out": n} for lang, n in sorted(pages_out.items())},
        "dropped": dict(not_taken),
        "records_skipped": dict(skipped),
        "images_out": sum(s.get("images_out", 0) for s in page_stats),
    }


def _image_lines(
    image_stages: list[str], listed: list[str], kept: Counter, cands: list[dict], rejects: list[dict]
) -> list[dict]:
    """One line per image stage (images), in plan order: what reached it is every row it or a later stage
    rejected, plus the kept rows and the D_ling candidates."""
    image_rejects = [r for r in rejects if r["stage"] in image_stages]
    rej_by_stage: dict[str, Counter] = defaultdict(Counter)
    reasons_by_stage: dict[str, Counter] = defaultdict(Counter)
    for r in image_rejects:
        rej_by_stage[r["stage"]][r["lang"]] += 1
        reasons_by_stage[r["stage"]][r["reason"]] += 1
    routed = Counter((r["d_ling_reason"] or "").split(":", 1)[0] for r in cands + image_rejects if r["d_ling_reason"])
    remaining = Counter(kept)
    for r in image_rejects + cands:
        remaining[r["lang"]] += 1
    lines = []
    for stage in image_stages:
        if stage not in rej_by_stage and stage not in listed:
            continue  # an enricher that dropped nothing
        n_in = Counter(remaining)
        remaining.subtract(rej_by_stage[stage])
        entry = {
            "stage": stage,
            "unit": "images",
            "in": sum(n_in.values()),
            "out": sum(remaining.values()),
            "rejected": sum(rej_by_stage[stage].values()),
            "reasons": dict(reasons_by_stage[stage]),
            "by_lang": {lang: {"in": n_in[lang], "out": remaining[lang]} for lang in sorted(n_in) if n_in[lang]},
        }
        if routed.get(stage):
            entry["routed_to_d_ling"] = routed[stage]
        lines.append(entry)
    return lines


def _d_ling_lines(ling_stages: list[str], rejects: list[dict], n_cand: int, n_ling: int) -> list[dict]:
    """The D_ling stages' lines: caption counts images, translate and qe count (image, target language) pairs."""
    n_rej = Counter(r["stage"] for r in rejects if r["stage"] in ling_stages)
    reasons = {st: dict(Counter(r["reason"] for r in rejects if r["stage"] == st)) for st in ling_stages}
    flow = {  # stage: (unit, in, out); translate writes one row per (image, target language)
        "caption": ("images", n_cand, n_cand - n_rej["caption"]),
        "translate": ("pairs", n_ling + n_rej["qe"] + n_rej["translate"], n_ling + n_rej["qe"]),
        "qe": ("pairs", n_ling + n_rej["qe"], n_ling),
    }
    lines = []
    for stage in ling_stages:
        if stage not in flow:  # a user's D_ling stage: counted by its rejects only
            flow[stage] = ("pairs", n_ling + n_rej[stage], n_ling)
        unit, n_in, n_out = flow[stage]
        lines.append(
            {
                "stage": stage,
                "unit": unit,
                "in": n_in,
                "out": n_out,
                "rejected": n_rej[stage],
                "reasons": reasons[stage],
                "by_lang": {},
            }
        )
    return lines


def counter_disagreements(funnel: dict, timing: dict) -> list[str]:
    """Where the runners' counters (``stage_stats.json``: rows in, rejects) disagree with the funnel, one line a
    stage; ``[]`` when every image stage of the funnel has the same ``in`` and ``rejected`` in both. The page
    stages (crawl, extract) count pages and translate/qe count pairs (one image becomes several): not compared."""
    lines = []
    for s in funnel["stages"]:
        if s["unit"] != "images" or s["stage"] in PAGE_STAGES:
            continue
        c = timing.get(s["stage"])
        if c is None:
            lines.append(f"{s['stage']}: in the funnel, not in stage_stats")
            continue
        n_rej = sum(c["rejected"].values())
        if (c["rows_in"], n_rej) != (s["in"], s["rejected"]):
            lines.append(
                f"{s['stage']}: funnel in {s['in']} rejected {s['rejected']}, "
                f"counters rows_in {c['rows_in']} rejected {n_rej} ({c['rejected']})"
            )
    return lines


def format_table(funnel: dict, timing: dict | None = None) -> str:
    """Human-readable funnel: one line per stage, then D_know per language; with ``timing`` (the build's
    ``stage_stats.json``) also the slowest crawled hosts."""
    lines = [f"{'stage':<16}{'unit':<8}{'in':>8}{'out':>8}{'rejected':>9}  top reasons"]
    for s in funnel["stages"]:
        top = ", ".join(f"{k}:{v}" for k, v in sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:4])
        extra = {**s.get("cut_off", {}), **s.get("dropped", {}), **s.get("records_skipped", {})}
        if extra:  # never became rows: crawl cut-offs, <picture> sources skipped
            top += ("; " if top else "") + "not taken: " + ", ".join(f"{k}:{v}" for k, v in sorted(extra.items()))
        lines.append(f"{s['stage']:<16}{s['unit']:<8}{s['in']:>8}{s['out']:>8}{s['rejected']:>9}  {top}")
    lines.append("D_know pairs per language: " + "  ".join(f"{k}={v}" for k, v in funnel["d_know"].items()))
    lines.append(f"D_know total: {funnel['d_know_total']}")
    routed = {s["stage"]: s["routed_to_d_ling"] for s in funnel["stages"] if s.get("routed_to_d_ling")}
    if routed:
        lines.append(
            "routed to D_ling (alt-text unusable, image kept): " + "  ".join(f"{k}={v}" for k, v in routed.items())
        )
    if "d_ling" in funnel:
        lines.append("D_ling pairs per language: " + "  ".join(f"{k}={v}" for k, v in funnel["d_ling"].items()))
        lines.append(f"D_ling total: {funnel['d_ling_total']}")
    slow = [
        f"{h['host']} {h['seconds']:.1f}"
        for h in (timing or {}).get("crawl", {}).get("slowest_hosts", [])
        if h.get("seconds")
    ]
    if slow:
        lines.append("slowest hosts (network seconds): " + "; ".join(slow))
    failed_hosts = {h: v["failed"] for h, v in funnel.get("hosts", {}).items() if v.get("failed")}
    if failed_hosts:
        lines.append(
            "hosts with failures: "
            + "; ".join(f"{h} ({', '.join(f'{k}:{n}' for k, n in f.items())})" for h, f in sorted(failed_hosts.items()))
        )
    return "\n".join(lines)
