"""Fixtures of the GPU checks (tests/gpu). Helpers and skip markers: gpu_support.py beside this file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from gpu_support import build_checkpoints


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
