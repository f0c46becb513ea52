"""GPU-node checks of the model paths (NOT YET RUN on any GPU: written on a CPU-only machine).

    python scripts/gpu_check.py [--work DIR] [--images 64] [--steps 10] [--only caption,train,serve]

1. writes the tiny published-layout checkpoints into DIR/hf (jobs/make_tiny_model.py --hf-home) and runs with
   HF_HOME=DIR/hf HF_HUB_OFFLINE=1: the models are named by their hub ids, as on a cluster;
2. caption: vLLM (``MLLM(backend="vllm")``) captions N synthetic images with each tiny backbone
   (Qwen/Qwen2-VL-7B-Instruct; OpenGVLab/InternVL2-8B when this build converts it) — prints img/s and tok/s;
3. train: ``jobs/train.py --use-gpu --deepspeed zero2`` LoRA steps on a synthetic corpus — prints tok/s and the
   peak memory from train_log.jsonl;
4. serve: the Ray Serve endpoint on the tiny Qwen2-VL with the trained adapter, N chat requests with an image —
   prints req/s and tok/s.
Exit code: 0 when every check ran; 1 otherwise (the failing check's error is printed). Random weights: the text
is noise; only the paths and the rates mean something.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "tests"))
IDS = {"qwen2-vl": "Qwen/Qwen2-VL-7B-Instruct", "internvl2": "OpenGVLab/InternVL2-8B"}


def synthetic_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` PNG images (random sizes 200..900 px, random colour fields)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w, h = (int(x) for x in rng.integers(200, 900, 2))
        arr = (rng.random((h // 16 + 1, w // 16 + 1, 3)) * 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(arr).resize((w, h)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write_corpus(root: Path, n: int) -> Path:
    """``root/d_know/part-0.parquet``: ``n`` Hungarian rows (RECORD_SCHEMA) with synthetic images."""
    import hashlib

    import pyarrow.parquet as pq
    from mella.schema import record_id, to_table

    rows = []
    for i, data in enumerate(synthetic_images(n, seed=1)):
        page, img = f"http://gpu.check/{i}.html", f"http://gpu.check/{i}.png"
        rows.append({"id": record_id("hu", page, img), "lang": "hu", "page_url": page, "image_url": img,
                     "alt_text": f"Egy színes kép, a {i}. a sorban, véletlen foltokkal.", "text": None, "width": 1,
                     "height": 1, "format": "PNG", "image": data, "image_bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "source": "crawl"})
    (root / "d_know").mkdir(parents=True, exist_ok=True)
    pq.write_table(to_table(rows), root / "d_know" / "part-0.parquet")
    return root


def check_caption(family: str, n: int) -> dict:
    """vLLM captioning of ``n`` images by the tiny ``family`` model named by its hub id."""
    from mella.models.hub import resolve_model
    from mella.models.mllm import MLLM, GenerationConfig, MLLMConfig

    path = resolve_model(IDS[family])
    mllm = MLLM(MLLMConfig(family=family, model_path=str(path), backend="vllm", max_model_len=4096,
                           gpu_memory_utilization=0.3, max_pixels=1024 * 28 * 28, max_tiles=6))
    images = synthetic_images(n)
    gen = GenerationConfig(max_new_tokens=64, min_new_tokens=32)
    mllm.generate([(images[0], "Describe the image.")], gen)  # warm-up (CUDA graphs, caches)
    t0 = time.perf_counter()
    answers = mllm.generate([(img, "Describe the image.") for img in images], gen)
    dt = time.perf_counter() - t0
    tokens = sum(len(mllm.tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    return {"check": f"caption[{family}] vllm", "images": n, "img_per_s": round(n / dt, 2),
            "tok_per_s": round(tokens / dt, 1), "seconds": round(dt, 2)}


def check_train(work: Path, steps: int) -> dict:
    """``jobs/train.py --use-gpu --deepspeed zero2`` on the tiny Qwen2-VL id, ``steps`` optimizer steps."""
    data = write_corpus(work / "corpus", 32)
    out = work / "train"
    cmd = [sys.executable, str(ROOT / "jobs" / "train.py"), "--data", str(data), "--lang", "hu", "--model",
           IDS["qwen2-vl"], "--output", str(out), "--mix", "know-only", "--deepspeed", "zero2", "--use-gpu",
           "--num-workers", "1", "--set", f"max_steps={steps}", "--set", "n_test=2", "--set", "batch_size=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"train.py exit {proc.returncode}: {proc.stderr[-3000:]}")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in log[1:]] or [log[0]["tokens_per_s"]]  # the first step compiles
    return {"check": "train qwen2-vl lora zero2", "steps": len(log), "tok_per_s": round(sum(rates) / len(rates), 1),
            "final_loss": log[-1].get("loss"), "adapter": str(out / "adapter"),
            "peak_gpu_mib": log[-1].get("peak_gpu_mib"), "mfu": log[-1].get("mfu")}


def check_serve(work: Path, n: int) -> dict:
    """The Serve endpoint (tiny Qwen2-VL by id + the adapter of check_train), ``n`` image chat requests."""
    import base64

    import ray
    import requests
    from serve_helpers import serving

    adapters = work / "adapters"
    if (work / "train" / "adapter").is_dir() and not adapters.exists():
        adapters.mkdir()
        (adapters / "mella-hu").symlink_to(work / "train" / "adapter")
    ray.init(include_dashboard=False)
    try:
        args = {"model": IDS["qwen2-vl"], "backbone": "qwen2-vl", "device": "cuda",
                "adapters": str(adapters) if adapters.exists() else None}
        with serving({k: v for k, v in args.items() if v is not None}) as url:
            img = base64.b64encode(synthetic_images(1)[0]).decode()
            model = "mella-hu" if adapters.exists() else "Qwen2-VL-7B-Instruct"
            body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}},
                {"type": "text", "text": "Mi látható ezen a képen?"}]}]}
            requests.post(f"{url}/v1/chat/completions", json=body, timeout=300).raise_for_status()  # warm-up
            t0, tokens = time.perf_counter(), 0
            for _ in range(n):
                r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
            dt = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"check": f"serve {model}", "requests": n, "req_per_s": round(n / dt, 2), "tok_per_s": round(tokens / dt, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="gpu_check_work")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--only", default="caption,train,serve")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: run this on a GPU node", file=sys.stderr)
        return 2
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HOME=str(work / "hf"), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, str(ROOT / "jobs" / "make_tiny_model.py"), "--hf-home", str(work / "hf")],
                   check=True)
    print(f"device: {torch.cuda.get_device_name(0)}", flush=True)
    from mella.models.tiny import published_writers

    checks = []
    only = set(a.only.split(","))
    if "caption" in only:
        for family, repo in IDS.items():
            if repo in published_writers([repo]):
                checks.append(("caption", lambda f=family: check_caption(f, a.images)))
    if "train" in only:
        checks.append(("train", lambda: check_train(work, a.steps)))
    if "serve" in only:
        checks.append(("serve", lambda: check_serve(work, a.requests)))
    failed = 0
    for name, fn in checks:
        try:
            print(json.dumps(fn()), flush=True)
        except Exception:  # noqa: BLE001 - report every check, then fail
            failed += 1
            print(f"{name}: FAILED\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
