"""Throughput of LoRA SFT under Ray Train + DeepSpeed ZeRO-2 (one worker) vs a bare PEFT loop, same run.

Same tiny Qwen2-VL (built from config, real Qwen tokenizer), same miniweb D_know samples (same prompt
draws), same micro-batch, accumulation, optimizer steps and CPU threads. tokens/s counts all non-pad
tokens of the optimizer steps after WARMUP steps (start-up excluded for both; Ray's start-up time is
reported separately). Target: ratio >= 0.9.

    python tests/benchmarks/bench_train.py [--steps 30] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))

import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from conftest_train import MAX_PIXELS, MIN_PIXELS, tiny_qwen2vl, write_corpus  # noqa: E402
from mella.train.backbones import load_backbone, load_model  # noqa: E402
from mella.train.config import TrainConfig  # noqa: E402
from mella.train.prompts import prompts_for  # noqa: E402
from mella.train.samples import build_sample  # noqa: E402
from mella.train.trainer import train  # noqa: E402

WARMUP = 3


def bare_peft(cfg: TrainConfig, rows: list[dict]) -> dict:
    """Plain PyTorch + PEFT loop: the obvious alternative to Ray Train + DeepSpeed."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    bb = load_backbone("qwen2-vl", cfg.model, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_tiles=4)
    pool = prompts_for(cfg.lang)
    samples = [build_sample(bb, r["image"], pool.draw(f"d_know:{r['sha256']}", cfg.seed), r["alt_text"],
                            cfg.max_seq_length) for r in rows]
    torch.manual_seed(cfg.seed)
    model = get_peft_model(load_model("qwen2-vl", cfg.model, torch.float32),
                           LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler("cosine", opt, math.ceil(cfg.max_steps * cfg.warmup_ratio), cfg.max_steps)
    i, times, tokens = 0, [], []
    for _ in range(cfg.max_steps):
        t0, n = time.perf_counter(), 0
        for _ in range(cfg.grad_accum):
            batch = [samples[(i + k) % len(samples)] for k in range(cfg.batch_size)]
            i += cfg.batch_size
            inputs = bb.collate({"input_ids": [s.input_ids for s in batch], "labels": [s.labels for s in batch],
                                 **{k: [s.features[k] for s in batch] for k in batch[0].features}})
            (model(**inputs).loss / cfg.grad_accum).backward()
            n += int(inputs["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
        tokens.append(n)
    return {"tokens_per_s": sum(tokens[WARMUP:]) / sum(times[WARMUP:]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=12)
    a = ap.parse_args()
    threads = 2
    root = Path(tempfile.mkdtemp(prefix="bench_train_"))
    corpus = write_corpus(root / "corpus", "hu", n_know=a.samples)
    model = tiny_qwen2vl(root / "qwen", hidden=a.hidden, layers=a.layers)
    cfg = TrainConfig.load(None, ["batch_size=2", "grad_accum=2", f"max_steps={a.steps}", "materialize=true",
                                  f"cpus_per_worker={threads}", f"image_min_pixels={MIN_PIXELS}",
                                  f"image_max_pixels={MAX_PIXELS}", "n_test=0", "shuffle_buffer=0",
                                  f"checkpoint_every={a.steps}"],
                           data=corpus, lang="hu", model=model, output=root / "ray", mix="know-only",
                           deepspeed="zero2", num_workers=1)

    ray.init(num_cpus=threads + 2, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    try:
        train(cfg)
    finally:
        ray.shutdown()
    ray_wall = time.perf_counter() - t0
    log = [json.loads(line) for line in (root / "ray" / "train_log.jsonl").read_text().splitlines()][WARMUP:]
    ray_tps = sum(r["tokens"] for r in log) / sum(r["step_time_s"] for r in log)
    ray_rss = max(r["peak_rss_mib"] for r in log)

    torch.set_num_threads(threads)
    rows = pq.read_table(corpus / "d_know").to_pylist()
    bare = bare_peft(cfg, rows)

    print(json.dumps({
        "model": {"hidden": a.hidden, "layers": a.layers, "vocab": 151669}, "steps": a.steps, "warmup_steps": WARMUP,
        "micro_batch": cfg.batch_size, "grad_accum": cfg.grad_accum, "threads": threads, "samples": a.samples,
        "ray_deepspeed_zero2_tokens_per_s": round(ray_tps, 1), "bare_peft_tokens_per_s": round(bare["tokens_per_s"], 1),
        "ratio_ray_over_bare": round(ray_tps / bare["tokens_per_s"], 3),
        "ray_run_wall_s_incl_startup": round(ray_wall, 1),
        "peak_rss_mib": {"ray_worker": round(ray_rss), "bare_process": round(bare["peak_rss_mib"])},
    }, indent=2))


if __name__ == "__main__":
    main()
