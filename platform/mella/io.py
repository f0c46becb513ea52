"""Atomic, idempotent file output: every file appears whole or not at all.

Files are written as ``NAME.tmp-<uuid>`` and ``os.replace``-d into place (atomic on POSIX);
directories are built under a staging name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid

import pyarrow as pa
import pyarrow.parquet as pq


def write_parquet_atomic(table: pa.Table, path: str) -> None:
    """Write ``table`` to ``path`` (zstd) via a temporary file + rename."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_json_atomic(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def replace_dir(staged: str, final: str) -> None:
    """Swap the complete directory ``staged`` into ``final`` (previous content removed)."""
    trash = None
    if os.path.exists(final):
        trash = f"{final}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
    os.replace(staged, final)
    if trash:
        shutil.rmtree(trash, ignore_errors=True)


def remove_stale(directory: str, markers: tuple[str, ...] = (".tmp-", ".old-", ".staging")) -> None:
    """Delete leftovers of a killed run (temporary files and staging/old directories) in ``directory``."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if any(m in name for m in markers):
            p = os.path.join(directory, name)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.remove(p)
