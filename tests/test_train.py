"""LoRA SFT (issue 5): samples, backbones, Ray Train + DeepSpeed ZeRO-2/3, resume after a worker kill, mixes.

Real components throughout: miniweb images + alt-texts, the real Qwen tokenizer, tiny random-weight
Qwen2-VL / InternVL models built from configs, a local Ray cluster (2 CPUs), DeepSpeed on gloo.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest_train import MAX_PIXELS, MIN_PIXELS, checkpoint_committed, tiny_internvl, tiny_qwen2vl, write_corpus

from mella.models.backbones import END_OF_TURN, load_backbone, load_model
from mella.train.config import LORA_TARGETS, TrainConfig
from mella.train.samples import MIN_ANSWER_TOKENS, build_sample

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))  # DeepSpeed op cache (STACK.md)

PROMPT = "Mi látható ezen a képen?"
# the schedule these tests were tuned with (InternVL2's Table 7 column; Qwen2-VL's default is linear, wd 0)
FAST = [
    "batch_size=1",
    "grad_accum=1",
    "cpus_per_worker=0.5",
    "materialize=true",
    "warmup_ratio=0.0",
    "lr_scheduler=cosine",
    "weight_decay=0.01",
    f"image_min_pixels={MIN_PIXELS}",
    f"image_max_pixels={MAX_PIXELS}",
    "n_test=2",
    "max_tiles=4",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {
        "corpus": write_corpus(root / "corpus", "hu", n_know=6, n_ling=5),
        "qwen": tiny_qwen2vl(root / "qwen"),
        "root": root,
    }


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():  # another module's Ray: start ours with our settings
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _qwen(tiny):
    return load_backbone("qwen2-vl", tiny["qwen"], min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_tiles=4)


def _row(tiny, i=0):
    return pq.read_table(tiny["corpus"] / "d_know").to_pylist()[i]


# ------------------------------------------------------------------------------------ samples (no Ray)
def test_label_mask_covers_exactly_the_answer(tiny):
    bb, row = _qwen(tiny), _row(tiny)
    s = build_sample(bb, row["image"], PROMPT, row["alt_text"], 4096)
    tok = bb.tokenizer
    answer = tok(row["alt_text"] + END_OF_TURN, add_special_tokens=False)["input_ids"]
    supervised = np.flatnonzero(s.labels != -100)
    assert s.status == "ok"
    assert list(supervised) == list(range(len(s.input_ids) - len(answer), len(s.input_ids)))  # a suffix
    assert list(s.input_ids[supervised]) == answer == list(s.labels[supervised])
    assert tok.decode(s.input_ids[supervised]) == row["alt_text"] + END_OF_TURN
    prompt_text = tok.decode(s.input_ids[: supervised[0]])
    assert prompt_text.endswith(f"{PROMPT}<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    # image placeholder expanded to grid_thw.prod() / merge_size**2 tokens, between vision_start/end
    n_img = int(s.features["image_grid_thw"].prod()) // 4
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    where = np.flatnonzero(s.input_ids == image_id)
    assert len(where) == n_img > 1 and np.all(np.diff(where) == 1)
    assert s.input_ids[where[0] - 1] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert s.input_ids[where[-1] + 1] == tok.convert_tokens_to_ids("<|vision_end|>")
    assert s.features["pixel_values"].shape[0] == int(s.features["image_grid_thw"].prod())


def test_truncation_shortens_the_answer_never_the_image(tiny):
    bb, row = _qwen(tiny), _row(tiny)
    full = build_sample(bb, row["image"], PROMPT, row["alt_text"], 4096)
    n_prompt = int((full.labels == -100).sum())
    cut = build_sample(bb, row["image"], PROMPT, row["alt_text"], n_prompt + MIN_ANSWER_TOKENS)
    assert cut.status == "answer_truncated" and len(cut.input_ids) == n_prompt + MIN_ANSWER_TOKENS
    assert np.array_equal(cut.input_ids[:n_prompt], full.input_ids[:n_prompt])  # image tokens intact
    assert int((cut.labels != -100).sum()) == MIN_ANSWER_TOKENS
    assert bb.tokenizer.convert_tokens_to_ids(END_OF_TURN) not in cut.input_ids[n_prompt:]
    assert (
        build_sample(bb, row["image"], PROMPT, row["alt_text"], n_prompt + MIN_ANSWER_TOKENS - 1) == "prompt_too_long"
    )
    assert build_sample(bb, b"not an image", PROMPT, row["alt_text"], 4096) == "image_decode"
    assert build_sample(bb, row["image"], PROMPT, "   ", 4096) == "empty_answer"


def test_internvl2_sample_forward_and_lm_only_lora(tiny):
    from peft import LoraConfig, get_peft_model

    path = tiny_internvl(tiny["root"] / "internvl")
    bb = load_backbone("internvl2", path, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_tiles=4)
    row = _row(tiny, 1)
    s = build_sample(bb, row["image"], PROMPT, row["alt_text"], 4096)
    tok = bb.tokenizer
    text = tok.decode(s.input_ids)
    n_tiles = s.features["pixel_values"].shape[0]
    assert n_tiles > 1  # dynamic tiling + thumbnail
    assert text.count("<IMG_CONTEXT>") == n_tiles  # image_seq_length = 1 per 28 px tile in the tiny config
    assert "<|im_end|><|im_start|>user\n<img>" in text and f"</img>\n{PROMPT}<|im_end|><|im_start|>assistant\n" in text
    assert tok.decode(s.input_ids[s.labels != -100]) == row["alt_text"] + END_OF_TURN
    model = load_model("internvl2", path, torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS["internvl2"]))
    lora_modules = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert lora_modules and all(".language_model." in n for n in lora_modules)
    assert any("vision_tower" in n and n.endswith("q_proj") for n, _ in model.named_modules())  # not adapted
    batch = {"input_ids": [s.input_ids], "labels": [s.labels], "pixel_values": [s.features["pixel_values"]]}
    loss = model(**bb.collate(batch)).loss
    loss.backward()
    assert torch.isfinite(loss) and 10 < loss.item() < 13  # ~ln(vocab) for random weights


def test_config_defaults_are_paper_table7(tiny):
    """Table 7 per backbone: InternVL2-8B's column; Qwen2-VL's "default" = HF Trainer's (warmup 0, linear, wd 0,
    accumulation 1); shared 1 epoch, lr 4e-5, length 4096, batch 4. A value the user sets wins."""
    fields = (
        "epochs",
        "lr",
        "warmup_ratio",
        "lr_scheduler",
        "weight_decay",
        "max_seq_length",
        "grad_accum",
        "batch_size",
    )
    kw = dict(data=tiny["corpus"], lang="hu", model=tiny["qwen"], output=tiny["root"] / "o")
    cfg = TrainConfig(backbone="internvl2", **kw)
    assert tuple(getattr(cfg, f) for f in fields) == (1, 4e-5, 0.03, "cosine", 0.01, 4096, 2, 4)
    cfg = TrainConfig(backbone="qwen2-vl", **kw)
    assert tuple(getattr(cfg, f) for f in fields) == (1, 4e-5, 0.0, "linear", 0.0, 4096, 1, 4)
    from transformers import TrainingArguments

    hf = TrainingArguments(output_dir=str(tiny["root"] / "hf"))
    assert (cfg.warmup_ratio, cfg.lr_scheduler, cfg.weight_decay, cfg.grad_accum) == (
        hf.warmup_steps or 0.0,
        hf.lr_scheduler_type.value,
        hf.weight_decay,
        hf.gradient_accumulation_steps,
    )
    cfg = TrainConfig.load(None, ["lr_scheduler=cosine", "grad_accum=3"], backbone="qwen2-vl", **kw)
    assert (cfg.lr_scheduler, cfg.grad_accum, cfg.weight_decay) == ("cosine", 3, 0.0)
    cfg = TrainConfig.load(None, ["lr=1e-3", "deepspeed=zero3"], data=".", lang="hu", model=".", output=".")
    assert cfg.lr == 1e-3 and cfg.ds_stage == 3
    with pytest.raises(ValueError):
        TrainConfig.load(None, ["no_equals_sign"], data=".", lang="hu", model=".", output=".")


# ---------------------------------------------------------------------------------- Ray Train + DeepSpeed
def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def _latest_ckpt(summary: dict) -> Path:
    return sorted(p for p in Path(summary["ray_results"]).glob("checkpoint_*") if p.is_dir())[-1]


def _assert_adapter_matches_deepspeed_state(tiny, summary: dict, base: Path):
    """The exported PEFT adapter reloads onto the base model and gives the logits of the LoRA weights that
    DeepSpeed itself checkpointed (rebuilt to fp32 by DeepSpeed's zero_to_fp32, works for ZeRO-2 and 3)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from peft import LoraConfig, PeftModel, get_peft_model

    bb, row = _qwen(tiny), _row(tiny, 2)
    s = build_sample(bb, row["image"], PROMPT, row["alt_text"], 4096)
    inputs = bb.collate({"input_ids": [s.input_ids], "labels": [s.labels], **{k: [v] for k, v in s.features.items()}})
    with torch.no_grad():
        base_logits = load_model("qwen2-vl", base, torch.float32)(**inputs).logits
        reloaded = PeftModel.from_pretrained(load_model("qwen2-vl", base, torch.float32), summary["adapter"]).eval()
        logits = reloaded(**inputs).logits
        meta = json.loads((Path(summary["adapter"]) / "mella_train.json").read_text())
        hp = meta["hyperparameters"]
        ref = get_peft_model(
            load_model("qwen2-vl", base, torch.float32),
            LoraConfig(
                r=hp["lora_rank"],
                lora_alpha=hp["lora_alpha"],
                target_modules=hp["lora_target_modules"],
                task_type="CAUSAL_LM",
            ),
        ).eval()
        state = get_fp32_state_dict_from_zero_checkpoint(
            str(_latest_ckpt(summary)), tag="ds", exclude_frozen_parameters=True
        )
        missing = {k for k in state if k not in dict(ref.named_parameters())}
        assert not missing and state
        ref.load_state_dict(state, strict=False)
        ref_logits = ref(**inputs).logits
    assert torch.allclose(logits, ref_logits, atol=1e-5)
    assert not torch.allclose(logits, base_logits, atol=1e-3)  # the adapter is not a no-op
    return meta


def _job_main():
    """``main`` of jobs/train.py (a script, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mella_job_train", REPO / "jobs" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_zero2_two_workers_overfit_via_job_and_adapter_reloads(tiny, ray_local):
    main = _job_main()

    out = tiny["root"] / "z2"
    summary = main(
        [
            "--data",
            str(tiny["corpus"]),
            "--lang",
            "hu",
            "--backbone",
            "qwen2-vl",
            "--model",
            str(tiny["qwen"]),
            "--output",
            str(out),
            "--mix",
            "know-only",
            "--deepspeed",
            "zero2",
            "--num-workers",
            "2",
            *FAST,
            "max_steps=12",
            "lr=1e-2",
            "lora_dropout=0",
        ]
    )
    losses = _losses(out)
    assert len(losses) == 12 == summary["steps"]
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses  # overfits the 4 training samples
    assert {p.name for p in Path(summary["adapter"]).iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    meta = _assert_adapter_matches_deepspeed_state(tiny, summary, tiny["qwen"])
    assert meta["mix"] == "know-only" and meta["steps"] == 12 and meta["backbone"] == "qwen2-vl"
    assert meta["rows"] == {"d_know": 5} and meta["samples"] == {"d_know/ok": 5} and len(meta["data_snapshot"]) == 64


@pytest.mark.slow
def test_zero3_two_workers_overfit_and_adapter_reloads(tiny, ray_local):
    from mella.train.trainer import train

    cfg = TrainConfig.load(
        None,
        FAST + ["max_steps=12", "lr=1e-2", "lora_dropout=0"],
        data=tiny["corpus"],
        lang="hu",
        model=tiny["qwen"],
        output=tiny["root"] / "z3",
        mix="know-only",
        deepspeed="zero3",
        num_workers=2,
    )
    summary = train(cfg)
    losses = _losses(cfg.output)
    assert np.mean(losses[-3:]) < losses[0] - 0.3, losses
    _assert_adapter_matches_deepspeed_state(tiny, summary, tiny["qwen"])


def _kill_a_worker_after_first_checkpoint(storage: Path, killed: list, stop: threading.Event):
    """SIGKILL one Ray Train worker process (a descendant of this test's own Ray node) once Ray Train has
    committed a checkpoint (all ranks reported it: it appears in the checkpoint manager's snapshot)."""
    import psutil

    while not stop.is_set():
        if checkpoint_committed(storage):
            for proc in psutil.Process().children(recursive=True):
                try:
                    if "RayTrainWorker" in " ".join(proc.cmdline()):
                        proc.send_signal(signal.SIGKILL)
                        killed.append(proc.pid)
                        return
                except psutil.Error:
                    continue
        time.sleep(0.1)


@pytest.mark.slow
def test_worker_killed_mid_run_resumes_from_checkpoint(tiny, ray_local):
    from mella.train.trainer import train

    cfg = TrainConfig.load(
        None,
        FAST + ["max_steps=10", "checkpoint_every=2", "max_failures=1", "lr=1e-3"],
        data=tiny["corpus"],
        lang="hu",
        model=tiny["qwen"],
        output=tiny["root"] / "resume",
        mix="know-only",
        deepspeed="zero2",
        num_workers=2,
    )
    killed, stop = [], threading.Event()
    watcher = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint, args=(cfg.output / "ray_results", killed, stop), daemon=True
    )
    watcher.start()
    try:
        summary = train(cfg)
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker was killed"
    log = [json.loads(line) for line in (cfg.output / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 11))  # each step once: resumed, not restarted
    resumed = [r["resumed_from"] for r in log if "resumed_from" in r]
    assert summary["resumed"] and len(resumed) == 1 and resumed[0] >= 2 and resumed[0] % 2 == 0
    assert summary["steps"] == 10


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["dual", "ling-only", "two-stage"])
def test_mixes_run(tiny, ray_local, mix):
    from peft import PeftModel

    from mella.train.trainer import train

    cfg = TrainConfig.load(
        None,
        FAST + ["max_steps=2", "lr=1e-3"],
        data=tiny["corpus"],
        lang="hu",
        model=tiny["qwen"],
        output=tiny["root"] / mix,
        mix=mix,
        num_workers=1,
    )
    summary = train(cfg)
    meta = json.loads((Path(summary["adapter"]) / "mella_train.json").read_text())
    assert meta["mix"] == mix and meta["steps"] == 2
    expected = {"dual": {"d_know": 5, "d_ling": 4}, "ling-only": {"d_ling": 4}, "two-stage": {"d_know": 5}}[mix]
    assert meta["rows"] == expected
    assert meta["held_out"] == {"d_know": 1, "d_ling": 1}  # same test images whatever the mix
    base = Path(meta["base_model"])
    if mix == "two-stage":
        assert meta["stage1"]["rows"] == {"d_ling": 4} and base == cfg.output.resolve() / "stage1_merged"
    else:
        assert base == tiny["qwen"]
    PeftModel.from_pretrained(load_model("qwen2-vl", base, torch.float32), summary["adapter"])
