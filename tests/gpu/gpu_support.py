"""Helpers of the GPU checks (tests/gpu, scripts/gpu_check.py): skip markers, GPU-sized tiny checkpoints, images.

Nothing here reads ../shared (it does not travel to a GPU machine) or downloads: images are drawn with Pillow,
checkpoints are built by :mod:`mella.models.tiny_gpu`. ``MELLA_GPU_WORKDIR`` (set by scripts/gpu_check.py)
makes the tests reuse the checkpoints the script built and leave their outputs (the training log) there.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

import pytest


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def missing(*modules: str) -> list[str]:
    """The importable names among ``modules`` that are not installed."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


CUDA = _cuda()
requires_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device (torch.cuda.is_available() is False)")


def requires(*modules: str):
    """Skip unless CUDA is available and every module in ``modules`` is installed."""
    absent = missing(*modules)
    why = (["no CUDA device"] if not CUDA else []) + ([f"not installed: {', '.join(absent)}"] if absent else [])
    return pytest.mark.skipif(bool(why), reason="; ".join(why))


def png(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A PNG of ``size`` (w, h) with a seeded colour gradient and a rectangle (distinct images per seed)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, 3)
    grad = (np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 256, 3)[None, None, :]).astype(np.uint8)
    arr = np.broadcast_to(grad, (h, w, 3)).copy()
    arr[..., :] = (arr.astype(int) + base) % 256
    im = Image.fromarray(arr.astype(np.uint8), "RGB")
    x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    ImageDraw.Draw(im).rectangle([x, y, x + w // 3, y + h // 3], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def build_checkpoints(workdir: Path) -> dict[str, Path]:
    """Build (or reuse) the GPU-sized tiny checkpoints under ``workdir``; converts InternVL2 with HF_HOME there."""
    from mella.models import internvl2, tiny_gpu

    os.environ.setdefault("HF_HOME", str(workdir / "hf_home"))
    qwen, pub = workdir / "tiny-gpu-qwen2-vl", workdir / "tiny-gpu-InternVL2-published"
    if not (qwen / "config.json").is_file():
        tiny_gpu.gpu_qwen2vl(qwen)
    if not (pub / "model.safetensors.index.json").is_file():
        tiny_gpu.gpu_internvl2_published(pub)
    return {"qwen2-vl": qwen, "internvl2": internvl2.native_checkpoint(pub), "internvl2-published": pub}
