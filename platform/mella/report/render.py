"""HTML of the report: Jinja2 templates (``templates/``, autoescaped) and an inline SVG funnel chart.

Every page is a plain file with its CSS inline and images as ``data:`` URLs or files beside it, so the
site opens from ``file://`` with no server and no network. Text is marked with its language
(``lang``) and direction: ``rtl`` for languages written in a right-to-left script (from
``data/languages.yaml``), ``auto`` otherwise (the Unicode bidi algorithm, UAX #9, picks per text).
"""

from __future__ import annotations

import os

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import escape

#: Unicode scripts written right to left (Unicode Standard, ch. 9 Middle East scripts; UAX #9).
RTL_SCRIPTS = {"Arabic", "Hebrew", "Syriac", "Thaana", "Nko", "Adlam", "Samaritan", "Mandaic"}


def text_dir(lang: str | None) -> str:
    """``"rtl"`` if ``lang``'s configured scripts are right to left, else ``"auto"``."""
    from mella.languages import load_languages

    entry = load_languages().get(lang or "")
    return "rtl" if entry and set(entry.scripts) & RTL_SCRIPTS else "auto"


def lang_name(lang: str | None) -> str:
    from mella.languages import load_languages

    entry = load_languages().get(lang or "")
    return entry.name if entry else (lang or "")


_ENV: Environment | None = None


def env() -> Environment:
    global _ENV
    if _ENV is None:
        _ENV = Environment(
            loader=PackageLoader("mella.report", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
    return _ENV


def write_page(report_dir: str, name: str, template: str, **context) -> str:
    """Render ``template`` with ``context`` to ``report_dir/name`` (the report is built in a staging
    directory and swapped in whole, so pages need no atomic write); return the path."""
    path = os.path.join(report_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(env().get_template(template).render(**context))
    return path


def funnel_svg(funnel: dict, width: int = 860, row_h: int = 28) -> str:
    """Horizontal bars of every funnel stage: rows in (light) and out (dark), scaled per unit
    (pages, images, pairs), with the counts and the top three reasons. Returns an ``<svg>`` string."""
    stages = funnel.get("stages", [])
    if not stages:
        return ""
    label_w, bar_w = 130, 330
    top_by_unit: dict[str, int] = {}
    for s in stages:
        top_by_unit[s["unit"]] = max(top_by_unit.get(s["unit"], 0), s["in"], 1)
    h = row_h * len(stages) + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" viewBox="0 0 {width} {h}" '
        f'font-family="system-ui, DejaVu Sans, sans-serif" font-size="12" role="img" aria-label="funnel per stage">'
    ]
    for k, s in enumerate(stages):
        y = 5 + k * row_h
        scale = bar_w / top_by_unit[s["unit"]]
        w_in, w_out = max(1.0, s["in"] * scale), max(0.0, s["out"] * scale)
        reasons = sorted(s.get("reasons", {}).items(), key=lambda kv: -kv[1])[:3]
        why = ", ".join(f"{r}:{n}" for r, n in reasons)
        routed = f" (→ D_ling {s['routed_to_d_ling']})" if s.get("routed_to_d_ling") else ""
        out.append(
            f'<g class="stage" data-stage="{escape(s["stage"])}">'
            f'<text x="0" y="{y + 17}">{escape(s["stage"])}</text>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w_in:.1f}" height="{row_h - 8}" fill="#c9dbee"/>'
            f'<rect x="{label_w}" y="{y + 4}" width="{w_out:.1f}" height="{row_h - 8}" fill="#2f6fae"/>'
            f'<text x="{label_w + bar_w + 8}" y="{y + 17}">{s["in"]} → {s["out"]} {escape(s["unit"])}'
            f'<tspan fill="#b0413e"> {escape(why)}{escape(routed)}</tspan></text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def lang_funnel(funnel: dict) -> dict | None:
    """Per-language ``in → out`` of the image stages: ``{langs, rows: [{stage, cells: [{in, out} | None]}]}``."""
    rows = [s for s in funnel.get("stages", []) if s.get("by_lang") and s["unit"] == "images"]
    langs = sorted({lang for s in rows for lang in s["by_lang"] if lang})
    if not rows or not langs:
        return None
    return {
        "langs": langs,
        "rows": [{"stage": s["stage"], "cells": [s["by_lang"].get(lang) for lang in langs]} for s in rows],
    }
