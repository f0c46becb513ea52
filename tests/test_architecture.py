"""The package's shape: no import cycle inside ``mella`` (imports inside functions count; only
``if TYPE_CHECKING:`` blocks, which never run, do not)."""

from __future__ import annotations

import ast
from pathlib import Path

PLATFORM = Path(__file__).resolve().parents[1] / "platform"


class _Imports(ast.NodeVisitor):
    """Collects the package modules a module imports (``deps``); ``package``: the module's package."""

    def __init__(self, mods: set[str], package: str) -> None:
        self.mods, self.package, self.deps = mods, package, set()

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for n in node.orelse:
                self.visit(n)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.deps.update(a.name for a in node.names if a.name in self.mods)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            m = ".".join(base + ([node.module] if node.module else []))
        else:
            m = node.module or ""
        for a in node.names:
            if f"{m}.{a.name}" in self.mods:
                self.deps.add(f"{m}.{a.name}")
            elif m in self.mods:
                self.deps.add(m)


def module_graph(root: Path = PLATFORM / "mella") -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` from the source, every import statement included."""
    mods = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        v = _Imports(set(mods), name if path.name == "__init__.py" else name.rpartition(".")[0])
        v.visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[name] = v.deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the DFS stack, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (c := visit(d, path + [d])):
                return c
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m, [m])):
            return c
    return None


def test_no_import_cycle_in_the_package():
    graph = module_graph()
    assert "mella.stages.base" in graph["mella.plan"]  # the graph is read, not empty
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_sees_a_lazy_import_cycle():
    # the executor importing the stage base back (even inside a function) was the cycle this test guards against
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_architecture_doc_draws_the_default_plan_in_order():
    """docs/architecture.md's data flow names every stage of the default plan, in the plan's order."""
    from mella.plan import DEFAULT_PLAN

    doc = (PLATFORM.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    flow = doc.split("```", 2)[1]  # the first code block: the drawing
    at = [flow.find(name) for name in DEFAULT_PLAN if name != "moderation_api"]  # moderation_api: named below it
    assert -1 not in at and at == sorted(at), dict(zip(DEFAULT_PLAN, at))
    assert "moderation_api" in doc


def test_card_lists_the_stages_of_the_build_in_plan_order():
    """The dataset card's "How the data was filtered" is derived from the funnel (the plan's order), not written by
    hand: a stage left out of the plan is not described, a user's stage is named with its reasons."""
    from mella.dataset_card import filter_steps

    funnel = {
        "stages": [
            {"stage": "extract", "reasons": {}},
            {"stage": "langid", "reasons": {}},
            {"stage": "alt_text", "reasons": {}},
            {"stage": "alt_min_words", "reasons": {"too_few_words": 3}},
        ]
    }
    lines = filter_steps(funnel)
    assert [ln.split(".", 1)[0] for ln in lines] == ["1", "2", "3", "4"]
    assert "language" in lines[1] and "boilerplate" in lines[2]
    assert lines[3] == "4. `alt_min_words` (a user stage): rejects too_few_words."
    assert not any("pHash" in ln for ln in lines)
    assert any("pHash" in ln for ln in filter_steps({}))  # no funnel: the default plan's stages
