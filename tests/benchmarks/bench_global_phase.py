"""Rehearsal of the global dedup phase at scale (issue 12, deliverable 3).

Synthetic unit parts of N rows with the real column types (sha1 ids, sha256 pixel keys, 64-bit pHash
hex, 1280-d unit float32 embeddings) and planted exact, pHash, CNN and same-page duplicates
(``tests/synthetic_parts.py``) are run through the job's own dedup stages (``find`` in plan order, as
``BuildCorpus.final``) on a local 3-node ``ray.cluster_utils.Cluster``. Each N's parts are written by
one process and run in a fresh driver process (which never holds the synthetic rows); a sampler
records every 0.2 s the resident set size of the driver and, per Ray node, of its raylet and all its
worker processes, while the stages find their decisions (as the job's driver does); the benchmark's own
check afterwards (every decision read back into one dict, the planted answers loaded) is not sampled. Each
RESULT line also carries the driver's peak within each stage and its RSS every ~5 s (to locate the peak). Prints a table: wall time, driver peak RSS, peak
RSS per node, recall of the planted duplicates (of each planted pair exactly one row dropped) and
precision (dropped rows that belong to a planted pair).

    PYTHONPATH=platform .venv/bin/python tests/benchmarks/bench_global_phase.py --sizes 100000 300000 1000000

Goals (issue 12): driver peak RSS at 1M <= 1.3x that at 100k; wall at 1M <= 12x that at 100k;
planted duplicates 100 % found; no false pair among the distinct rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "tests"))


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def _tree(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def run_one(n: int, work: str, nodes: int, cpus: float, dim: int) -> dict:
    """Child process body: generate parts, start the cluster, run the global phase, measure."""
    import ray
    from global_phase_run import find_global_phase, read_decisions
    from ray.cluster_utils import Cluster

    with open(os.path.join(work, "planted.json"), encoding="utf-8") as f:
        parts = json.load(f)["parts"]  # written by the --generate process: the driver never held the synthetic rows
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus)
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)
    me = psutil.Process()
    base_rss = _rss(me)
    raylets = [psutil.Process(node.all_processes["raylet"][0].process.pid) for node in cluster.list_all_nodes()]
    peaks = {"driver": 0, **{f"node{i}": 0 for i in range(len(raylets))}}
    stop = threading.Event()
    stage_peaks: dict[str, int] = {}  # driver peak RSS within each stage (where the driver's peak is set)
    window = [0]
    timeline: list[tuple[float, int]] = []  # (s since start, driver RSS MiB) every ~5 s

    def stage_done(name: str) -> None:
        stage_peaks[name] = round(max(window[0], _rss(me)) / 2**20)
        window[0] = 0

    def sample():
        while not stop.is_set():
            rss = _rss(me)
            peaks["driver"] = max(peaks["driver"], rss)
            window[0] = max(window[0], rss)
            if not timeline or time.time() - t0 - timeline[-1][0] >= 5:
                timeline.append((round(time.time() - t0, 1), round(rss / 2**20)))
            for i, r in enumerate(raylets):
                peaks[f"node{i}"] = max(peaks[f"node{i}"], sum(_rss(p) for p in _tree(r)))
            stop.wait(0.2)

    t0 = time.time()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    decisions = find_global_phase(parts, os.path.join(work, "work"), on_stage=stage_done)
    wall = time.time() - t0
    stop.set()  # the job's driver ends here; what follows is the benchmark's own check, not measured
    th.join()
    got = read_decisions(decisions)
    with open(os.path.join(work, "planted.json"), encoding="utf-8") as f:
        data = json.load(f)  # the answers, read only now: they are not the job's memory
    data["planted"] = {c: tuple(v) for c, v in data["planted"].items()}
    gen_s = data["gen_s"]
    found = sum((c in got) != (o in got) for c, (_k, o) in data["planted"].items())
    missed = [(k, c, o, got.get(c), got.get(o)) for c, (k, o) in data["planted"].items() if (c in got) == (o in got)]
    planted_rows = set(data["planted"]) | {o for _k, o in data["planted"].values()}
    false = [i for i, v in got.items() if i not in planted_rows and "already in D_know" not in v[2]]
    dropped_planted = sum(1 for i, v in got.items() if i in planted_rows)
    ray.shutdown()
    cluster.shutdown()
    return {
        "n": data["rows"],
        "gen_s": round(gen_s, 1),
        "wall_s": round(wall, 1),
        "driver_peak_mib": round(peaks["driver"] / 2**20),
        "driver_base_mib": round(base_rss / 2**20),
        "node_peak_mib": [round(peaks[f"node{i}"] / 2**20) for i in range(len(raylets))],
        "driver_stage_peak_mib": stage_peaks,
        "driver_timeline_mib": timeline,
        "planted": len(data["planted"]),
        "recall": found / max(1, len(data["planted"])),
        "precision": dropped_planted / max(1, dropped_planted + len(false)),
        "false_drops": len(false),
        "dropped": len(got),
        "missed_kinds": dict(Counter(m[0] for m in missed)),
        "missed_examples": missed[:3],
    }


def generate(n: int, work: str, dim: int) -> None:
    """``--generate`` process body: the synthetic parts and their answers (``planted.json``)."""
    from synthetic_parts import make_parts

    t0 = time.time()
    data = make_parts(os.path.join(work, "parts"), n, n_parts=max(8, n // 20_000), dim=dim, seed=0)
    data["gen_s"] = round(time.time() - t0, 1)
    with open(os.path.join(work, "planted.json"), "w", encoding="utf-8") as f:
        json.dump(data, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--cpus-per-node", type=float, default=2)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.generate:
        generate(a.generate, a.work, a.dim)
        return
    if a.child:
        print("RESULT " + json.dumps(run_one(a.child, a.work, a.nodes, a.cpus_per_node, a.dim)), flush=True)
        return
    rows = []
    for n in a.sizes:
        work = tempfile.mkdtemp(prefix=f"bench_global_{n}_")
        try:
            subprocess.run(
                [sys.executable, __file__, "--generate", str(n), "--work", work, "--dim", str(a.dim)], check=True
            )
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(n),
                    "--work",
                    work,
                    "--nodes",
                    str(a.nodes),
                    "--cpus-per-node",
                    str(a.cpus_per_node),
                    "--dim",
                    str(a.dim),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "RAY_DEDUP_LOGS": "1"},
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        res = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if not res:
            print(f"N={n}: failed (rc {out.returncode})\n{out.stderr[-3000:]}", flush=True)
            break
        rows.append(json.loads(res[0][7:]))
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"\n{'rows':>9} {'wall s':>7} {'driver peak MiB':>15} {'node peak MiB':>20} {'planted':>7} {'recall':>6} "
        f"{'precision':>9}"
    )
    for r in rows:
        print(
            f"{r['n']:>9} {r['wall_s']:>7} {r['driver_peak_mib']:>15} {'/'.join(map(str, r['node_peak_mib'])):>20} "
            f"{r['planted']:>7} {r['recall']:>6.3f} {r['precision']:>9.3f}"
        )
    if len(rows) > 1:
        print(
            f"\n{rows[-1]['n']} vs {rows[0]['n']}: driver peak x{rows[-1]['driver_peak_mib'] / rows[0]['driver_peak_mib']:.2f}, "
            f"wall x{rows[-1]['wall_s'] / rows[0]['wall_s']:.2f}"
        )


if __name__ == "__main__":
    main()
