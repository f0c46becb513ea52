"""Adapter registry: the model names a server answers to, built once by listing an adapter directory.

A request's ``model`` is only ever looked up in this mapping; it is never joined into a filesystem
path, so ``../../etc`` or an absolute path in a request can only be "unknown model" (404).

Layout (both accepted, one adapter per sub-directory; the sub-directory's name is the model name)::

    ADAPTERS/mella-hu/adapter_config.json + adapter_model.safetensors
    ADAPTERS/mella-ko/adapter/adapter_config.json + ...      (a jobs/train.py --output dir)

A sub-directory is skipped (with a reason in ``Registry.skipped``) when its name is not a safe model
name (``NAME_RE``), it collides with the base model's name, or it has no ``adapter_config.json`` +
``adapter_model.safetensors`` (pickled ``adapter_model.bin`` files are not loaded: unpickling runs code).
The adapter's language comes from ``mella_train.json`` (written by mella.train.artifacts) when present,
else from a ``mella-<lang>`` name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_LANG_FROM_NAME = re.compile(r"^mella-([a-z]{2,3})(?:$|[-_.])")


@dataclass(frozen=True)
class Adapter:
    """One servable LoRA adapter: ``name`` (model id), ``path`` (PEFT dir), ``lang`` (ISO 639-1 or None)."""

    name: str
    path: Path
    lang: str | None


@dataclass
class Registry:
    """Model names → adapters, plus the base model's name (which selects "no adapter")."""

    base_name: str
    adapters: dict[str, Adapter] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # directory name → reason

    def names(self) -> list[str]:
        """All servable model ids, base first."""
        return [self.base_name, *sorted(self.adapters)]

    def __contains__(self, name: object) -> bool:
        return name == self.base_name or name in self.adapters

    def adapter(self, name: str) -> Adapter | None:
        """The adapter for ``name``; None for the base model. Raises ``KeyError`` for an unknown name."""
        if name == self.base_name:
            return None
        return self.adapters[name]


def _adapter_dir(d: Path) -> Path | None:
    for cand in (d, d / "adapter"):
        if (cand / "adapter_config.json").is_file() and (cand / "adapter_model.safetensors").is_file():
            return cand
    return None


def _lang(adapter_dir: Path, name: str) -> str | None:
    meta = adapter_dir / "mella_train.json"
    if meta.is_file():
        try:
            lang = json.loads(meta.read_text()).get("lang")
            if isinstance(lang, str):
                return lang
        except (OSError, ValueError):
            pass
    m = _LANG_FROM_NAME.match(name)
    return m.group(1) if m else None


def discover(adapter_root: str | Path | None, base_name: str) -> Registry:
    """List ``adapter_root`` once and return the registry (empty when ``adapter_root`` is None).

    Raises ``NotADirectoryError`` when ``adapter_root`` is given but is not a directory, ``ValueError``
    when ``base_name`` is not a safe model name.
    """
    if not NAME_RE.match(base_name):
        raise ValueError(f"base model name {base_name!r} must match {NAME_RE.pattern}")
    reg = Registry(base_name)
    if adapter_root is None:
        return reg
    root = Path(adapter_root)
    if not root.is_dir():
        raise NotADirectoryError(f"adapter directory {root} does not exist")
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        name = d.name
        if not NAME_RE.match(name):
            reg.skipped[name] = f"name does not match {NAME_RE.pattern}"
        elif name == base_name:
            reg.skipped[name] = "same name as the base model"
        elif (found := _adapter_dir(d)) is None:
            reg.skipped[name] = "no adapter_config.json + adapter_model.safetensors"
        else:
            reg.adapters[name] = Adapter(name, found.resolve(), _lang(found, name))
    return reg
