"""End-to-end image throughput vs img2dataset 1.47, in one run (issue 3, benchmark 2).

The same list of ≥ 2,000 distinct image URLs (the real miniweb images, each under several query
strings) is served on 127.0.0.1 by an aiohttp server in its own process, and pushed through:

- img2dataset 1.47 ``--output_format parquet --resize_mode no --min_image_size 256`` (it decodes and
  checks the size like our stages do): the comparable setting;
- img2dataset ``--disable_all_reencoding True``: the download-only upper bound;
- ours: the build_corpus image stages on Ray Data — fetch (actor pool, aiohttp) → decode (Pillow,
  bomb guard, header-size gate, pixel sha256, pHash) → resolution → parquet, then the global exact
  and pHash near-duplicate passes (no model stages: img2dataset has none).

Prints images/s of each and the ratios. img2dataset pins pandas<3, so it runs from its own virtualenv,
created on first use under ``~/.cache/mella-bench/img2dataset`` (``--img2dataset PATH`` to use another).

    python tests/benchmarks/bench_throughput.py [--copies 6] [--processes 2 --threads 16] [--fetch-actors 2]
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
MINIWEB = Path(os.environ.get("MELLA_SHARED", ROOT.parent / "shared")) / "miniweb"

SERVER = r"""
import sys
from aiohttp import web
app = web.Application()
app.router.add_get("/robots.txt", lambda r: web.Response(text="User-agent: *\nAllow: /\n"))
app.router.add_static("/", sys.argv[1])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
"""


def image_paths() -> list[str]:
    with open(MINIWEB / "MANIFEST.tsv", encoding="utf-8") as f:
        return [r["path"] for r in csv.DictReader(f, delimiter="\t")
                if r["kind"] == "image" and r["path"].lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".webp"))]


def ensure_img2dataset(explicit: str | None) -> str:
    if explicit:
        return explicit
    venv = Path.home() / ".cache" / "mella-bench" / "img2dataset"
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset==1.47.0"], check=True)
    return str(exe)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_img2dataset(exe: str, url_list: str, out: str, processes: int, threads: int, extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [exe, "--url_list", url_list, "--input_format", "txt", "--output_folder", out, "--output_format", "parquet",
           "--processes_count", str(processes), "--thread_count", str(threads), "--resize_mode", "no",
           "--number_sample_per_shard", "1000", "--enable_wandb", "False", "--timeout", "20", "--retries", "0", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def count_img2dataset_ok(out: str) -> int:
    import pyarrow.parquet as pq

    n = 0
    for p in glob.glob(os.path.join(out, "*.parquet")):
        t = pq.read_table(p, columns=["status"])
        n += sum(1 for s in t.column("status").to_pylist() if s == "success")
    return n


def run_ours(urls: list[str], out: str, fetch_actors: int, concurrency: int) -> tuple[float, int]:
    """Our image stages as build_corpus plans them (the ``ImageStages`` step of :func:`mella.plan.build_plan`,
    same resources and batch size, run by :func:`mella.executor.apply`), parts written, then the global exact
    and pHash stages (find + apply)."""
    import pyarrow.parquet as pq
    import ray

    from mella.config import BuildConfig
    from mella.executor import apply
    from mella.pipeline import write_parts
    from mella.plan import build_plan
    from mella.schema import REJECT_SCHEMA, record_id, to_table
    from mella.stages.base import Fused
    from mella.stages.dedup.exact import ExactDedupStage
    from mella.stages.dedup.phash import PhashDedupStage

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg = BuildConfig.model_validate({
        "output": out,
        "crawl": {"allow_private_hosts": ["127.0.0.1"], "politeness_delay_s": 0, "per_host_concurrency": concurrency,
                  "max_retries": 0, "respect_robots": True},
        "ray": {"image_pool": {"pool_size": fetch_actors, "concurrency": concurrency}},
    })
    image_step = next(s for s in build_plan(cfg) if isinstance(s, Fused) and s.name == "ImageStages")
    rows = [{"id": record_id("hu", "bench", u), "lang": "hu", "page_url": "bench", "image_url": u,
             "alt_text": "kép", "source": "crawl"} for u in urls]
    block = cfg.ray.image_pool.batch_size
    t0 = time.perf_counter()
    ds = ray.data.from_arrow([to_table(rows[i:i + block], REJECT_SCHEMA) for i in range(0, len(rows), block)])
    ds = apply(ds, image_step)
    ds = ds.map_batches(write_parts, batch_format="pyarrow", batch_size=None, fn_kwargs={"out_dir": os.path.join(out, "parts")})
    ds.take_all()
    t_stream = time.perf_counter() - t0
    parts = sorted(glob.glob(os.path.join(out, "parts", "*.parquet")))
    exact, phash = ExactDedupStage("image"), PhashDedupStage(cfg.filters.phash, "image")
    exact.find(parts, os.path.join(out, "exact.parquet"), {})
    phash.find(parts, os.path.join(out, "phash.parquet"), {"exact_dedup": exact.decisions})
    n_ok = 0
    for p in parts:
        t = phash(exact(pq.read_table(p)))
        n_ok += t.num_rows  # rows that went through every stage (kept or counted reject)
    total = time.perf_counter() - t0
    print(f"  ours: streaming stages {t_stream:.1f} s, global exact + pHash {total - t_stream:.1f} s", flush=True)
    return total, n_ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=6, help="query-string copies of each miniweb image")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--fetch-actors", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32, help="our requests in flight per fetch actor")
    ap.add_argument("--img2dataset", help="path of an img2dataset executable (default: own venv)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each pipeline (medians reported)")
    args = ap.parse_args()

    exe = ensure_img2dataset(args.img2dataset)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(MINIWEB), str(port)])
    time.sleep(2)
    try:
        base = f"http://127.0.0.1:{port}/"
        urls = [f"{base}{p}?copy={k}" for k in range(args.copies) for p in image_paths()]
        tmp = tempfile.mkdtemp(prefix="mella-bench-")
        url_list = os.path.join(tmp, "urls.txt")
        Path(url_list).write_text("\n".join(urls) + "\n")
        print(f"{len(urls)} distinct URLs over {len(image_paths())} real miniweb images, server 127.0.0.1:{port}")

        import statistics

        import ray

        from mella.runtime import init_ray

        # interleaved repeats (A, B, A, B...) so that outside load hits both sides alike; medians reported
        times: dict[str, list[float]] = {"cmp": [], "dl": [], "ours": []}
        for rep in range(args.repeats):
            times["cmp"].append(run_img2dataset(exe, url_list, os.path.join(tmp, f"i2d_cmp{rep}"), args.processes,
                                                args.threads, ["--min_image_size", "256"]))
            ok_cmp = count_img2dataset_ok(os.path.join(tmp, f"i2d_cmp{rep}"))
            init_ray(num_cpus=2)
            ray.data.DataContext.get_current().enable_progress_bars = False
            t, n_ours = run_ours(urls, os.path.join(tmp, "ours"), args.fetch_actors, args.concurrency)
            times["ours"].append(t)
            ray.shutdown()
            times["dl"].append(run_img2dataset(exe, url_list, os.path.join(tmp, f"i2d_dl{rep}"), args.processes,
                                               args.threads, ["--disable_all_reencoding", "True"]))
            ok_dl = count_img2dataset_ok(os.path.join(tmp, f"i2d_dl{rep}"))
            print(f"repeat {rep}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
        t_i2d_cmp, t_i2d_dl, t_ours = (statistics.median(times[k]) for k in ("cmp", "dl", "ours"))
        n = len(urls)
        r_cmp, r_dl, r_ours = n / t_i2d_cmp, n / t_i2d_dl, n / t_ours
        print(f"{'pipeline (median of ' + str(args.repeats) + ' interleaved runs)':<58}{'wall s':>9}{'img/s':>9}")
        print(f"{'img2dataset --min_image_size 256 (decode + size check)':<58}{t_i2d_cmp:>9.1f}{r_cmp:>9.0f}   ({ok_cmp} kept)")
        print(f"{'img2dataset --disable_all_reencoding (download only)':<58}{t_i2d_dl:>9.1f}{r_dl:>9.0f}   ({ok_dl} ok)")
        print(f"{'mella fetch → decode → resolution → exact → pHash':<58}{t_ours:>9.1f}{r_ours:>9.0f}   ({n_ours} rows)")
        print(f"ratio ours / img2dataset comparable setting: {r_ours / r_cmp:.2f}x (target >= 1.5x)")
        print(f"ratio ours / img2dataset download-only bound: {r_ours / r_dl:.2f}x")
        print(f"processes {args.processes} x threads {args.threads} for img2dataset; {args.fetch_actors} fetch actors x "
              f"{args.concurrency} requests for ours; 2 CPUs")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
