"""TrainConfig: the one validated config of a LoRA SFT run (pydantic; YAML + ``key=value`` overrides).

Defaults are the paper's Table 7 (appendix C.1), per backbone (:data:`TABLE7`). Shared: 1 epoch, lr 4e-5,
max sequence length 4096, batch 4 per GPU (InternVL2-8B's main setting lists 2 and 4; 4 is its ablation
setting and Qwen2-VL's). InternVL2-8B: warmup ratio 0.03, cosine schedule, weight decay 0.01, gradient
accumulation 2. Qwen2-VL-7B-Instruct: "default" = Hugging Face ``TrainingArguments`` defaults: warmup 0,
linear schedule, weight decay 0, gradient accumulation 1. A value the user sets (YAML or ``--set``) wins; the
values in force are written to the run summary (``mella_train.json`` ``hyperparameters``).

LoRA defaults per backbone (the paper does not state them):
  rank 16, alpha 32, dropout 0.05 on the language model's attention and MLP projections
  (q,k,v,o,gate,up,down) — InternVL's own LoRA fine-tuning recipe (``--use_llm_lora 16``,
  ``wrap_llm_lora``: alpha = 2 * rank, dropout 0.05). The vision tower and projector stay frozen.
  ``lora_target_modules`` is a PEFT regex matched against full module names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from mella.resources import Strict

Backbone = Literal["qwen2-vl", "internvl2"]
Mix = Literal["dual", "ling-only", "know-only", "two-stage"]

#: LM-only LoRA targets per backbone (regex on full module names, transformers 5 naming:
#: ``model.language_model.layers.N.self_attn.q_proj`` for both Qwen2-VL and InternVL-hf).
LORA_TARGETS: dict[str, str] = {
    "qwen2-vl": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
    "internvl2": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
}

#: Paper Table 7, the settings that differ between the backbones (Qwen2-VL: HF Trainer defaults).
TABLE7: dict[str, dict[str, float | int | str]] = {
    "internvl2": {"warmup_ratio": 0.03, "lr_scheduler": "cosine", "weight_decay": 0.01, "grad_accum": 2},
    "qwen2-vl": {"warmup_ratio": 0.0, "lr_scheduler": "linear", "weight_decay": 0.0, "grad_accum": 1},
}


class TrainConfig(Strict):
    """All settings of one training run. Units: lr per optimizer step; batch sizes in samples."""

    # what to train
    data: Path  # corpus dir with d_know/*.parquet and (optionally) d_ling/*.parquet
    lang: str  # ISO 639-1 code of the language (one adapter per language, paper 3.3)
    backbone: Backbone = "qwen2-vl"
    model: Path  # local checkpoint dir (resolved from a hub id by jobs/train.py; InternVL2 in its -hf layout)
    model_name: str | None = None  # what the user named: a hub id org/name[@rev] or a directory
    output: Path
    mix: Mix = "dual"  # paper Table 4
    seed: int = 42

    # paper Table 7 (None = the backbone's value in TABLE7)
    epochs: float = 1.0
    lr: float = 4e-5
    warmup_ratio: float | None = None
    lr_scheduler: Literal["cosine", "linear", "constant"] | None = None
    weight_decay: float | None = Field(None, ge=0)
    max_seq_length: int = Field(4096, ge=64)
    grad_accum: int | None = Field(None, ge=1)
    batch_size: int = Field(4, ge=1)  # micro-batch per worker (per GPU)
    max_grad_norm: float = 1.0  # HF Trainer default
    max_steps: int | None = None  # optimizer steps; overrides epochs (repeats the data) when set
    # fixed training size (paper Table 4: ablations train on as many samples as the main run): sample this many
    # training rows with sample_seed (fewer in the pool: repeat it). None = every training row.
    train_rows: int | None = Field(None, ge=1)
    sample_seed: int = 0

    # LoRA (None = backbone default above)
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str | None = None

    # images: cap the visual tokens so prompt + image fit max_seq_length
    image_max_pixels: int = 1024 * 28 * 28  # Qwen2-VL: <= 1024 visual tokens per image
    image_min_pixels: int = 4 * 28 * 28
    max_tiles: int = 6  # InternVL2 dynamic tiling (InternVL fine-tune scripts: max_dynamic_patch 6)

    # split (mella.split)
    n_test: int = 100
    test_max_fraction: float = 0.2

    # distribution
    deepspeed: Literal["zero2", "zero3"] = "zero2"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gradient_checkpointing: bool = False
    checkpoint_every: int = 200  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    max_failures: int = 3  # Ray Train FailureConfig: worker-group restarts from the latest checkpoint
    materialize: bool = False  # keep built samples in the object store (small corpora, many epochs)
    shuffle_buffer: int = 256  # Ray Data local shuffle buffer (rows) per worker
    peak_tflops: float | None = None  # per device, for MFU; None = look up the GPU name, unknown -> no MFU

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.lora_target_modules is None:
            self.lora_target_modules = LORA_TARGETS[self.backbone]
        for key, value in TABLE7[self.backbone].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        return self

    @property
    def ds_stage(self) -> int:
        """ZeRO stage number (2 or 3)."""
        return int(self.deepspeed[-1])

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None, **kwargs) -> TrainConfig:
        """Build from an optional YAML file, then keyword args, then ``key=value`` strings (YAML-typed).

        Raises ``ValueError`` for an override without ``=``; pydantic ``ValidationError`` for bad values.
        """
        values: dict = {}
        if path:
            values.update(yaml.safe_load(Path(path).read_text()) or {})
        values.update({k: v for k, v in kwargs.items() if v is not None})
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            key, raw = item.split("=", 1)
            values[key.strip()] = yaml.safe_load(raw)
        return cls(**values)
