"""The paper's experiment grid as data: cells, training sizes, tables (paper 4.1-4.2, Tables 3, 4, 5, 8).

A grid (:class:`GridConfig`, ``experiments/*.yaml``) is languages × backbones × methods × training seeds.
It expands (:func:`plan`) into

* **train cells** — one ``jobs/train.py`` run each: ``MELLA`` (mix ``dual``) once per training seed (Table 5's
  spread is over *training* runs), and ``ling-only``, ``know-only``, ``two-stage`` once at the first seed
  (Table 4), each at the main experiment's training size (:func:`training_sizes`);
* **eval cells** — one ``jobs/evaluate.py`` run each: per backbone and training seed, the base model and
  that seed's MELLA adapters (plus, at the first seed, the one-source ablations; the SDRRL approximation's
  row is the ling-only adapter's scores); per backbone and language, the two-stage adapter on its merged base.

A cell is finished when its ``result.json`` exists; it is written atomically (temporary file + rename)
after the run succeeded, so a rerun skips it and a crash leaves no half-written result.

Tables (:func:`render`): Table 3 (base, SDRRL~, MELLA mean over training seeds), Table 4 (the four mixes at
the first seed), Table 5 (sample std of keyword accuracy over training seeds), Table 8 (training rows per
source); numbers of the paper (``experiments/paper_numbers.yaml``) in parentheses beside ours.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from mella.resources import Strict

#: grid method → training mix (``base`` has no training; ``SDRRL`` reuses the ling-only adapter, see docs)
METHOD_MIX = {"MELLA": "dual", "ling-only": "ling-only", "know-only": "know-only", "two-stage": "two-stage"}
METHODS = ("base", "MELLA", "ling-only", "know-only", "two-stage")
MIX_SOURCES = {
    "dual": ("d_know", "d_ling"),
    "know-only": ("d_know",),
    "ling-only": ("d_ling",),
    "two-stage": ("d_ling", "d_know"),
}
METRICS = ("keyword_accuracy", "bleu", "rouge_l", "meteor")
METRIC_TITLES = {
    "keyword_accuracy": "Keyword accuracy (D_know)",
    "bleu": "BLEU (D_ling)",
    "rouge_l": "ROUGE-L (D_ling)",
    "meteor": "METEOR (D_ling)",
}
SDRRL = "SDRRL~"  # our approximation of SDRRL (translate, then SFT): the ling-only adapter
RESULT = "result.json"


class GridConfig(Strict):
    """One experiment grid. ``backbones`` maps backbone (``qwen2-vl`` | ``internvl2``) → checkpoint dir or hub id."""

    data: Path
    output: Path
    langs: list[str]
    backbones: dict[str, Path]
    methods: list[str] = Field(default_factory=lambda: list(METHODS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])  # training seeds of MELLA (Table 5)
    sample_seed: int = 0  # draws the ablations' fixed-size training sets (Table 4)
    sdrrl: bool = True  # print the SDRRL~ row (needs ling-only)
    train: dict = Field(default_factory=dict)  # TrainConfig fields for every train cell
    evaluate: dict = Field(default_factory=dict)  # EvalConfig fields for every eval cell
    paper: Path | None = None  # paper_numbers.yaml (default: next to the grid file)

    @model_validator(mode="after")
    def _check(self) -> GridConfig:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; use {list(METHODS)}")
        bad = [b for b in self.backbones if b not in ("qwen2-vl", "internvl2")]
        if bad:
            raise ValueError(f"unknown backbone(s) {bad}; use qwen2-vl, internvl2")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.evaluate.get("n_test", 100) > self.train.get("n_test", 100) or self.evaluate.get(
            "test_max_fraction", 0.2
        ) != self.train.get("test_max_fraction", 0.2):
            raise ValueError(
                "evaluate.n_test must not exceed train.n_test, and test_max_fraction must be equal: "
                "the evaluation's test images must be held out of training"
            )
        if self.sdrrl and "ling-only" not in self.methods:
            raise ValueError("sdrrl: true needs method ling-only (SDRRL~ is the ling-only adapter)")
        return self


def load_grid(path: str | Path | None, overrides: list[str], **kwargs) -> GridConfig:
    """A grid from YAML, then keyword args, then ``key=value`` strings (YAML-typed; ``train.max_steps=2`` sets a
    nested key; ``langs=hu,cs`` is a comma list). Raises ``ValueError`` for an override without ``=``."""
    values: dict = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    if path and values.get("paper") is None and (Path(path).parent / "paper_numbers.yaml").is_file():
        values["paper"] = Path(path).parent / "paper_numbers.yaml"
    values.update({k: v for k, v in kwargs.items() if v is not None})
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = (x.strip() for x in item.split("=", 1))
        value = yaml.safe_load(raw)
        if key in ("langs", "methods", "seeds") and isinstance(value, str | int):
            value = [yaml.safe_load(x) for x in str(raw).split(",") if x]
        *parents, leaf = key.split(".")
        target = values
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return GridConfig(**values)


# --------------------------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class TrainCell:
    """One training run: ``mix`` of ``lang`` on ``backbone`` with training ``seed``; ``train_rows`` fixes its size."""

    backbone: str
    lang: str
    method: str
    seed: int
    train_rows: int | None = None

    @property
    def mix(self) -> str:
        return METHOD_MIX[self.method]

    @property
    def name(self) -> str:
        """Adapter name in the evaluation's adapter directory: ``mella-<lang>-<mix>-s<seed>``."""
        return f"mella-{self.lang}-{self.mix}-s{self.seed}"

    def dir(self, out: Path) -> Path:
        return Path(out) / "train" / self.backbone / self.lang / f"{self.mix}-s{self.seed}"

    def overrides(self, sample_seed: int) -> list[str]:
        """TrainConfig ``key=value`` settings that make this cell (seed; fixed size for the ablations)."""
        extra = [f"seed={self.seed}"]
        if self.train_rows is not None:
            extra += [f"train_rows={self.train_rows}", f"sample_seed={sample_seed}"]
        return extra


@dataclass(frozen=True)
class EvalCell:
    """One evaluation run: ``methods`` (name → adapter template) of ``langs`` against ``model`` (a base or a
    two-stage merged base); ``key`` names its directory."""

    backbone: str
    key: str
    langs: tuple[str, ...]
    methods: tuple[tuple[str, str], ...]
    seed: int
    model: str = "base"  # "base" or "merged:<lang>" (two-stage: the adapter applies to its merged base)
    trains: tuple[TrainCell, ...] = field(default=(), compare=False)

    def dir(self, out: Path) -> Path:
        return Path(out) / "eval" / self.backbone / self.key


def plan(grid: GridConfig, sizes: dict[str, int]) -> tuple[list[TrainCell], list[EvalCell]]:
    """Train and eval cells of ``grid``. ``sizes``: language → the main experiment's training rows (D_know ∪
    D_ling after the split, :func:`training_sizes`); ``ling-only`` and ``know-only`` train on that many."""
    trains, evals = [], []
    first = grid.seeds[0]
    for bb in grid.backbones:
        for seed in grid.seeds:
            cells = []
            if "MELLA" in grid.methods:
                cells += [TrainCell(bb, lang, "MELLA", seed) for lang in grid.langs]
            if seed == first:
                cells += [
                    TrainCell(bb, lang, m, seed, sizes[lang])
                    for m in ("ling-only", "know-only")
                    if m in grid.methods
                    for lang in grid.langs
                ]
            trains += cells
            methods = [(c.method, f"mella-{{lang}}-{c.mix}-s{seed}") for c in cells if c.lang == grid.langs[0]]
            evals.append(EvalCell(bb, f"s{seed}", tuple(grid.langs), tuple(methods), seed, trains=tuple(cells)))
        if "two-stage" in grid.methods:
            for lang in grid.langs:
                cell = TrainCell(bb, lang, "two-stage", first)
                trains.append(cell)
                evals.append(
                    EvalCell(
                        bb,
                        f"two-stage-{lang}",
                        (lang,),
                        (("two-stage", cell.name),),
                        first,
                        model=f"merged:{lang}",
                        trains=(cell,),
                    )
                )
    return trains, evals


def training_pools(data: Path, langs: list[str], n_test: int, max_fraction: float) -> dict[str, dict[str, int]]:
    """Training rows per language and source after the split (:func:`mella.split.split_by_image`, the split
    training uses): ``{lang: {"d_know": n, "d_ling": n}}`` (0 for an absent source)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mella.split import SOURCES, split_by_image

    tables = {}
    for s in SOURCES:
        files = sorted((Path(data) / s).glob("*.parquet"))
        tables[s] = (
            pa.concat_tables([pq.read_table(f, columns=["id", "lang", "sha256"]) for f in files]) if files else None
        )
    out = {}
    for lang in langs:
        splits = split_by_image(tables, lang, n_test, max_fraction)
        out[lang] = {s: splits[s].train.num_rows if s in splits else 0 for s in SOURCES}
    return out


def training_sizes(pools: dict[str, dict[str, int]]) -> dict[str, int]:
    """The main experiment's (MELLA, dual) training size per language: D_know + D_ling training rows.

    Paper Table 4: "The size of the training dataset is the same as our main experiments": ling-only and
    know-only draw this many samples (``TrainConfig.train_rows``); two-stage trains on D_ling then D_know, the
    same rows as the dual run.
    """
    return {lang: p["d_know"] + p["d_ling"] for lang, p in pools.items()}


# --------------------------------------------------------------------------------------------- results
def read_result(cell_dir: Path) -> dict | None:
    """The cell's ``result.json``, or None when the cell has not finished."""
    path = Path(cell_dir) / RESULT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def collect(grid: GridConfig, evals: list[EvalCell]) -> list[dict]:
    """Per-run scores of every finished eval cell: ``{backbone, method, lang, metric, value, train_seed}``.

    The base model (method ``-``) is taken from base-model cells only (a two-stage cell's ``-`` is its merged base).
    """
    rows = []
    for cell in evals:
        res = read_result(cell.dir(grid.output))
        if res is None:
            continue
        for r in res["runs"]:
            if r["method"] == "-" and cell.model != "base":
                continue
            row = {
                "backbone": cell.backbone,
                "method": r["method"],
                "lang": r["lang"],
                "metric": r["metric"],
                "value": r["value"],
                "n": r["n"],
                "train_seed": cell.seed,
            }
            rows.append(row)
            if grid.sdrrl and r["method"] == "ling-only":  # SDRRL~ is the ling-only adapter (docs/experiments.md)
                rows.append({**row, "method": SDRRL})
    return rows


def summarise(rows: list[dict]) -> dict[tuple, dict]:
    """(backbone, method, lang, metric) → ``{mean, std, runs, seeds}`` over training seeds; the base model's
    repeated runs (one per seed cell, identical with greedy decoding) count once per seed as well."""
    groups: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        groups.setdefault((r["backbone"], r["method"], r["lang"], r["metric"]), []).append(
            (r["train_seed"], r["value"])
        )
    out = {}
    for key, vals in groups.items():
        v = [x for _, x in vals]
        out[key] = {
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else None,
            "runs": len(v),
            "seeds": sorted({s for s, _ in vals}),
        }
    return out


# --------------------------------------------------------------------------------------------- tables
def _paper(paper: dict, *path) -> float | None:
    node = paper
    for p in path[:-1]:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    if not isinstance(node, list):
        return None
    langs = paper.get("langs", [])
    return node[langs.index(path[-1])] if path[-1] in langs else None


def _fmt(ours: float | None, paper: float | None, digits: int = 2) -> str:
    s = "n/a" if ours is None else f"{ours:.{digits}f}"
    return s if paper is None else f"{s} ({paper:.{digits}f})"


def _block(
    title: str, langs: list[str], body: list[list[str]], head: tuple[str, ...] = ("Backbone", "Method")
) -> list[str]:
    return [
        f"**{title}**",
        "",
        "| " + " | ".join(head) + " | " + " | ".join(x.upper() for x in langs) + " |",
        "|" + "---|" * len(head) + "---:|" * len(langs),
        *("| " + " | ".join(r) + " |" for r in body),
        "",
    ]


def tables(grid: GridConfig, runs: list[dict], pools: dict[str, dict[str, int]], paper: dict) -> list[dict]:
    """Tables 3, 4, 5, 8 from per-run scores (:func:`collect`) as rows
    ``{table, metric, backbone, method, lang, ours, std, runs, paper}``; ``ours`` None where no run finished."""
    summary = summarise(runs)
    at_first = {
        (r["backbone"], r["method"], r["lang"], r["metric"]): r["value"]
        for r in runs
        if r["train_seed"] == grid.seeds[0]
    }
    rows = []
    t3 = ["-", *([SDRRL] if grid.sdrrl else []), *(["MELLA"] if "MELLA" in grid.methods else [])]
    t4 = [m for m in ("ling-only", "know-only", "two-stage", "MELLA") if m in grid.methods]
    for bb in grid.backbones:
        for lang in grid.langs:
            for metric in METRICS:
                for m in t3:
                    s = summary.get((bb, m, lang, metric))
                    rows.append(
                        {
                            "table": 3,
                            "metric": metric,
                            "backbone": bb,
                            "method": m,
                            "lang": lang,
                            "ours": s and s["mean"],
                            "std": s and s["std"],
                            "runs": s and s["runs"],
                            "paper": _paper(paper, "table3", metric, bb, "SDRRL" if m == SDRRL else m, lang),
                        }
                    )
                for m in t4:  # Table 4 compares the mixes at one training seed (the first)
                    ours = at_first.get((bb, m, lang, metric))
                    rows.append(
                        {
                            "table": 4,
                            "metric": metric,
                            "backbone": bb,
                            "method": m,
                            "lang": lang,
                            "ours": ours,
                            "std": None,
                            "runs": None if ours is None else 1,
                            "paper": _paper(paper, "table4", metric, bb, m, lang),
                        }
                    )
            s = summary.get((bb, "MELLA", lang, "keyword_accuracy"))
            rows.append(
                {
                    "table": 5,
                    "metric": "keyword_accuracy_std",
                    "backbone": bb,
                    "method": "MELLA",
                    "lang": lang,
                    "ours": s and s["std"],
                    "std": None,
                    "runs": s and s["runs"],
                    "paper": _paper(paper, "table5", bb, lang),
                }
            )
            for src in ("d_know", "d_ling"):
                rows.append(
                    {
                        "table": 8,
                        "metric": f"{src}_train_rows",
                        "backbone": bb,
                        "method": "MELLA",
                        "lang": lang,
                        "ours": pools.get(lang, {}).get(src),
                        "std": None,
                        "runs": None,
                        "paper": _paper(paper, "table8", bb, src, lang),
                    }
                )
    return rows


def render(grid: GridConfig, rows: list[dict], paper_source: str | None, missing: list[str]) -> str:
    """``tables.md``: Tables 3, 4, 5 and 8, ours with the paper's number in parentheses where it gives one."""
    langs, idx = grid.langs, {(r["table"], r["metric"], r["backbone"], r["method"], r["lang"]): r for r in rows}
    md = [
        "# MELLA reproduction: Tables 3, 4, 5, 8",
        "",
        "Ours first, the paper's number in parentheses (" + (paper_source or "no paper numbers loaded") + "). "
        "Metrics 0-100. MELLA in Table 3 is the mean over training seeds " + str(grid.seeds) + ".",
        "",
    ]

    def body(table, metric, methods, digits=2):
        out = []
        for bb in grid.backbones:
            for m in methods:
                cells = [idx.get((table, metric, bb, m, lang)) for lang in langs]
                if all(c is None for c in cells):
                    continue
                out.append([bb, m, *(_fmt(c and c["ours"], c and c["paper"], digits) for c in cells)])
        return out

    t3 = sorted({r["method"] for r in rows if r["table"] == 3}, key=["-", SDRRL, "MELLA"].index)
    t4 = [
        m
        for m in ("ling-only", "know-only", "two-stage", "MELLA")
        if any(r["method"] == m and r["table"] == 4 for r in rows)
    ]
    md += ["## Table 3: base vs MELLA", ""]
    for metric in METRICS:
        md += _block(METRIC_TITLES[metric], langs, body(3, metric, t3))
    md += ["## Table 4: one source, two stages, both at once (same training size; seed " + str(grid.seeds[0]) + ")", ""]
    for metric in METRICS:
        md += _block(METRIC_TITLES[metric], langs, body(4, metric, t4))
    md += ["## Table 5: std of keyword accuracy over training seeds " + str(grid.seeds), ""]
    md += _block("sample std (0-100)", langs, body(5, "keyword_accuracy_std", ["MELLA"], 3))
    md += ["## Table 8: training rows per source (after the held-out split)", ""]
    t8 = [
        [
            bb,
            src,
            *(
                _fmt(
                    idx[(8, f"{src}_train_rows", bb, "MELLA", lang)]["ours"],
                    idx[(8, f"{src}_train_rows", bb, "MELLA", lang)]["paper"],
                    0,
                )
                for lang in langs
            ),
        ]
        for bb in grid.backbones
        for src in ("d_know", "d_ling")
    ]
    md += _block("rows", langs, t8, ("Backbone", "Source"))
    md += [
        (
            f"{SDRRL}: an approximation of SDRRL (translate, then SFT) — the ling-only adapter (machine-translated "
            "English captions, no native alt-text); its differences from SDRRL: docs/experiments.md."
        ),
        "",
    ]
    if missing:
        md += ["Cells not finished: " + ", ".join(missing), ""]
    return "\n".join(md)


def to_csv(rows: list[dict]) -> str:
    """The table rows as CSV (columns: table, metric, backbone, method, lang, ours, std, runs, paper)."""
    buf = io.StringIO()
    w = csv.DictWriter(
        buf, fieldnames=["table", "metric", "backbone", "method", "lang", "ours", "std", "runs", "paper"]
    )
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
