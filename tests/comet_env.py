"""A second Python environment with ``unbabel-comet`` (the reference COMETKiwi implementation) for the parity test.

``unbabel-comet`` 2.2.7 (the newest) pins ``numpy<2``, ``transformers<5`` and ``huggingface-hub<1``; the project runs
numpy 2.4 and transformers 5, so it cannot live in the main venv. This module builds a venv beside it that reuses
the main venv's torch (a ``.pth`` appends the main site-packages AFTER the venv's own, so the venv's numpy 1.x,
transformers 4.x and huggingface-hub 0.x win, and torch, ~5 GB, is not installed twice). pip leaves the main venv
alone: a dist outside the venv's prefix is never uninstalled ("Not uninstalling ... outside environment").

Built once per versions key under ``$MELLA_TEST_CACHE`` (default ``~/.cache/mella-tests``); a ``.ok`` marker is
written last, so an interrupted build is redone. Run ``python tests/comet_env.py`` to build it ahead (CI does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

COMET_VERSION = "2.2.7"
# numpy<2 first (unbabel-comet's pin); the rest are unbabel-comet's own bounds made explicit so pip resolves fast
REQUIREMENTS = [
    "numpy<2",
    f"unbabel-comet=={COMET_VERSION}",
    "transformers>=4.40,<5",
    "huggingface-hub<1",
    "setuptools<81",  # pkg_resources: comet reads its own version with it (sparsemax_patch switch)
    "sentencepiece==0.2.0",
]  # its model_pb2 fits comet's protobuf 4 (the main venv's needs protobuf 5+)
KEY = (
    f"unbabel-comet-{COMET_VERSION}-py{sys.version_info.major}{sys.version_info.minor}-"
    + hashlib.sha1(" ".join(REQUIREMENTS).encode()).hexdigest()[:8]
)


def env_dir() -> Path:
    root = Path(os.environ.get("MELLA_TEST_CACHE", Path.home() / ".cache" / "mella-tests"))
    return root / KEY


def comet_python(timeout: float = 1200) -> Path:
    """Path of the second environment's ``python``, building the environment on first use.

    Raises ``RuntimeError`` (with pip's last output lines) when the build fails, e.g. PyPI unreachable."""
    d = env_dir()
    py = d / "bin" / "python"
    if (d / ".ok").exists():
        return py
    if d.exists():
        shutil.rmtree(d)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True, timeout=120)
    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "zz_mella_main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # appended after its own
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    p = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", *REQUIREMENTS],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )
    if p.returncode != 0:
        raise RuntimeError(f"building {d} failed: " + " | ".join((p.stdout + p.stderr).strip().splitlines()[-5:]))
    (d / ".ok").write_text(f"built in {time.monotonic() - t0:.0f} s\n")
    return py


if __name__ == "__main__":
    t = time.monotonic()
    print(comet_python(), f"({time.monotonic() - t:.0f} s)")
