"""GPU checks (skipped without CUDA): vLLM captioning, a ZeRO-2 LoRA step and the endpoint on the tiny
published-layout checkpoints, through scripts/gpu_check.py. NOT YET RUN on any GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("only", ["caption", "train,serve"])
def test_gpu_check_script(tmp_path, only):
    pytest.importorskip("vllm") if only == "caption" else None
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--work", str(tmp_path), "--only",
                           only, "--images", "8", "--steps", "3", "--requests", "4"], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "tok_per_s" in proc.stdout
