"""LoRA SFT of one language's adapter on D_know ∪ D_ling (paper 3.3, 4.1; Ray Train + DeepSpeed ZeRO).

    python jobs/train.py --data DIR --lang hu --backbone qwen2-vl --model PATH --output DIR \
        [--mix dual|ling-only|know-only|two-stage] [--deepspeed zero2|zero3] [--num-workers N] [--use-gpu] \
        [--config train.yaml] [--set lr=2e-5 --set max_steps=100 ...]

Writes OUTPUT/adapter (PEFT adapter + mella_train.json), OUTPUT/train_log.jsonl, Ray results under
OUTPUT/ray_results; prints the run summary as JSON. Hyperparameters: mella.train.config.TrainConfig.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

try:
    import mella  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import ray

from mella.train.config import TrainConfig
from mella.train.trainer import train


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="corpus dir with d_know/*.parquet [and d_ling/*.parquet]")
    ap.add_argument("--lang", required=True)
    ap.add_argument("--backbone", choices=["qwen2-vl", "internvl2"])
    ap.add_argument("--model", required=True, help="local HF checkpoint dir of the base model")
    ap.add_argument("--output", required=True)
    ap.add_argument("--mix", choices=["dual", "ling-only", "know-only", "two-stage"])
    ap.add_argument("--deepspeed", choices=["zero2", "zero3"])
    ap.add_argument("--num-workers", type=int)
    ap.add_argument("--use-gpu", action="store_true", default=None)
    ap.add_argument("--config", help="YAML file with TrainConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any TrainConfig field")
    ap.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    a = ap.parse_args(argv)
    cfg = TrainConfig.load(a.config, a.set, data=a.data, lang=a.lang, backbone=a.backbone, model=a.model,
                           output=a.output, mix=a.mix, deepspeed=a.deepspeed, num_workers=a.num_workers,
                           use_gpu=a.use_gpu)
    started = not ray.is_initialized()
    if started:
        ray.init(address=a.ray_address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    try:
        summary = train(cfg)
    finally:
        if started:
            ray.shutdown()
    print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return summary


if __name__ == "__main__":
    main()
