"""Run artifacts: the PEFT adapter directory and its metadata file.

An adapter directory holds ``adapter_config.json`` + ``adapter_model.safetensors`` (written by PEFT's
``save_pretrained``; loadable by ``peft.PeftModel.from_pretrained`` and vLLM's LoRA loader) and
``mella_train.json`` (this module): language, backbone, base model, mix, seed, optimizer steps,
hyperparameters, the data snapshot hash, sample counts and library versions.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

METADATA_FILE = "mella_train.json"


def snapshot_hash(rows: list[tuple[str, str, str]]) -> str:
    """sha256 hex of the sorted ``(source, id, sha256)`` training rows: identifies the data a run saw."""
    h = hashlib.sha256()
    for source, rid, sha in sorted(rows):
        h.update(f"{source}\t{rid}\t{sha}\n".encode())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the adapter."""
    out = {}
    for pkg in ("torch", "transformers", "peft", "deepspeed", "ray"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def write_metadata(adapter_dir: Path, meta: dict) -> Path:
    """Write ``adapter_dir/mella_train.json`` (adds ``created_at`` UTC and ``versions``); returns its path.

    Raises ``FileNotFoundError`` when ``adapter_dir`` holds no ``adapter_config.json`` (no adapter saved).
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json")
    meta = {**meta, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions()}
    path = adapter_dir / METADATA_FILE
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str))
    return path


def read_metadata(adapter_dir: Path) -> dict:
    """The metadata dict of an adapter directory."""
    return json.loads((Path(adapter_dir) / METADATA_FILE).read_text())
