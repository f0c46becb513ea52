"""The one command-line grammar of every ``jobs/*.py``.

* Lists are comma-separated: ``--langs hu,cs`` (:func:`comma_list`).
* The same names for the same things: ``--data`` (a corpus), ``--model`` (a base checkpoint), ``--output``
  (what the job writes), ``--langs``, ``--config`` (a YAML file of the job's settings).
* Settings are overridden as bare dotted ``key=value`` words after the flags, values YAML-typed
  (``crawl.max_depth=3 lr=2e-5``), as torchtune's CLI does; ``--set KEY=VALUE`` is refused with the new form.
* ``--print-config`` prints the effective settings as YAML and exits 0, before any input is checked.

Errors are :class:`mella.console.UsageError` (one line, exit 2, before Ray starts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from mella.console import UsageError


def comma_list(value: str) -> list[str]:
    """argparse ``type``: ``"hu, cs,"`` → ``["hu", "cs"]`` (empty items dropped)."""
    return [x.strip() for x in value.split(",") if x.strip()]


def add_config_flags(ap: argparse.ArgumentParser, what: str | None = None) -> None:
    """``--config FILE`` (when ``what`` names the settings class) and ``--print-config``."""
    if what is not None:
        ap.add_argument("--config", help=f"YAML file with {what} fields (then key=value overrides)")
    ap.add_argument("--print-config", action="store_true", help="print the effective settings as YAML and exit")


def parse(
    ap: argparse.ArgumentParser, argv: list[str] | None, overrides: bool = True
) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv``; returns ``(args, key=value overrides)``. With ``overrides=False`` none are accepted.

    Raises UsageError for ``--set`` (the old form), a word that is neither a flag nor ``key=value``
    (e.g. ``--langs hu ko``: lists take commas), and overrides where the job has no settings.
    """
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    if "--set" in rest or any(r.startswith("--set=") for r in rest):
        raise UsageError(
            "--set is not a flag: write settings as bare key=value after the flags, e.g. lr=2e-5 "
            f"(see {ap.prog} --help)"
        )
    bad = [r for r in rest if r.startswith(("-", "=")) or "=" not in r]
    if bad:
        raise UsageError(
            f"unrecognized arguments: {' '.join(bad)} (lists are comma-separated, e.g. --langs hu,ko; "
            f"settings go as key=value; see {ap.prog} --help)"
        )
    if rest and not overrides:
        raise UsageError(f"{ap.prog} has no settings to override: {' '.join(rest)}")
    return args, rest


def load_config(path: str | Path | None, flag: str = "--config") -> dict[str, Any]:
    """The mapping in YAML file ``path`` ({} for None). UsageError when it is missing, unreadable or not a mapping."""
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {path} does not exist (examples/ holds configurations to start from)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"{flag} {path} is not readable YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {path} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values YAML-typed) to the nested ``data``; returns it."""
    for item in overrides:
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise UsageError(f"{item}: {p} is a value, not a group of settings")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


def dump(settings: Any) -> str:
    """YAML of a pydantic model (JSON mode: paths as strings) or of a plain mapping."""
    if hasattr(settings, "model_dump"):
        settings = settings.model_dump(mode="json")
    return yaml.safe_dump(settings, allow_unicode=True, sort_keys=False)


def print_config(settings: Any) -> int:
    """Print :func:`dump` of ``settings`` on stdout; returns 0 (the job's exit code)."""
    sys.stdout.write(dump(settings))
    sys.stdout.flush()
    return 0


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of a job without a settings class: its flags, less the console ones (for ``--print-config``)."""
    skip = {"quiet", "verbose", "debug", "print_config", "config"}
    return {k: v for k, v in vars(args).items() if k not in skip}
