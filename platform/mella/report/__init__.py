"""The corpus report: a static, self-contained HTML site of a build output (``DIR/report/index.html``).

Pages (all under ``DIR/report/``, opening from ``file://``; no server, no network, no CDN):

- ``index.html``: pairs per language, the funnel as an SVG chart and per language, the statistics
  figure of :mod:`mella.corpus_stats` (``statistics.png`` beside the page);
- ``know-<lang>-<page>.html``: the D_know gallery (thumbnail, alt-text, size, category, page link,
  NSFW score, pHash); ``ling-<lang>-<page>.html``: D_ling rows (image, English caption, translation,
  QE score, MT backend);
- ``rejects.html``: every stage and reason with exact counts and sampled rows (thumbnail when the image
  was fetched, detail); ``near-duplicates.html``: kept image beside the dropped ones with their
  pHash distance or CNN cosine;
- ``training.html`` / ``evaluation.html`` with ``train_dir`` / ``eval_dir`` (``mella_train.json``;
  ``report.json``, ``chart.png``, ``pairs.csv``/``pairs.html`` of :mod:`mella.evaluation`).

Scale: one streaming pass over the small columns (:mod:`mella.report.sample`), then thumbnails of the
sampled rows only, made in Ray tasks (:mod:`mella.report.thumbs`); at most ``page_size × max_pages``
rows per language and dataset, ``per_reason`` per reject reason. Counts are exact.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import shutil
import time
import uuid

from mella.io import replace_dir
from mella.report import render
from mella.report.sample import NEAR_DUP_STAGES, part_files, select
from mella.report.thumbs import image_warcs, locate, make_thumbnails

log = logging.getLogger("mella.report")
REPORT_DIR = "report"


def check_inputs(out_dir: str, train_dir: str | None = None, eval_dir: str | None = None) -> None:
    """Raise ``ValueError`` (one line) unless ``out_dir`` is a build output and the optional run dirs hold
    their reports (``mella_train.json`` somewhere under ``train_dir``; ``report.json`` in ``eval_dir``)."""
    if not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir}: no such directory")
    if not any(os.path.isdir(os.path.join(out_dir, d)) for d in ("d_know", "d_ling", "rejects")) and not os.path.exists(
        os.path.join(out_dir, "funnel.json")
    ):
        raise ValueError(f"{out_dir} is not a build output (no d_know/, d_ling/, rejects/ or funnel.json)")
    if train_dir is not None and not _train_files(train_dir):
        raise ValueError(f"--train {train_dir}: no mella_train.json under it")
    if eval_dir is not None and not os.path.isfile(os.path.join(eval_dir, "report.json")):
        raise ValueError(f"--eval {eval_dir}: no report.json in it (write one with jobs/evaluate.py)")


def _train_files(train_dir: str) -> list[str]:
    if not os.path.isdir(train_dir):
        return []
    return sorted(glob.glob(os.path.join(train_dir, "**", "mella_train.json"), recursive=True))[:50]


def _stage_order(funnel: dict) -> dict[str, int]:
    """``{stage: position}``: the funnel's order (the build's plan), or the default plan's when it lacks ``fetch``."""
    names = [s["stage"] for s in funnel.get("stages", [])]
    if "fetch" not in names:
        from mella.plan import CRAWL, DEFAULT_PLAN

        names = [CRAWL, *DEFAULT_PLAN]
    return {s: i for i, s in enumerate(names)}


def _fetched(stage: str | None, order: dict[str, int]) -> bool:
    """Whether rows rejected at ``stage`` had their image fetched (stages after ``fetch``)."""
    return order.get(stage or "", -1) > order["fetch"]


def _pages(prefix: str, n_rows: int, page_size: int) -> list[str]:
    return [f"{prefix}-{p + 1}.html" for p in range(max(1, -(-n_rows // page_size)))]


def write_report(
    out_dir: str,
    train_dir: str | None = None,
    eval_dir: str | None = None,
    *,
    page_size: int = 48,
    max_pages: int = 5,
    per_reason: int = 12,
    near_groups: int = 40,
    thumb_px: int = 160,
    thumb_num_cpus: float = 1,
) -> str:
    """Write ``out_dir/report/`` (see module doc) and return the path of its ``index.html``.

    Any corpus works: no near-duplicate group, a language with no rows, empty or absent D_know / D_ling.
    Needs a running Ray (:func:`mella.runtime.init_ray`) for the thumbnails. The site is built in a
    staging directory and swapped in whole: a rerun replaces it, a killed run leaves the old one, and a
    failed run removes its staging directory. Raises ``ValueError`` from :func:`check_inputs`.
    """
    check_inputs(out_dir, train_dir, eval_dir)
    staging = os.path.join(out_dir, f".staging-report-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    try:
        _write_site(
            staging,
            out_dir,
            train_dir,
            eval_dir,
            page_size=page_size,
            max_pages=max_pages,
            per_reason=per_reason,
            near_groups=near_groups,
            thumb_px=thumb_px,
            thumb_num_cpus=thumb_num_cpus,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = os.path.join(out_dir, REPORT_DIR)
    replace_dir(staging, final)
    return os.path.join(final, "index.html")


def _write_site(
    staging: str,
    out_dir: str,
    train_dir: str | None,
    eval_dir: str | None,
    *,
    page_size: int,
    max_pages: int,
    per_reason: int,
    near_groups: int,
    thumb_px: int,
    thumb_num_cpus: float,
) -> None:
    """Every page of the report into ``staging``."""
    funnel = {}
    if os.path.exists(os.path.join(out_dir, "funnel.json")):
        with open(os.path.join(out_dir, "funnel.json"), encoding="utf-8") as f:
            funnel = json.load(f)
    order = _stage_order(funnel)
    t0 = time.perf_counter()
    sel = select(out_dir, per_lang=page_size * max_pages, per_reason=per_reason, near_groups=near_groups)
    log.info(
        "report: counted and sampled %d D_know, %d D_ling, %d reject rows in %.1f s",
        sum(sel.know.counts.values()),
        sum(sel.ling.counts.values()),
        sum(sel.rejects.counts.values()),
        time.perf_counter() - t0,
    )
    thumbs, found = _thumbnails(out_dir, sel, order, thumb_px, thumb_num_cpus)
    log.info("report: %d thumbnails (Ray tasks) at %.1f s", len(thumbs), time.perf_counter() - t0)
    nav = {"know": [], "ling": [], "train": train_dir is not None, "eval": eval_dir is not None}
    lang_rows = _galleries(staging, sel, funnel, nav, thumbs, page_size)
    _rejects_page(staging, sel, order, nav, thumbs, per_reason)
    _near_page(staging, sel, nav, thumbs, found)
    stats_png = None
    if part_files(out_dir, "d_know") or part_files(out_dir, "d_ling"):
        from mella import corpus_stats

        if corpus_stats.write(
            out_dir, os.path.join(staging, "statistics.png"), os.path.join(staging, "statistics.json")
        ):
            stats_png = "statistics.png"
    if train_dir is not None:
        _training_page(staging, nav, train_dir)
    if eval_dir is not None:
        _evaluation_page(staging, nav, eval_dir)
    render.write_page(
        staging,
        "index.html",
        "index.html",
        title="Overview",
        nav=nav,
        corpus_name=os.path.basename(os.path.abspath(out_dir)),
        out_dir=os.path.abspath(out_dir),
        written_at=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        langs=lang_rows,
        know_total=sum(sel.know.counts.values()),
        ling_total=sum(sel.ling.counts.values()),
        reject_total=sum(sel.rejects.counts.values()),
        funnel_svg=render.funnel_svg(funnel),
        lang_funnel=render.lang_funnel(funnel),
        stats_png=stats_png,
    )
    log.info("report: written at %.1f s", time.perf_counter() - t0)


def _thumbnails(out_dir: str, sel, order: dict[str, int], thumb_px: int, num_cpus: float) -> tuple[dict, dict]:
    """``(thumbs, found)``: data URLs of the sampled D_know/D_ling rows (where they are), of the rejects and of
    the kept near-duplicate images (located with :func:`locate`)."""
    requests: dict[str, list[tuple[str, int]]] = {}
    for tag, bk in (("know", sel.know), ("ling", sel.ling)):
        for rows in bk.rows.values():
            for r in rows:
                requests[f"{tag}:{r['id']}"] = [(r["_file"], r["_row"])]
    fetched = [r for rows in sel.rejects.rows.values() for r in rows if _fetched(r["stage"], order)]
    fetched += [r for g in sel.near.groups.values() for r in g["rows"]]
    found = locate(out_dir, {r["id"] for r in fetched}, {(lang, url) for (_, lang, url) in sel.near.groups})
    for key, locs in found.items():
        requests.setdefault(key if "\x1f" in key else f"rej:{key}", []).extend((f, r) for f, r, _ in locs)
    warc_urls = {f"rej:{r['id']}": r["image_url"] for r in fetched if r.get("image_url")}
    thumbs = make_thumbnails(requests, thumb_px, num_cpus, warc_urls=warc_urls, warc_files=image_warcs(out_dir))
    return thumbs, found


def _galleries(staging: str, sel, funnel: dict, nav: dict, thumbs: dict, page_size: int) -> list[dict]:
    """The D_know / D_ling gallery pages; returns the per-language rows of the overview (fills ``nav``)."""
    langs = sorted({k for k in sel.know.counts} | {k for k in sel.ling.counts} | set(funnel.get("d_know", {})), key=str)
    views = []  # (tag, dataset, bk, lang, rows, pages)
    lang_rows = []
    for lang in langs:
        entry = {
            "code": lang,
            "name": render.lang_name(lang),
            "know": sel.know.counts.get(lang, 0),
            "ling": sel.ling.counts.get(lang, 0),
        }
        for tag, dataset, bk in (("know", "d_know", sel.know), ("ling", "d_ling", sel.ling)):
            rows = bk.rows.get(lang, [])
            if rows:
                pages = _pages(f"{tag}-{lang}", len(rows), page_size)
                entry[f"{tag}_href"] = pages[0]
                nav[tag].append({"code": lang, "href": pages[0]})
                views.append((tag, dataset, bk, lang, rows, pages))
        lang_rows.append(entry)
    for tag, dataset, bk, lang, rows, pages in views:
        for p, name in enumerate(pages):
            chunk = [
                {**r, "thumb": thumbs.get(f"{tag}:{r['id']}", "")} for r in rows[p * page_size : (p + 1) * page_size]
            ]
            render.write_page(
                staging,
                name,
                "gallery.html",
                title=f"{dataset} · {lang}",
                nav=nav,
                dataset=dataset,
                lang=lang,
                lang_name=render.lang_name(lang),
                dir=render.text_dir(lang),
                rows=chunk,
                total=bk.counts[lang],
                sampled=len(rows),
                page_size=page_size,
                pages=pages,
                page=p + 1,
                first=p * page_size + 1,
                last=p * page_size + len(chunk),
            )
    return lang_rows


def _rejects_page(staging: str, sel, order: dict[str, int], nav: dict, thumbs: dict, per_reason: int) -> None:
    """``rejects.html``: every stage and reason with its exact count and sampled rows."""
    stages: dict[str, dict] = {}
    for (stage, reason), n in sel.rejects.counts.items():
        s = stages.setdefault(stage or "?", {"stage": stage or "?", "count": 0, "reasons": []})
        s["count"] += n
        rows = []
        fetched = _fetched(stage, order)
        for r in sel.rejects.rows.get((stage, reason), []):
            # a rejected alt-text is often not in the page's language: let the bidi algorithm pick the direction
            rows.append(
                {
                    **r,
                    "thumb": thumbs.get(f"rej:{r['id']}", ""),
                    "dir": "auto",
                    "fetched": bool(fetched),
                    "no_image": "no thumbnail (image not stored or not decodable)"
                    if fetched
                    else f"no image (dropped at {stage})",
                }
            )
        s["reasons"].append({"reason": reason, "count": n, "rows": rows})
    stage_list = sorted(stages.values(), key=lambda s: order.get(s["stage"], 99))
    for s in stage_list:
        s["reasons"].sort(key=lambda r: (-r["count"], str(r["reason"])))
    render.write_page(
        staging,
        "rejects.html",
        "rejects.html",
        title="Rejects",
        nav=nav,
        stages=stage_list,
        total=sum(sel.rejects.counts.values()),
        per_reason=per_reason,
    )


def _near_page(staging: str, sel, nav: dict, thumbs: dict, found: dict) -> None:
    """``near-duplicates.html``: each sampled kept image beside the images dropped for it (none: empty lists)."""
    near = []
    for stage in NEAR_DUP_STAGES:
        groups = []
        for key in sorted((k for k in sel.near.groups if k[0] == stage), key=lambda k: sel.near.groups[k]["hash"]):
            _, lang, url = key
            kept_key = f"{lang}\x1f{url}"
            groups.append(
                {
                    "lang": lang,
                    "dir": render.text_dir(lang),
                    "kept_url": url,
                    "kept_thumb": thumbs.get(kept_key, ""),
                    "kept_alt": next((a for _, _, a in found.get(kept_key, []) if a), ""),
                    "rows": [{**r, "thumb": thumbs.get(f"rej:{r['id']}", "")} for r in sel.near.groups[key]["rows"]],
                    "size": sel.near.sizes[key],
                }
            )
        near.append(
            {
                "stage": stage,
                "n_groups": sel.near.n_groups.get(stage, 0),
                "n_rows": sel.near.n_rows.get(stage, 0),
                "groups": groups,
            }
        )
    render.write_page(
        staging, "near-duplicates.html", "near-duplicates.html", title="Near-duplicates", nav=nav, stages=near
    )


def _training_page(report_dir: str, nav: dict, train_dir: str) -> None:
    tables = []
    keys = (
        "lang",
        "backbone",
        "mix",
        "seed",
        "steps",
        "final_loss",
        "rows",
        "held_out",
        "samples",
        "base_model",
        "data_snapshot",
        "created_at",
    )
    for path in _train_files(train_dir):
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        rows = [
            [k, json.dumps(meta[k], ensure_ascii=False) if isinstance(meta[k], (dict, list)) else meta[k]]
            for k in keys
            if k in meta
        ]
        rows += [
            [f"hyperparameters.{k}", v]
            for k, v in sorted((meta.get("hyperparameters") or {}).items())
            if not isinstance(v, (dict, list))
        ]
        tables.append(
            {
                "title": os.path.relpath(os.path.dirname(path), train_dir) or ".",
                "header": ["field", "value"],
                "rows": rows,
            }
        )
    render.write_page(
        report_dir,
        "training.html",
        "runs.html",
        title="Training runs",
        nav=nav,
        source=os.path.abspath(train_dir),
        tables=tables,
        images=[],
        pairs=[],
    )


def _evaluation_page(report_dir: str, nav: dict, eval_dir: str, max_pairs: int = 100) -> None:
    with open(os.path.join(eval_dir, "report.json"), encoding="utf-8") as f:
        rep = json.load(f)
    agg = rep.get("aggregate", [])
    tables = [
        {
            "title": "Scores (×100, mean ± std over seeds; paper Table 3 layout in report.md)",
            "header": ["backbone", "method", "lang", "metric", "mean", "std", "seeds"],
            "rows": [
                [a["backbone"], a["method"], a["lang"], a["metric"], f"{a['mean']:.2f}", f"{a['std']:.2f}", a["seeds"]]
                for a in agg
            ],
        },
        {
            "title": "Test items per language/source",
            "header": ["lang/source", "items"],
            "rows": sorted((rep.get("test_counts") or {}).items()),
        },
    ]
    images, pairs, total, href = [], [], 0, ""
    os.makedirs(os.path.join(report_dir, "evaluation"), exist_ok=True)
    for name in ("chart.png", "pairs.html", "report.md"):
        src = os.path.join(eval_dir, name)
        if os.path.isfile(src):
            shutil.copyfile(src, os.path.join(report_dir, "evaluation", name))
    if os.path.isfile(os.path.join(eval_dir, "chart.png")):
        images.append({"title": "Base vs fine-tuned", "src": "evaluation/chart.png"})
    if os.path.isfile(os.path.join(eval_dir, "pairs.csv")):
        with open(os.path.join(eval_dir, "pairs.csv"), newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                total += 1
                if len(pairs) < max_pairs:
                    pairs.append(row)
        href = "evaluation/pairs.html"
    render.write_page(
        report_dir,
        "evaluation.html",
        "runs.html",
        title="Evaluation",
        nav=nav,
        source=os.path.abspath(eval_dir),
        tables=tables,
        images=images,
        pairs=pairs,
        pairs_total=total,
        pairs_href=href,
    )
