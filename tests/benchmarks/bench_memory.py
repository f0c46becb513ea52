"""Peak memory of the whole build_corpus job (driver + Ray workers) at 1x and 10x input (issue 3, benchmark 3).

Input: the bundled demo web is crawled once (live, 127.0.0.1) and its page + image WARCs are copied
N times under distinct URL prefixes (``/copyK/...``), so the 10x input has 10x the records, pages
and image bytes (copies of real pages and images; exact dedup removes the repeats downstream). Each
input is then run as ``python jobs/build_corpus.py --warc ... --offline`` in a fresh process, while a
sampler sums the proportional set size (PSS: shared pages split between processes, so Ray's
shared-memory object store is not counted once per worker) of the job's whole process tree every
0.1 s. Prints both peaks and their ratio (target <= 1.3).

    python tests/benchmarks/bench_memory.py [--factor 10]
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import TreeSampler  # noqa: E402 - after the sys.path set-up above


def crawl_demo(out: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "platform"))
    subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "build_corpus.py"), "--output", out, "--num-cpus", "2", "-q"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return sorted(glob.glob(os.path.join(out, "warc", "*.warc.gz")) + glob.glob(os.path.join(out, "warc", "*.warc")))


def replicate(warcs: list[str], factor: int, out_dir: str) -> None:
    from mella.warc import RotatingWarcWriter, iter_responses

    os.makedirs(out_dir, exist_ok=True)
    for k in range(factor):
        w = RotatingWarcWriter(out_dir, f"copy{k:03d}", max_bytes=32 * 2**20)
        for path in warcs:
            for rec in iter_responses(path):
                scheme, rest = rec.url.split("://", 1)
                host, _, tail = rest.partition("/")
                w.write_response(f"{scheme}://{host}/copy{k}/{tail}", rec.status, "", rec.headers, rec.body, rec.date)
        w.close()


def run_job(warc_dir: str, out: str) -> tuple[float, int, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "platform"))
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "build_corpus.py"),
        "--warc",
        os.path.join(warc_dir, "*.warc.gz"),
        "--output",
        out,
        "--offline",
        "--num-cpus",
        "2",
        "-q",
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ps = psutil.Process(proc.pid)
    with TreeSampler(lambda: [ps], memory="pss") as sampler:
        stdout, _ = proc.communicate()
    peak = sampler.peak
    if proc.returncode != 0:
        raise SystemExit(f"job failed: {stdout[-2000:]}")
    total = next((ln for ln in stdout.splitlines() if ln.startswith("D_know total")), "")
    return time.perf_counter() - t0, peak, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--factor", type=int, default=10)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mella-mem-")
    warcs = crawl_demo(os.path.join(tmp, "crawl"))
    size1 = sum(os.path.getsize(w) for w in warcs)
    replicate(warcs, 1, os.path.join(tmp, "in1"))
    replicate(warcs, args.factor, os.path.join(tmp, f"in{args.factor}"))
    size_n = sum(os.path.getsize(p) for p in glob.glob(os.path.join(tmp, f"in{args.factor}", "*.warc.gz")))
    t1, peak1, tot1 = run_job(os.path.join(tmp, "in1"), os.path.join(tmp, "out1"))
    tn, peakn, totn = run_job(os.path.join(tmp, f"in{args.factor}"), os.path.join(tmp, f"out{args.factor}"))
    mib = 2**20
    print(f"{'input':<8}{'WARC MiB':>10}{'wall s':>9}{'peak PSS MiB':>14}  result")
    print(f"{'1x':<8}{size1 / mib:>10.1f}{t1:>9.1f}{peak1 / mib:>14.0f}  {tot1}")
    print(f"{args.factor}x{'':<{6 - len(str(args.factor))}}{size_n / mib:>10.1f}{tn:>9.1f}{peakn / mib:>14.0f}  {totn}")
    print(f"peak memory ratio {args.factor}x / 1x: {peakn / peak1:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
