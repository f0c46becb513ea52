"""Wall time and peak memory of ``jobs/inspect_corpus.py`` (report + dataset card) on synthetic corpora (issue 15).

Input: synthetic build outputs in the real schema (``tests/synthetic_corpus.py``): D_know rows spread over
8 languages, interleaved across parts of 5,000 rows as the build writes them, each with a real JPEG
(320×240 px, a pool of 4,096 distinct pictures, ~5 KiB: parts as large as real ones), plus pHash/CNN near-duplicate and alt-text/resolution
rejects. Each size is inspected in a fresh process (local Ray, 2 CPUs: thumbnails, statistics figure, the
card's per-language partitioning of d_know/, the first time), while a sampler sums the proportional set
size (PSS) of the job's whole process tree (driver, raylet, Ray workers) every 0.1 s. Prints wall time
and peak PSS per size and the ratio of the peaks (memory bounded: the ratio stays near 1 while rows x10).

    python tests/benchmarks/bench_inspect.py [--rows 20000 200000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import TreeSampler  # noqa: E402 - after the sys.path set-up above
from synthetic_corpus import LANGS, write_corpus  # noqa: E402 - after the sys.path set-up above


def run_inspect(out: str) -> tuple[float, int, float, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "platform"), RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, str(ROOT / "jobs" / "inspect_corpus.py"), out, "--num-cpus", "2"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    with TreeSampler(lambda: [ps], memory="pss") as sampler:  # the job's whole tree: driver, raylet, workers
        stdout, _ = proc.communicate()
    peak, cpu = sampler.peak, sampler.cpu_s
    if proc.returncode != 0:
        if "timed out during startup" in stdout:
            raise RuntimeError("node timed out during startup")
        raise SystemExit(f"inspect failed: {stdout[-3000:]}")
    timings = [
        ln.split(": ", 1)[-1] for ln in stdout.splitlines() if "mella.report: " in ln or ln.startswith("dataset card")
    ]
    return time.perf_counter() - t0, peak, cpu, "; ".join(timings)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000], help="D_know rows per corpus")
    ap.add_argument("--keep", help="build the corpora under this directory and keep them")
    args = ap.parse_args()
    base = args.keep or tempfile.mkdtemp(prefix="bench_inspect_")
    results = []
    try:
        for n in args.rows:
            out = os.path.join(base, f"rows{n}")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            per_lang = {lang: n // len(LANGS) for lang in LANGS}
            counts = write_corpus(
                out,
                per_lang,
                rows_per_file=5000,
                near_dups=max(1, n // 100 // len(LANGS)),
                rejects_per_reason=max(1, n // 200 // len(LANGS)),
                pool=4096,
            )
            size = sum(f.stat().st_size for f in Path(out).rglob("*.parquet")) / 2**20
            n_rej = sum(counts["rejects"].values())
            print(
                f"rows={n}: wrote {sum(per_lang.values())} D_know + {n_rej} rejects, {size:.0f} MiB parquet "
                f"in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            for _attempt in range(3):  # Ray gives its raylet 30 s to register: on an overloaded box, start again
                try:
                    wall, peak, cpu, line = run_inspect(out)
                    break
                except RuntimeError as e:
                    print(f"rows={n}: Ray did not start ({e}); retrying", flush=True)
            else:
                raise SystemExit("Ray did not start three times")
            results.append((n, wall, peak))
            print(
                f"rows={n}: jobs/inspect_corpus.py {wall:.1f} s wall, {cpu:.1f} CPU s (process tree), "
                f"peak PSS {peak / 2**20:.0f} MiB, load average {os.getloadavg()[0]:.1f}\n  {line}",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if len(results) > 1:
        (n0, w0, p0), (n1, w1, p1) = results[0], results[-1]
        print(f"rows x{n1 / n0:.0f}: wall x{w1 / w0:.2f}, peak PSS x{p1 / p0:.2f}")


if __name__ == "__main__":
    main()
