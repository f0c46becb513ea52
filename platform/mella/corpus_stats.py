"""Dataset statistics of a build output directory: the counterpart of the paper's Figure 4 (main statistics
per language, circular category distribution, per-language quantities) plus text-length histograms.

Input: ``DIR/d_know/*.parquet`` and ``DIR/d_ling/*.parquet`` (RECORD_SCHEMA; either may be absent).
Text of a row: ``alt_text`` for D_know, ``text`` (the translation) for D_ling. Lengths are in Unicode
code points (characters), which is comparable across scripts (Thai has no spaces, so words are not).
Only the needed columns are read, never the image bytes (``image_bytes`` gives sizes).

:func:`compute` → a JSON-ready dict; :func:`plot` → a PNG (matplotlib, Agg backend).
"""

from __future__ import annotations

import glob
import os
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mella.io import write_json_atomic

DATASETS = ("d_know", "d_ling")
COLUMNS = ("lang", "source", "category", "category_major", "alt_text", "text", "mt_backend", "qe_score", "image_bytes")
#: histogram bin edges for text length, characters (log-spaced; alt-texts are short, captions long)
LENGTH_BINS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def load(out_dir: str, dataset: str) -> pa.Table:
    """The statistics columns of ``out_dir/<dataset>/*.parquet`` (empty table when there are none)."""
    files = sorted(glob.glob(os.path.join(out_dir, dataset, "*.parquet")))
    tables = []
    for f in files:
        names = set(pq.read_schema(f).names)
        tables.append(pq.read_table(f, columns=[c for c in COLUMNS if c in names]))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in ("lang", "source")})
    return pa.concat_tables(tables, promote_options="default")


def _col(t: pa.Table, name: str) -> list:
    return t.column(name).to_pylist() if name in t.column_names else [None] * t.num_rows


def compute(out_dir: str) -> dict:
    """Statistics of a build output directory (see module doc). Counts are rows (image-text pairs).

    Keys: ``total``; ``datasets.<d_know|d_ling>`` with ``rows``, ``per_lang``, ``per_source``,
    ``per_lang_source``, ``image_mb``, ``avg_text_chars``, ``per_backend`` / ``qe_mean`` (D_ling);
    ``per_lang.<lang>`` with ``d_know``, ``d_ling``, ``total``, ``avg_text_chars``; ``categories`` with
    ``major`` and ``fine`` counts over both datasets; ``text_length_hist`` with ``bins`` (edges, chars)
    and counts per dataset.
    """
    out: dict = {"output_dir": os.path.abspath(out_dir), "datasets": {}, "per_lang": {}}
    major, fine = Counter(), Counter()
    hist = {"bins": LENGTH_BINS}
    lang_chars: dict[str, list[int]] = {}
    for ds in DATASETS:
        t = load(out_dir, ds)
        langs, sources = _col(t, "lang"), _col(t, "source")
        texts = _col(t, "alt_text" if ds == "d_know" else "text")
        lengths = [len(x or "") for x in texts]
        sizes = [x or 0 for x in _col(t, "image_bytes")]
        per_lang = Counter(langs)
        bytes_by_lang: Counter = Counter()
        for lang, b in zip(langs, sizes):
            bytes_by_lang[lang] += b
        chars_by_lang: dict[str, list[int]] = {}
        for lang, n in zip(langs, lengths):
            chars_by_lang.setdefault(lang, []).append(n)
            lang_chars.setdefault(lang, []).append(n)
        d = {
            "rows": t.num_rows,
            "per_lang": dict(sorted(per_lang.items(), key=lambda kv: str(kv[0]))),
            "per_source": dict(Counter(sources)),
            "per_lang_source": {
                f"{lang}/{src}": n for (lang, src), n in sorted(Counter(zip(langs, sources)).items(), key=str)
            },
            "image_mb": round(sum(sizes) / 2**20, 3),
            "image_mb_per_lang": {str(k): round(v / 2**20, 3) for k, v in sorted(bytes_by_lang.items(), key=str)},
            "avg_text_chars": {str(k): round(float(np.mean(v)), 1) for k, v in sorted(chars_by_lang.items(), key=str)},
        }
        if ds == "d_ling":
            d["per_backend"] = dict(Counter(_col(t, "mt_backend")))
            qe = [x for x in _col(t, "qe_score") if x is not None]
            d["qe_mean"] = round(float(np.mean(qe)), 4) if qe else None
        out["datasets"][ds] = d
        major.update(x or "unknown" for x in _col(t, "category_major"))
        fine.update(x or "unknown" for x in _col(t, "category"))
        hist[ds] = (
            np.histogram(np.clip(lengths, 1, LENGTH_BINS[-1] - 1), bins=LENGTH_BINS)[0].tolist()
            if lengths
            else [0] * (len(LENGTH_BINS) - 1)
        )
    for lang in sorted({lang for d in out["datasets"].values() for lang in d["per_lang"]}, key=str):
        k, g = out["datasets"]["d_know"]["per_lang"].get(lang, 0), out["datasets"]["d_ling"]["per_lang"].get(lang, 0)
        mb = sum(d["image_mb_per_lang"].get(str(lang), 0) for d in out["datasets"].values())
        out["per_lang"][str(lang)] = {
            "d_know": k,
            "d_ling": g,
            "total": k + g,
            "avg_text_chars": round(float(np.mean(lang_chars[lang])), 1),
            "image_mb": round(mb, 3),
        }
    out["total"] = sum(d["rows"] for d in out["datasets"].values())
    out["categories"] = {"major": dict(major.most_common()), "fine": dict(fine.most_common())}
    out["text_length_hist"] = hist
    return out


def plot(stats: dict, png_path: str) -> None:
    """Draw the four panels (main table, category rings, per-language bars, length histograms) to ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mella.taxonomy import load_taxonomy

    know, ling = stats["datasets"]["d_know"], stats["datasets"]["d_ling"]
    fig = plt.figure(figsize=(18, 10.5), dpi=100)
    gs = fig.add_gridspec(2, 2, width_ratios=[1, 1.25], height_ratios=[1, 1], hspace=0.22, wspace=0.12)
    fig.suptitle(
        f"MELLA build statistics — {stats['total']} image-text pairs (D_know {know['rows']}, D_ling {ling['rows']})",
        fontsize=16,
        fontweight="bold",
        y=0.98,
    )
    langs = list(stats["per_lang"])
    lang_colors = {lang: plt.cm.tab10(i % 10) for i, lang in enumerate(langs)}

    _table(fig.add_subplot(gs[0, 0]), stats, lang_colors)
    _categories(fig.add_subplot(gs[0, 1]), stats, load_taxonomy())
    _per_language(fig.add_subplot(gs[1, 0]), stats, lang_colors)
    _lengths(fig.add_subplot(gs[1, 1]), stats)
    fig.savefig(png_path, bbox_inches="tight")
    plt.close(fig)


def _table(ax, stats: dict, lang_colors: dict) -> None:
    """(a) the main statistics per language, as a table."""
    know, ling = stats["datasets"]["d_know"], stats["datasets"]["d_ling"]

    ax.axis("off")
    ax.set_title("(a) Main statistics per language", loc="left", fontsize=13)
    header = [
        "lang",
        "D_know",
        "D_ling",
        "total",
        "avg len\n(chars)",
        "avg len\nD_know",
        "avg len\nD_ling",
        "images\n(MB)",
    ]
    rows = [
        [
            lang,
            v["d_know"],
            v["d_ling"],
            v["total"],
            v["avg_text_chars"],
            know["avg_text_chars"].get(lang, "–"),
            ling["avg_text_chars"].get(lang, "–"),
            f"{v['image_mb']:.1f}",
        ]
        for lang, v in stats["per_lang"].items()
    ]
    all_chars = [v["avg_text_chars"] * v["total"] for v in stats["per_lang"].values()]
    rows.append(
        [
            "all",
            know["rows"],
            ling["rows"],
            stats["total"],
            f"{sum(all_chars) / max(1, stats['total']):.1f}",
            "",
            "",
            f"{know['image_mb'] + ling['image_mb']:.1f}",
        ]
    )
    table = ax.table(
        cellText=[[str(c) for c in r] for r in rows],
        colLabels=header,
        loc="upper center",
        cellLoc="center",
        bbox=[0, max(0.0, 1 - 0.085 * (len(rows) + 1.6)), 1, 0.085 * (len(rows) + 1.6)],
    )
    table.auto_set_font_size(False)
    table.set_fontsize(11)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor("#b0b7c0")
        if r == 0:
            cell.set_facecolor("#dde3ea")
            cell.set_text_props(fontweight="bold", fontsize=10)
            cell.set_height(cell.get_height() * 1.6)
        elif r == len(rows):
            cell.set_text_props(fontweight="bold")
        elif c == 0:
            cell.set_facecolor((*lang_colors[rows[r - 1][0]][:3], 0.35))


def _categories(ax, stats: dict, tax) -> None:
    """(b) category rings: inner = major, outer = fine (grouped under its major); legend with counts."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ax.set_title("(b) Category distribution (inner ring: major, outer ring: fine)", loc="left", fontsize=13)
    fine_counts = stats["categories"]["fine"]
    majors = list(tax.majors) + (["unknown"] if fine_counts.get("unknown") else [])
    cmaps = [plt.cm.Blues, plt.cm.Greens, plt.cm.Oranges, plt.cm.Purples, plt.cm.Greys]
    inner, inner_c, inner_l, outer, outer_c, outer_l, handles = [], [], [], [], [], [], []
    total = sum(fine_counts.values()) or 1
    for mi, m in enumerate(majors):
        keys = [k for k, c in tax.fine.items() if c.major == m] if m != "unknown" else ["unknown"]
        shown = [(k, fine_counts[k]) for k in keys if fine_counts.get(k)]
        if not shown:
            continue
        cmap = cmaps[mi % len(cmaps)]
        m_label = tax.majors[m]["label"] if m in tax.majors else "Unknown"
        inner.append(sum(v for _, v in shown))
        inner_c.append(cmap(0.8))
        inner_l.append(m_label)
        handles.append(Patch(color=cmap(0.8), label=f"{m_label}: {inner[-1]} ({inner[-1] / total:.0%})"))
        for j, (k, v) in enumerate(shown):
            outer.append(v)
            outer_c.append(cmap(0.3 + 0.45 * j / max(1, len(shown) - 1)))
            outer_l.append(tax.fine[k].label if k in tax.fine else "Unknown")
            handles.append(Patch(color=outer_c[-1], label=f"    {outer_l[-1]}: {v}"))
    if inner:
        ax.pie(
            inner,
            radius=0.7,
            colors=inner_c,
            wedgeprops=dict(width=0.32, edgecolor="white"),
            startangle=90,
            counterclock=False,
            labels=[f"{v / total:.0%}" if v / total >= 0.06 else "" for v in inner],
            labeldistance=0.78,
            textprops=dict(fontsize=11, ha="center", color="white", fontweight="bold"),
        )
        ax.pie(
            outer,
            radius=1.0,
            colors=outer_c,
            wedgeprops=dict(width=0.3, edgecolor="white"),
            startangle=90,
            counterclock=False,
            labels=[lbl if v / total >= 0.04 else "" for lbl, v in zip(outer_l, outer)],
            labeldistance=1.06,
            textprops=dict(fontsize=10),
        )
        ax.legend(
            handles=handles,
            loc="center left",
            bbox_to_anchor=(1.08, 0.5),
            fontsize=9.5,
            frameon=False,
            title="categories (pairs)",
            title_fontsize=10,
            alignment="left",
        )
    else:
        ax.text(0.5, 0.5, "no categorised rows", ha="center", transform=ax.transAxes)
    ax.set_aspect("equal")


def _per_language(ax, stats: dict, lang_colors: dict) -> None:
    """(c) pairs per language, stacked by dataset and source."""
    import matplotlib.pyplot as plt

    langs = list(stats["per_lang"])
    ax.set_title("(c) Image-text pairs per language and source", loc="left", fontsize=13)
    x = np.arange(len(langs))
    bottom = np.zeros(len(langs))
    palette = {"d_know": plt.cm.Blues, "d_ling": plt.cm.Oranges}
    for ds, label in (("d_know", "D_know (alt-text)"), ("d_ling", "D_ling (caption → MT)")):
        srcs = [s for s in sorted(stats["datasets"][ds]["per_source"], key=str)]
        for j, src in enumerate(srcs):
            vals = np.array([stats["datasets"][ds]["per_lang_source"].get(f"{lang}/{src}", 0) for lang in langs], float)
            if vals.sum():
                ax.bar(
                    x,
                    vals,
                    bottom=bottom,
                    color=palette[ds](0.75 - 0.3 * j / max(1, len(srcs))),
                    edgecolor="white",
                    label=f"{label}, {src}",
                )
                bottom += vals
    for xi, b in zip(x, bottom):
        ax.text(xi, b, f"{int(b)}", ha="center", va="bottom", fontsize=10)
    ax.set_xticks(x, langs)
    for tick, lang in zip(ax.get_xticklabels(), langs):
        tick.set_color(lang_colors[lang])
        tick.set_fontweight("bold")
    ax.set_ylabel("pairs")
    ax.set_ylim(0, max(1, bottom.max() if len(bottom) else 1) * 1.3)
    if ax.get_legend_handles_labels()[0]:  # no rows: no legend (and no matplotlib warning)
        ax.legend(fontsize=9.5, loc="upper left", ncol=2, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)


def _lengths(ax, stats: dict) -> None:
    """(d) text-length histograms (characters, log-spaced bins)."""
    import matplotlib.pyplot as plt

    ax.set_title(
        "(d) Text length per pair (characters; D_know: alt-text, D_ling: translation)", loc="left", fontsize=13
    )
    hist = stats["text_length_hist"]
    edges = np.array(hist["bins"], float)
    used = [i for ds in DATASETS for i, c in enumerate(hist[ds]) if c]
    hi = min(len(edges) - 1, (max(used) + 2) if used else len(edges) - 1)
    for ds, label, color in (("d_know", "D_know", plt.cm.Blues(0.7)), ("d_ling", "D_ling", plt.cm.Oranges(0.7))):
        counts = np.array(hist[ds], float)
        if counts.sum():
            ax.stairs(counts, edges, fill=True, alpha=0.4, color=color, label=f"{label} (n={int(counts.sum())})")
            ax.stairs(counts, edges, color=color, linewidth=1.8)
    ax.set_xscale("log", base=2)
    ax.set_xlim(edges[0], edges[hi])
    ax.set_xticks(edges[: hi + 1], [str(int(e)) for e in edges[: hi + 1]])
    ax.set_xlabel("characters per text (log scale)")
    ax.set_ylabel("pairs")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=10, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)


def write(out_dir: str, png_path: str | None = None, json_path: str | None = None) -> dict:
    """:func:`compute` + :func:`plot`; writes ``DIR/statistics.png`` and ``DIR/statistics.json`` by default."""
    stats = compute(out_dir)
    png_path = png_path or os.path.join(out_dir, "statistics.png")
    json_path = json_path or os.path.join(out_dir, "statistics.json")
    plot(stats, png_path)
    stats["png"] = os.path.abspath(png_path)
    write_json_atomic(stats, json_path)
    return stats
