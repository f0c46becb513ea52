"""A Hugging Face home for tests: tiny checkpoints in the published layouts, under their real hub ids.

``hf_home`` (session fixture) builds once per test session, in a temporary directory, the hub cache layout
``HF_HOME/hub/models--ORG--NAME/{refs/main, snapshots/<40-hex>/..., blobs/<sha256>}`` for every id of
:data:`mella.models.tiny.PUBLISHED` whose writer exists in this build (Qwen/Qwen2-VL-7B-Instruct always;
OpenGVLab/InternVL2-8B and Unbabel/wmt22-cometkiwi-da when their modules are present). Tests and the jobs they
run as subprocesses use it with ``HF_HUB_OFFLINE=1`` (:func:`hub_env`): nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mella.models.hub import write_cache_entry
from mella.models.tiny import published_writers

QWEN2_VL = "Qwen/Qwen2-VL-7B-Instruct"
INTERNVL2 = "OpenGVLab/InternVL2-8B"


def build_hf_home(root: Path, ids: list[str] | None = None) -> Path:
    """Write the tiny published checkpoints (:func:`published_writers`) into ``root/hub``; returns ``root``."""
    for repo_id, writer in published_writers(ids).items():
        write_cache_entry(root / "hub", repo_id, writer)
    return root


def hub_env(hf_home: Path, base: dict | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with ``HF_HOME=hf_home``, ``HF_HUB_OFFLINE=1`` and no ``HF_HUB_CACHE``."""
    env = dict(os.environ if base is None else base)
    env.pop("HF_HUB_CACHE", None)
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    return env


def available(hf_home: Path, repo_id: str) -> bool:
    """``repo_id`` was written into ``hf_home`` (its writer exists in this build)."""
    return (hf_home / "hub" / ("models--" + repo_id.replace("/", "--")) / "refs" / "main").is_file()


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """A session-wide ``HF_HOME`` with the tiny published checkpoints (read-only by convention)."""
    return build_hf_home(tmp_path_factory.mktemp("hf_home"))


@pytest.fixture
def offline_hub(hf_home, monkeypatch) -> Path:
    """``hf_home`` in force for this test's process: ``HF_HOME`` set, ``HF_HUB_OFFLINE=1``."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home
