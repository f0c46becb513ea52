"""The experiment grid (jobs/reproduce.py, mella.experiments): equal-size ablations, training seeds, resume,
tables; and the two-stage merge running in a Ray task in the checkpoint's dtype (never on the driver)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from synthetic_corpus import write_corpus

from mella.experiments import (
    METRICS,
    collect,
    load_grid,
    plan,
    read_result,
    training_pools,
    training_sizes,
)
from mella.io import write_json_atomic
from mella.train.config import TrainConfig
from mella.train.trainer import MIX_SOURCES, sample_rows, select_training_rows

ROOT = Path(__file__).resolve().parents[1]


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"test_job_{name}", ROOT / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grid(tmp_path: Path, data: Path, **extra):
    for bb in ("qwen2-vl", "internvl2"):  # plan/tables only read the names; no model is loaded here
        (tmp_path / bb).mkdir(exist_ok=True)
    return load_grid(
        ROOT / "experiments" / "tiny.yaml",
        [f"{k}={json.dumps(v)}" for k, v in extra.items()],
        data=data,
        output=tmp_path / "out",
        backbones={"qwen2-vl": tmp_path / "qwen2-vl", "internvl2": tmp_path / "internvl2"},
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A corpus in the real schema with more D_know than D_ling rows for hu and the reverse for cs."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(str(root), {"hu": 40, "cs": 12}, {"hu": 15, "cs": 30}, pool=64)
    return root


def _samples(cfg: TrainConfig, sources) -> int:
    """Samples a run sees per epoch: drawn rows × the epoch scale (a pool smaller than the target repeats)."""
    _, info = select_training_rows(cfg, sources)
    return round(sum(info["rows"].values()) * info["epoch_scale"])


def test_ablation_training_sets_have_the_main_experiments_size(corpus, tmp_path):
    grid = _grid(
        tmp_path,
        corpus,
        langs=["hu", "cs"],
        **{"train.n_test": 4, "train.test_max_fraction": 0.2, "evaluate.test_max_fraction": 0.2},
    )
    assert grid.train["max_steps"] == 3 and grid.train["n_test"] == 4  # dotted overrides set one nested key
    pools = training_pools(corpus, grid.langs, 4, 0.2)
    sizes = training_sizes(pools)
    trains, _ = plan(grid, sizes)
    for lang in grid.langs:
        base = {
            "data": corpus,
            "lang": lang,
            "model": tmp_path,
            "output": tmp_path / "o",
            "n_test": 4,
            "test_max_fraction": 0.2,
        }
        main = _samples(TrainConfig(**base, mix="dual"), MIX_SOURCES["dual"])
        assert main == sizes[lang] == pools[lang]["d_know"] + pools[lang]["d_ling"]
        for cell in (c for c in trains if c.lang == lang and c.backbone == "qwen2-vl" and c.method != "MELLA"):
            cfg = TrainConfig.load(None, cell.overrides(grid.sample_seed), **base, mix=cell.mix)
            if cell.mix == "two-stage":  # stage 1 on D_ling, stage 2 on D_know: the dual run's rows
                n = _samples(cfg.model_copy(update={"mix": "ling-only"}), ("d_ling",)) + _samples(cfg, ("d_know",))
            else:
                n = _samples(cfg, MIX_SOURCES[cell.mix])
            assert n == main, (lang, cell.mix, n, main)
    # hu has fewer D_ling rows than the main size (repeated), cs fewer D_know rows; the draws are seeded
    assert pools["hu"]["d_ling"] < sizes["hu"] and pools["cs"]["d_know"] < sizes["cs"]
    pool = [("d_know", f"id{k}", f"sha{k}") for k in range(50)]
    assert sample_rows(pool, 20, 0) == sample_rows(pool, 20, 0) != sample_rows(pool, 20, 1)
    assert sample_rows(pool, 100, 0) == (sorted(pool), 2.0)


def test_table5_runs_differ_in_their_training_seed(corpus, tmp_path):
    grid = _grid(tmp_path, corpus, seeds=[0, 1, 2])
    trains, evals = plan(grid, training_sizes(training_pools(corpus, grid.langs, 2, 0.5)))
    for bb in grid.backbones:
        mella = [c for c in trains if c.backbone == bb and c.method == "MELLA"]
        cfgs = [
            TrainConfig.load(None, c.overrides(0), data=corpus, lang="hu", model=tmp_path, output=tmp_path)
            for c in mella
        ]
        assert sorted(c.seed for c in cfgs) == [0, 1, 2]  # the TrainConfig seed: LoRA init, prompts, shuffle
        assert len({c.dir(grid.output) for c in mella}) == 3
        seed_evals = [e for e in evals if e.backbone == bb and e.model == "base"]
        assert [dict(e.methods)["MELLA"] for e in seed_evals] == [f"mella-{{lang}}-dual-s{s}" for s in (0, 1, 2)]
        assert [e.seed for e in seed_evals] == [0, 1, 2]
    # the ablations train once, at the first seed
    assert {c.seed for c in trains if c.method != "MELLA"} == {0}


def _finish(grid, trains, evals, value=lambda cell, method, metric: 1.0):
    for c in trains:
        write_json_atomic({"cell": c.name}, str(c.dir(grid.output) / "result.json"))
    for e in evals:
        runs = [
            {
                "seed": e.seed,
                "method": m,
                "model": m,
                "lang": lang,
                "metric": metric,
                "value": value(e, m, metric),
                "n": 2,
            }
            for m in ["-", *(name for name, _ in e.methods)]
            for lang in e.langs
            for metric in METRICS
        ]
        write_json_atomic({"runs": runs}, str(e.dir(grid.output) / "result.json"))


def test_resume_skips_finished_cells_without_starting_ray(corpus, tmp_path):
    import ray

    grid = _grid(tmp_path, corpus)
    trains, evals = plan(grid, training_sizes(training_pools(corpus, grid.langs, 2, 0.5)))
    _finish(grid, trains, evals)
    assert not list(Path(grid.output).rglob("*.tmp-*"))  # written atomically: no temporary file left
    job = _job("reproduce")
    stats = job.run_cells(grid, trains, evals)
    assert stats["ran"] == 0 and stats["skipped"] == len(trains) + len(evals) == 20
    assert not ray.is_initialized()
    os.remove(evals[0].dir(grid.output) / "result.json")
    assert read_result(evals[0].dir(grid.output)) is None  # an unfinished cell is one without result.json


def test_tables_render_tables_3_4_5_8_with_meteor_and_the_papers_numbers(corpus, tmp_path):
    grid = _grid(tmp_path, corpus)
    pools = training_pools(corpus, grid.langs, 2, 0.5)
    trains, evals = plan(grid, training_sizes(pools))
    _finish(grid, trains, evals, value=lambda e, m, metric: 10.0 + e.seed if m == "MELLA" else 3.0)
    paths = _job("reproduce").write_tables(grid, trains, evals, pools)
    md = Path(paths["markdown"]).read_text()
    for title in ("Table 3", "Table 4", "Table 5", "Table 8", "METEOR", "BLEU", "ROUGE-L", "Keyword accuracy"):
        assert title in md
    # MELLA: mean 11 over training seeds 0,1,2 beside the paper's 5.57 (InternVL2-8B, HU, Table 3 keyword accuracy)
    assert "| internvl2 | MELLA | 11.00 (5.57) |" in md
    assert "| internvl2 | MELLA | 1.000 (0.601) |" in md  # Table 5: sample std of 10, 11, 12
    assert "| qwen2-vl | two-stage | 3.00 (2.96) |" in md  # Table 4 keyword accuracy, Qwen2-VL, HU
    assert "| internvl2 | d_know | " + f"{pools['hu']['d_know']} (90000)" in md  # Table 8
    rows = json.loads(Path(paths["json"]).read_text())["rows"]
    assert {r["metric"] for r in rows if r["table"] == 3} == set(METRICS)
    assert len(collect(grid, evals)) > 0 and Path(paths["csv"]).read_text().startswith("table,metric,")


def test_merge_runs_in_a_ray_task_in_the_checkpoints_dtype(ray_session, tmp_path):
    """Two-stage's merge: the driver never loads the model; the task loads it in the checkpoint's dtype."""
    import torch
    from conftest_train import tiny_qwen2vl
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import Qwen2VLForConditionalGeneration

    from mella.train.trainer import merge_adapter

    base = tiny_qwen2vl(tmp_path / "base")
    model = Qwen2VLForConditionalGeneration.from_pretrained(base, dtype=torch.bfloat16)
    model.save_pretrained(base)  # the checkpoint now stores bf16, as Qwen2-VL-7B-Instruct does
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    del model, peft
    cfg = TrainConfig(
        data=tmp_path,
        lang="hu",
        model=base,
        output=tmp_path / "o",
        cpus_per_worker=0.5,
        image_min_pixels=3136,
        image_max_pixels=12544,
    )
    facts = merge_adapter("qwen2-vl", base, tmp_path / "adapter", tmp_path / "merged", cfg)
    assert facts["pid"] != os.getpid() and facts["dtype"] == "bfloat16"
    files = list((tmp_path / "merged").glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.bfloat16}
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
