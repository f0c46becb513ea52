"""Shared fixtures: a real local Ray (one per test session) and paths to the shared real data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT / "jobs"))  # jobs/_bootstrap.py, for jobs loaded by path (importlib) in tests

SHARED = Path(os.environ.get("MELLA_SHARED", ROOT.parent / "shared"))
MINIWEB = SHARED / "miniweb"
DEMO_WEB = ROOT / "demo_web"


def job_env() -> dict[str, str]:
    """Environment of a job run as a subprocess: this interpreter's ``bin`` first on PATH (``python`` in a Ray
    job entrypoint must be it; CI runs .venv/bin/python without activating the venv), ``platform/`` on
    PYTHONPATH, no RAY_ADDRESS (the job starts its own local Ray)."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT / "platform") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RAY_ADDRESS", None)
    return env


# Ray workers of an in-process ray.init inherit this environment: they import this checkout's platform/ too,
# not another checkout installed in the venv
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "platform"), os.environ.get("PYTHONPATH")) if p)
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions"))


def needs_miniweb():
    return pytest.mark.skipif(not (MINIWEB / "seeds.txt").exists(), reason=f"{MINIWEB} not present")


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for in-process pipeline tests (2 CPUs), shut down at the end of each test module
    (other modules start their own Ray with their own settings)."""
    import ray

    from mella.runtime import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
