"""The paper's experiments as one command: Tables 3, 4, 5 and 8 for both backbones (paper 4.1-4.2, appendix C).

    python jobs/reproduce.py --config experiments/paper.yaml [--output DIR] [--langs hu,cs] [key=value ...]
    python jobs/reproduce.py --config experiments/tiny.yaml           (what `make reproduce-tiny` runs)
    python jobs/reproduce.py --config experiments/paper.yaml --print-config

The grid (mella.experiments.GridConfig): languages × backbones × {base, MELLA (dual), ling-only, know-only,
two-stage} × training seeds. Each train cell is a jobs/train.py run (Ray Train + DeepSpeed; the ablations at
the main run's training size, drawn with sample_seed), each eval cell a jobs/evaluate.py run (Ray Data batch
inference with the serving engine). A cell whose result.json exists is skipped, so a rerun resumes. Writes
OUTPUT/tables.md, tables.csv, tables.json (the paper's numbers beside ours). Overrides are bare key=value
(YAML-typed; nested with dots: train.max_steps=2, backbones.qwen2-vl=/models/q). Guide: docs/experiments.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import yaml
from _bootstrap import ROOT

from mella import console, preflight
from mella.experiments import (
    EvalCell,
    GridConfig,
    TrainCell,
    collect,
    load_grid,
    plan,
    read_result,
    render,
    tables,
    to_csv,
    training_pools,
    training_sizes,
)
from mella.io import write_json_atomic

MODEL_TYPES = {"qwen2_vl": "qwen2-vl", "internvl": "internvl2"}


def _load_job(name: str):
    """``main`` module of jobs/NAME.py, loaded by path (as jobs/e2e.py does)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"mella_job_{name}", ROOT / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def _log_to(path: Path):
    """A job's stdout (its result JSON) goes to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield


def _kv(settings: dict) -> list[str]:
    """``{k: v}`` → ``["k=<json v>", ...]`` (JSON is YAML: the jobs' bare ``key=value`` settings parse it back)."""
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def _flags(flag: str, values: list[str]) -> list[str]:
    """``[flag, v1, flag, v2, ...]``."""
    return [x for v in values for x in (flag, v)]


def check_grid(grid: GridConfig, pools: dict) -> None:
    """Languages, checkpoints (model_type matches the backbone), sources the methods need; raises UsageError."""
    preflight.check_langs(grid.langs)
    for bb, path in list(grid.backbones.items()):
        local, model_cfg = preflight.check_model(str(path), f"backbones.{bb}")  # a dir or a hub id (HF cache)
        grid.backbones[bb] = Path(local)
        kind = MODEL_TYPES.get(model_cfg.get("model_type"))
        if kind != bb:
            raise console.UsageError(f"backbones.{bb}: {path} is a {kind or 'non-MLLM'} checkpoint, not {bb}")
    need_ling = {"MELLA", "ling-only", "two-stage"} & set(grid.methods)
    for lang, p in pools.items():
        if not p["d_know"] and {"MELLA", "know-only", "two-stage"} & set(grid.methods):
            raise console.UsageError(f"--data {grid.data} has no D_know training rows for {lang} (after the split)")
        if need_ling and not p["d_ling"]:
            raise console.UsageError(
                f"--data {grid.data} has no D_ling training rows for {lang}: the methods "
                f"{sorted(need_ling)} need d_ling/ (build_corpus.py --d-ling) or drop them "
                "(methods=base,know-only sdrrl=false)"
            )
    preflight.check_output(grid.output)


def run_train(grid: GridConfig, cell: TrainCell, train_job) -> dict:
    """One jobs/train.py run; its summary goes to the cell's result.json (atomically) once it succeeded."""
    out = cell.dir(grid.output)
    args = [
        "--data",
        str(grid.data),
        "--lang",
        cell.lang,
        "--backbone",
        cell.backbone,
        "--model",
        str(grid.backbones[cell.backbone]),
        "--output",
        str(out),
        "--mix",
        cell.mix,
        "-q",
    ]
    args += [*_kv(grid.train), *cell.overrides(grid.sample_seed)]  # bare key=value settings (the jobs' grammar)
    t = time.monotonic()
    with _log_to(out / "train.log"):
        summary = train_job.main(args)
    result = {"cell": asdict(cell), "seconds": round(time.monotonic() - t, 1), "summary": summary}
    write_json_atomic(result, str(out / "result.json"))
    return result


def _adapter_dir(grid: GridConfig, cell: EvalCell) -> Path:
    """A directory of links ``<adapter name>`` → each train cell's adapter (the layout the engine discovers)."""
    d = Path(grid.output) / "adapters" / cell.backbone / cell.key
    d.mkdir(parents=True, exist_ok=True)
    for t in cell.trains:
        link, target = d / t.name, (t.dir(grid.output) / "adapter").resolve()
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return d


def run_eval(grid: GridConfig, cell: EvalCell, eval_job) -> dict:
    """One jobs/evaluate.py run (Ray Data mode); its per-run scores go to the cell's result.json."""
    out = cell.dir(grid.output)
    model = grid.backbones[cell.backbone] if cell.model == "base" else cell.trains[0].dir(grid.output) / "stage1_merged"
    args = [
        "--data",
        str(grid.data),
        "--langs",
        ",".join(cell.langs),
        "--output",
        str(out),
        "--model",
        str(model),
        "--adapters",
        str(_adapter_dir(grid, cell)),
        "--backbone",
        cell.backbone,
        "--seeds",
        str(cell.seed),
        "-q",
        *_flags("--method", [f"{m}={t}" for m, t in cell.methods]),
        *_kv({"backbone_label": cell.backbone, **grid.evaluate}),
    ]
    t = time.monotonic()
    with _log_to(out / "eval.log"):
        res = eval_job.main(args)
    if res["missing"]:
        raise RuntimeError(f"eval cell {cell.backbone}/{cell.key}: adapters not found: {res['missing']}")
    report = json.loads(Path(res["paths"]["json"]).read_text(encoding="utf-8"))
    result = {
        "cell": {k: v for k, v in asdict(cell).items() if k != "trains"},
        "seconds": round(time.monotonic() - t, 1),
        "runs": report["runs"],
        "paths": res["paths"],
    }
    write_json_atomic(result, str(out / "result.json"))
    return result


def run_cells(grid: GridConfig, trains: list[TrainCell], evals: list[EvalCell]) -> dict:
    """Every unfinished cell (per backbone: trains, then evals); returns ``{ran, skipped}`` and seconds per cell kind."""
    train_job, eval_job = _load_job("train"), _load_job("evaluate")
    progress, stats = console.Progress(), {"ran": 0, "skipped": 0, "train_s": 0.0, "eval_s": 0.0}
    # per backbone, its training cells then its evaluations: a backbone's tables fill while the next one trains
    order = [c for bb in grid.backbones for c in [*trains, *evals] if c.backbone == bb]
    todo = [c for c in order if read_result(c.dir(grid.output)) is None]
    stats["skipped"] = len(trains) + len(evals) - len(todo)
    progress.start("cells", f"{len(todo)} to run, {stats['skipped']} finished before")
    try:
        for k, cell in enumerate(todo, 1):
            label = (
                f"{cell.backbone}/{cell.lang}/{cell.mix}-s{cell.seed}"
                if isinstance(cell, TrainCell)
                else f"{cell.backbone}/eval/{cell.key}"
            )
            progress.update(f"{k}/{len(todo)}: {label}")
            if read_result(cell.dir(grid.output)) is not None:  # finished meanwhile (another driver on the grid)
                stats["skipped"] += 1
                continue
            res = run_train(grid, cell, train_job) if isinstance(cell, TrainCell) else run_eval(grid, cell, eval_job)
            stats["train_s" if isinstance(cell, TrainCell) else "eval_s"] += res["seconds"]
            stats["ran"] += 1
        progress.end(f"{stats['ran']} cells ran, {stats['skipped']} skipped")
    finally:
        progress.close()
    return stats


def write_tables(grid: GridConfig, trains, evals, pools: dict) -> dict:
    """tables.md / .csv / .json from every finished eval cell; returns their paths."""
    paper = yaml.safe_load(Path(grid.paper).read_text(encoding="utf-8")) if grid.paper else {}
    rows = tables(grid, collect(grid, evals), pools, paper)
    missing = [f"{c.backbone}/{c.key}" for c in evals if read_result(c.dir(grid.output)) is None]
    out = Path(grid.output)
    paths = {"markdown": out / "tables.md", "csv": out / "tables.csv", "json": out / "tables.json"}
    for key, text in (("markdown", render(grid, rows, paper.get("source"), missing)), ("csv", to_csv(rows))):
        tmp = paths[key].with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, paths[key])
    write_json_atomic(
        {
            "grid": grid.model_dump(mode="json"),
            "pools": pools,
            "rows": rows,
            "missing": missing,
            "cells": {"train": len(trains), "eval": len(evals)},
        },
        str(paths["json"]),
    )
    return {k: str(v) for k, v in paths.items()}


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, GridConfig]:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="grid YAML (experiments/paper.yaml, experiments/tiny.yaml)")
    ap.add_argument("--output", help="where cells and tables go (overrides the grid's output)")
    ap.add_argument("--data", help="corpus dir (overrides the grid's data)")
    ap.add_argument("--langs", help="comma-separated languages (overrides the grid's langs)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved grid as YAML and exit")
    ap.add_argument("--tables-only", action="store_true", help="write the tables from the finished cells; run nothing")
    ap.add_argument("--num-cpus", type=int, help="local Ray CPUs (default: all)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="grid settings, e.g. train.max_steps=2")
    console.add_console_flags(ap)
    a = ap.parse_args(argv)
    console.setup(a.quiet, a.verbose)
    if not Path(a.config).is_file():
        raise console.UsageError(f"--config {a.config} does not exist: give a grid YAML (experiments/paper.yaml)")
    langs = [x for x in a.langs.split(",") if x] if a.langs else None
    try:
        grid = load_grid(a.config, a.overrides, output=a.output, data=a.data, langs=langs)
    except ValueError as e:
        if type(e).__name__ == "ValidationError":
            raise console.UsageError(f"--config {a.config}: {str(e).splitlines()[1:3]}") from e
        raise console.UsageError(str(e)) from e
    return a, grid


def main(argv: list[str] | None = None) -> int:
    a, grid = parse(argv)
    if a.print_config:
        print(yaml.safe_dump(grid.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
        return 0
    if not Path(grid.data).is_dir() or not (Path(grid.data) / "d_know").is_dir():
        raise console.UsageError(
            f"data {grid.data} holds no d_know/: run jobs/build_corpus.py --output {grid.data} first"
        )
    preflight.check_langs(grid.langs)
    n_test = grid.train.get("n_test", 100)
    pools = training_pools(grid.data, grid.langs, n_test, grid.train.get("test_max_fraction", 0.2))
    check_grid(grid, pools)
    trains, evals = plan(grid, training_sizes(pools))
    t0 = time.monotonic()
    stats = {"ran": 0, "skipped": 0}
    if not a.tables_only:
        from mella.runtime import init_ray

        console.quiet_ray()
        init_ray(a.num_cpus)
        try:
            stats = run_cells(grid, trains, evals)
        finally:
            import ray

            ray.shutdown()
    paths = write_tables(grid, trains, evals, pools)
    print(Path(paths["markdown"]).read_text(encoding="utf-8"))
    wall = time.monotonic() - t0
    write_json_atomic(
        {**stats, "seconds": round(wall, 1), "cells": len(trains) + len(evals)},
        str(Path(grid.output) / f"run-{time.strftime('%Y%m%dT%H%M%S')}.json"),
    )
    print(
        f"{len(trains)} train + {len(evals)} eval cells: {stats['ran']} ran, {stats['skipped']} skipped "
        f"(finished before); {wall:.0f} s. Tables: {', '.join(paths.values())}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(console.run_job(main))
