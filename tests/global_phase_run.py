"""Run the build's global phase (the dedup stages' ``find`` in plan order, as ``BuildCorpus.final`` does) on
given parts; shared by tests/test_global_phase.py and tests/benchmarks/bench_global_phase.py."""

from __future__ import annotations

import os

import pyarrow.parquet as pq

from mella.stages.dedup.exact import ExactDedupStage
from mella.stages.dedup.phash import PhashConfig, PhashDedupStage
from mella.stages.dedup.semantic import SemanticDedupConfig, SemanticDedupStage


def find_global_phase(
    parts: list[str], work: str, semantic: SemanticDedupConfig | None = None, on_stage=None
) -> list[tuple[str, str]]:
    """Find every dedup stage's decisions into ``work/decisions``, in plan order; ``[(stage, decisions path)]``.
    ``on_stage(name)``, if given, is called as each stage ends (the benchmark's per-stage driver peaks)."""
    stages = [
        ExactDedupStage("image_text", with_d_ling=True),
        PhashDedupStage(PhashConfig()),
        SemanticDedupStage(semantic or SemanticDedupConfig()),
    ]
    upstream: dict[str, str] = {}
    for st in stages:
        path = os.path.join(work, "decisions", f"{st.name}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        st.find(parts, path, dict(upstream))
        upstream[st.name] = path
        if on_stage:
            on_stage(st.name)
    return list(upstream.items())


def read_decisions(found: list[tuple[str, str]]) -> dict:
    """``{row id: (stage, reason, detail)}`` read back from the decision files, the first stage's reason winning,
    as the final pass applies them (a check's view: it holds every decision in one process)."""
    out: dict = {}
    for name, path in found:
        t = pq.read_table(path)
        for i, r, d in zip(t["id"].to_pylist(), t["reason"].to_pylist(), t["detail"].to_pylist()):
            out.setdefault(i, (name, r, d))
    return out


def run_global_phase(parts: list[str], work: str, semantic: SemanticDedupConfig | None = None) -> dict:
    """:func:`find_global_phase` then :func:`read_decisions`."""
    return read_decisions(find_global_phase(parts, work, semantic))
