"""The package's layering, checked on its source (``ast``): configuration flows down, never up.

Issue 11: no module in ``mella/stages/`` or ``mella/net.py`` imports ``mella.config`` (each stage's config
lives beside it; ``mella/config.py`` only composes them), and ``platform/`` itself is no package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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
    offenders = {
        str(f.relative_to(PKG)): sorted(
            m for m in imported_modules(f) if m == "mella.config" or m.startswith("mella.config.")
        )
        for f in files
    }
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


ROOT = PKG.parents[1]
REF = __import__("re").compile(r"\bmella(?:\.[A-Za-z_]\w*)+")
LOGGERS = {"mella.build_corpus"}  # logger names, not modules


def _defines(path: Path, name: str) -> bool:
    """Whether module ``path`` defines ``name`` at top level (def, class, assignment, import)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def dangling_reference(ref: str) -> bool:
    """``mella.a.b.name``: the longest prefix that is a module under platform/, and the next part defined in it."""
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT / "platform" / Path(*parts[:i])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.exists():
            return i < len(parts) and not _defines(module, parts[i])
    return True


def test_docstrings_and_docs_name_modules_that_exist():
    """Issue 11: after the layout change no docstring or doc points at a module or function that is gone
    (``mella.stages.dling.add_dling_stages``, ``mella.stages.phash_dedup``...)."""
    files = [
        *(ROOT / "platform").rglob("*.py"),
        *(ROOT / "docs").rglob("*.md"),
        ROOT / "README.md",
        *(ROOT / "jobs").glob("*.py"),
        *(ROOT / "serve").rglob("*.py"),
        *(ROOT / "cluster").rglob("*.md"),
    ]
    refs = {
        (str(f.relative_to(ROOT)), m.group(0).rstrip("."))
        for f in files
        for m in REF.finditer(f.read_text(encoding="utf-8"))
    }
    assert len(refs) > 100
    assert sorted(r for r in refs if r[1] not in LOGGERS and dangling_reference(r[1])) == []


def test_dangling_reference_check_can_fail():
    assert dangling_reference("mella.stages.dling.add_dling_stages") and dangling_reference("mella.stages.phash_dedup")
    assert not dangling_reference("mella.plan.build_plan") and not dangling_reference("mella.stages.dedup.phash")
    assert dangling_reference("mella.plan.no_such_function")


def test_one_strict_base_for_configs():
    """Issue 11: every configuration class forbids unknown keys by subclassing mella.resources.Strict; the
    ``extra="forbid"`` setting is written once (StageResources, a frozen value object, declares its own)."""
    copies = sorted(
        str(f.relative_to(PKG))
        for f in PKG.rglob("*.py")
        if 'extra="forbid"' in f.read_text(encoding="utf-8") and f.name != "resources.py"
    )
    assert copies == []
    from mella.evaluation import EvalConfig
    from mella.languages import Language, Languages
    from mella.net import CrawlConfig
    from mella.resources import Strict
    from mella.serving.config import ServeConfig
    from mella.train.config import TrainConfig

    for cls in (CrawlConfig, TrainConfig, ServeConfig, EvalConfig, Language, Languages):
        assert issubclass(cls, Strict) and cls.model_config.get("extra") == "forbid", cls


def test_eval_pool_size_is_named_like_every_pool():
    import pydantic

    from mella.evaluation import EvalConfig

    base = dict(data="/d", output="/o", langs=["hu"], model="/m")
    assert EvalConfig(**base, pool_size=3).pool_size == 3
    with pytest.raises(pydantic.ValidationError, match="num_actors"):
        EvalConfig(**base, num_actors=3)


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation but ``-``/``_`` dropped, spaces to ``-``."""
    import re

    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_doc_links_resolve():
    """Relative links in README.md and docs/*.md point at files that exist and, with ``#x``, at a heading there
    (docs/d_ling.md → docs/corpus.md "Add a stage" / "Add a language"; docs/training.md ↔ docs/d_ling.md)."""
    import re

    link = re.compile(r"\]\(([^)\s]+)\)")
    bad = []
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in link.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue  # http(s):, mailto:
            path, _, frag = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append((doc.name, target))
            elif frag and dest.suffix == ".md":
                heads = {_anchor(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(encoding="utf-8"), re.M)}
                if frag not in heads:
                    bad.append((doc.name, target))
    assert bad == []
    assert "corpus.md#add-a-stage" in (ROOT / "docs" / "d_ling.md").read_text(encoding="utf-8")
    assert "convert_internvl_weights_to_hf.py" in (ROOT / "docs" / "models.md").read_text(encoding="utf-8")


def long_functions(paths: list[Path], limit: int = 80) -> list[tuple[str, str, int]]:
    """``(file, function, lines)`` for every function or method longer than ``limit`` lines in ``paths``."""
    import ast

    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append((p.name, node.name, n))
    return out


def test_no_function_over_80_lines(tmp_path):
    """Files short enough to hold in one's head: no function over 80 lines in platform/, jobs/, serve/."""
    files = [*(ROOT / "platform").rglob("*.py"), *(ROOT / "jobs").glob("*.py"), *(ROOT / "serve").rglob("*.py")]
    assert long_functions(files) == []
    probe = tmp_path / "probe.py"  # the checker itself sees a long function
    probe.write_text("def f():\n" + "    x = 1\n" * 81, encoding="utf-8")
    assert long_functions([probe]) == [("probe.py", "f", 82)]


def test_ruff_check_and_format():
    """`ruff check` and `ruff format --check` pass with the project's configuration (pyproject.toml)."""
    import shutil
    import subprocess
    import sys

    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed (pip install -e '.[dev]')"
    dirs = ["platform", "jobs", "serve", "tests", "scripts", "experiments"]
    for cmd in ([ruff, "check", *dirs], [ruff, "format", "--check", *dirs]):
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
