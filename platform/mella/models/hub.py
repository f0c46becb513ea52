"""Model names as users type them: a local checkpoint directory, or a Hugging Face hub id with an optional
revision (``org/name`` or ``org/name@rev``), resolved through ``huggingface_hub`` — its cache (``HF_HOME``,
``HF_HUB_CACHE``) and ``HF_HUB_OFFLINE=1`` — exactly as vLLM and transformers resolve them.

Jobs resolve on the driver, before Ray starts, and hand the resolved local directory to their Ray workers; on
a cluster every node must therefore see the same path: put ``HF_HOME`` on the shared volume (docs/models.md).
InternVL2 as published (remote-code ``internvl_chat`` format) is converted once, cached, into transformers'
native InternVL layout by :func:`mella.models.internvl2.native_checkpoint`.

Cache layout written by :func:`write_cache_entry` (huggingface_hub's ``file_download`` layout):
``HF_HUB_CACHE/models--ORG--NAME/refs/<revision>`` holds the commit hash, ``snapshots/<commit>/<file>`` are
relative symlinks to ``blobs/<sha256 of the file>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mella.console import UsageError

#: ``org/name`` or ``org/name@revision`` (the hub's repo-id rule: letters, digits, ``-_.``; a revision is a
#: branch, a tag or a commit hash)
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The hub cache directory now in force: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``~/.cache/huggingface/hub`` (huggingface_hub's constants; read from the environment at each call so a
    test or a job may set ``HF_HOME`` after import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (1/ON/YES/TRUE, huggingface_hub's rule)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def parse_hub_id(name: str) -> tuple[str, str | None] | None:
    """``("org/name", revision or None)`` when ``name`` is hub-id shaped, else None."""
    m = HUB_ID.match(name)
    return (m["repo"], m["rev"]) if m else None


def _download(repo: str, rev: str | None, flag: str, name: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache, offline = hub_cache_dir(), hub_offline()
    get = f"hf download {repo}" + (f" --revision {rev}" if rev else "")
    try:
        return Path(snapshot_download(repo, revision=rev, cache_dir=str(cache), local_files_only=offline))
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE=1" if offline else "the hub is unreachable"
        raise UsageError(
            f"{flag} {name} is not in the Hugging Face cache {cache} ({why}): run `{get}` where the "
            "hub is reachable with the same HF_HOME, or pass a local checkpoint directory"
        ) from e
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UsageError(
            f"{flag} {name}: the hub refused it ({first}); check the id, or run `{get}` with access (cache {cache})"
        ) from e


def resolve_model(name: str | Path, *, revision: str | None = None, flag: str = "--model") -> Path:
    """The local checkpoint directory that ``name`` means.

    ``name``: an existing directory (returned absolute), or ``org/name[@rev]`` looked up with
    ``huggingface_hub.snapshot_download`` (``local_files_only`` when ``HF_HUB_OFFLINE`` is set; ``revision``
    overrides ``@rev``). A checkpoint in InternVL2's published remote-code format (``model_type:
    internvl_chat``) is replaced by its native conversion (:func:`mella.models.internvl2.native_checkpoint`).

    Raises:
        UsageError: one line — no such directory and no hub id; the id is absent from the cache (naming the
            cache directory and the ``hf download`` command); the hub refused it; InternVL2's published
            format without the converter.
    """
    text = str(name)
    p = Path(text).expanduser()
    if p.exists():
        path = p.resolve()
    else:
        parsed = parse_hub_id(text)
        if parsed is None:
            raise UsageError(
                f"{flag} {text} does not exist and is no hub id (org/name[@revision]): give a local "
                "checkpoint directory or a model id such as Qwen/Qwen2-VL-7B-Instruct"
            )
        repo, rev = parsed
        path = _download(repo, revision or rev, flag, text)
    return _native(path, flag)


def _native(path: Path, flag: str) -> Path:
    """InternVL2's published format → its cached native conversion; any other checkpoint unchanged."""
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path  # preflight.check_model_dir reports it
    if cfg.get("model_type") != "internvl_chat":
        return path
    try:
        from mella.models.internvl2 import native_checkpoint
    except ImportError as e:
        raise UsageError(
            f"{flag} {path} is InternVL2 in its published remote-code format (internvl_chat) and this "
            "build has no converter (mella.models.internvl2): pass an InternVL -hf checkpoint"
        ) from e
    return Path(native_checkpoint(path))


def snapshot_commit(repo_id: str, revision: str = "main") -> str:
    """A fixed 40-hex commit hash for a locally written snapshot (sha1 of ``repo_id@revision``)."""
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


def write_cache_entry(
    cache_dir: str | Path, repo_id: str, writer: Callable[[Path], object], revision: str = "main"
) -> Path:
    """Write a model repository into a hub cache exactly as ``hf download`` lays it out; returns the snapshot.

    ``writer(dir)`` writes the repository's files into an empty temporary ``dir``; each file becomes
    ``blobs/<sha256>`` with a relative symlink from ``snapshots/<commit>/<path>``, and ``refs/<revision>``
    names the commit (:func:`snapshot_commit`). An existing snapshot is replaced.
    """
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    commit = snapshot_commit(repo_id, revision)
    snap = repo / "snapshots" / commit
    with tempfile.TemporaryDirectory(dir=Path(cache_dir).parent if Path(cache_dir).parent.exists() else None) as tmp:
        writer(Path(tmp))
        if snap.exists():
            shutil.rmtree(snap)
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        for f in sorted(Path(tmp).rglob("*")):
            if not f.is_file():
                continue
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            blob = repo / "blobs" / h.hexdigest()
            if not blob.exists():
                shutil.move(str(f), blob)
            link = snap / f.relative_to(tmp)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snap
