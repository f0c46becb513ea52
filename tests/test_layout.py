"""The package's layering, checked on its source (``ast``): configuration flows down, never up.

Issue 11: no module in ``mella/stages/`` or ``mella/net.py`` imports ``mella.config`` (each stage's config
lives beside it; ``mella/config.py`` only composes them), and ``platform/`` itself is no package.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "platform" / "mella"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_no_upward_import_into_config():
    files = sorted((PKG / "stages").rglob("*.py")) + [PKG / "net.py"]
    assert len(files) > 15
    offenders = {str(f.relative_to(PKG)): sorted(m for m in imported_modules(f) if m == "mella.config"
                                                 or m.startswith("mella.config."))
                 for f in files}
    assert {f: m for f, m in offenders.items() if m} == {}


def test_checker_sees_function_level_imports(tmp_path):
    """The walk is not fooled by an import hidden inside a function (the test above could not fail otherwise)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from mella.config import BuildConfig\n    return BuildConfig\n")
    assert "mella.config" in imported_modules(f)


def test_stages_do_not_import_pipeline_or_plan():
    """Stages are the bottom layer: the plan, executor and pipeline import them, not the reverse."""
    upper = {"mella.pipeline", "mella.plan", "mella.executor"}
    bad = {str(f.relative_to(PKG)): sorted(imported_modules(f) & upper) for f in (PKG / "stages").rglob("*.py")}
    bad.pop("stages/base.py", None)  # Stage.__call__ runs one stage through the executor's runner (tools, tests)
    assert {f: m for f, m in bad.items() if m} == {}


def test_platform_is_not_a_package():
    assert not (PKG.parent / "__init__.py").exists()  # it would shadow the stdlib `platform` (STACK.md)
