"""End-to-end image throughput vs img2dataset 1.47, in one run (issue 3, benchmark 2).

The same list of ≥ 2,000 distinct image URLs (the real miniweb images, each under several query
strings) is served on 127.0.0.1 by an aiohttp server in its own process, and pushed through:

- img2dataset 1.47 ``--output_format parquet --resize_mode no --min_image_size 256`` (it decodes and
  checks the size like our stages do): the comparable setting;
- img2dataset ``--disable_all_reencoding True``: the download-only upper bound;
- ours: the build_corpus image stages on Ray Data — fetch (actor pool, aiohttp) → decode (Pillow,
  bomb guard, header-size gate, pixel sha256, pHash) → resolution → parquet, then the global exact
  and pHash near-duplicate passes (no model stages: img2dataset has none).

Prints, per pipeline, the median wall time of interleaved repeats, images/s, CPU-seconds per image (all
processes of the tool: img2dataset's process tree; our driver, Ray's GCS/raylet and every worker — the
server is excluded from both) and peak RSS of those process trees, then the ratios; for ours also the
per-stage CPU ms per image from ``stage_stats`` and the split between the streaming stages and the
global exact + pHash phase (img2dataset has no dedup). Our kept rows are checked against an independent
reference (the served files decoded with Pillow, size > 256 px, ``imagehash.phash`` of the RGBA frame):
same ids, same pHashes.

img2dataset pins pandas<3, so it runs from its own virtualenv, created on first use under
``~/.cache/mella-bench/img2dataset`` (``--img2dataset PATH`` to use another).

    python tests/benchmarks/bench_throughput.py [--repeats 3] [--copies 6] [--processes 2 --threads 16] [--fetch-actors 2]
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

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import TreeSampler  # noqa: E402 - after the sys.path set-up above

sys.path.insert(0, str(ROOT / "tests"))
from ports import free_port  # noqa: E402 - after the sys.path set-up above

MINIWEB = Path(os.environ.get("MELLA_SHARED", ROOT.parent / "shared")) / "miniweb"

SERVER = r"""
import asyncio, sys
from aiohttp import web
latency = float(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0

@web.middleware
async def delay(request, handler):  # a real host's round trip, for every response
    if latency:
        await asyncio.sleep(latency)
    return await handler(request)

app = web.Application(middlewares=[delay])
app.router.add_get("/robots.txt", lambda r: web.Response(text="User-agent: *\nAllow: /\n"))
app.router.add_static("/", sys.argv[1])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=None, print=None)
"""


def image_paths() -> list[str]:
    with open(MINIWEB / "MANIFEST.tsv", encoding="utf-8") as f:
        return [
            r["path"]
            for r in csv.DictReader(f, delimiter="\t")
            if r["kind"] == "image" and r["path"].lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".webp"))
        ]


def ensure_img2dataset(explicit: str | None) -> str:
    if explicit:
        return explicit
    venv = Path.home() / ".cache" / "mella-bench" / "img2dataset"
    exe = venv / "bin" / "img2dataset"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset==1.47.0"], check=True)
    return str(exe)


def run_img2dataset(
    exe: str, url_list: str, out: str, processes: int, threads: int, extra: list[str], server_pid: int
) -> tuple[float, float, int]:
    """One img2dataset run: (wall s, CPU s of its process tree, peak RSS bytes of that tree)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        exe,
        "--url_list",
        url_list,
        "--input_format",
        "txt",
        "--output_folder",
        out,
        "--output_format",
        "parquet",
        "--processes_count",
        str(processes),
        "--thread_count",
        str(threads),
        "--resize_mode",
        "no",
        "--number_sample_per_shard",
        "1000",
        "--enable_wandb",
        "False",
        "--timeout",
        "20",
        "--retries",
        "0",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    with TreeSampler(lambda: [root], {server_pid}) as sampler:
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"img2dataset failed with exit code {rc}")
    return wall, sampler.cpu_s, sampler.peak


def count_img2dataset_ok(out: str) -> int:
    import pyarrow.parquet as pq

    n = 0
    for p in glob.glob(os.path.join(out, "*.parquet")):
        t = pq.read_table(p, columns=["status"])
        n += sum(1 for s in t.column("status").to_pylist() if s == "success")
    return n


def run_ours(
    urls: list[str], out: str, fetch_actors: int, concurrency: int, server_pid: int, batches_per_actor: int
) -> dict:
    """Our image stages as build_corpus plans them (the ``ImageStages`` step of :func:`mella.plan.build_plan`,
    same resources and batch size, run by :func:`mella.executor.apply`), parts written, then the global exact
    and pHash stages (find + apply). Returns wall times, rows, CPU s and peak RSS of the driver + Ray process
    tree, the per-stage counters and the kept rows' (id, pHash)."""
    import pyarrow.parquet as pq
    import ray

    from mella.config import BuildConfig
    from mella.executor import apply, stage_stats
    from mella.pipeline import write_parts
    from mella.plan import build_plan
    from mella.schema import REJECT_SCHEMA, record_id, to_table
    from mella.stages.base import Fused
    from mella.stages.dedup.exact import ExactDedupStage
    from mella.stages.dedup.phash import PhashDedupStage

    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    stats_dir = os.path.join(out, "stats")
    os.makedirs(stats_dir)
    cfg = BuildConfig.model_validate(
        {
            "output": out,
            "crawl": {
                "allow_private_hosts": ["127.0.0.1"],
                "politeness_delay_s": 0,
                "per_host_concurrency": concurrency,
                "max_retries": 0,
                "respect_robots": True,
            },
            "ray": {
                "image_pool": {
                    "pool_size": fetch_actors,
                    "concurrency": concurrency,
                    "batches_per_actor": batches_per_actor,
                }
            },
        }
    )
    image_step = next(s for s in build_plan(cfg) if isinstance(s, Fused) and s.name == "ImageStages")
    rows = [
        {
            "id": record_id("hu", "bench", u),
            "lang": "hu",
            "page_url": "bench",
            "image_url": u,
            "alt_text": "kép",
            "source": "crawl",
        }
        for u in urls
    ]
    block = cfg.ray.image_pool.batch_size
    me = psutil.Process()
    with TreeSampler(lambda: [me], {server_pid}) as sampler:
        t0 = time.perf_counter()
        ds = ray.data.from_arrow([to_table(rows[i : i + block], REJECT_SCHEMA) for i in range(0, len(rows), block)])
        ds = apply(ds, image_step, stats_dir)
        ds = ds.map_batches(
            write_parts, batch_format="pyarrow", batch_size=None, fn_kwargs={"out_dir": os.path.join(out, "parts")}
        )
        ds.take_all()
        t_stream = time.perf_counter() - t0
        cpu_stream = sampler.cpu_s
        parts = sorted(glob.glob(os.path.join(out, "parts", "*.parquet")))
        exact, phash = ExactDedupStage("image"), PhashDedupStage(cfg.filters.phash, "image")
        exact.find(parts, os.path.join(out, "exact.parquet"), {})
        phash.find(parts, os.path.join(out, "phash.parquet"), {"exact_dedup": exact.decisions})
        n_ok = 0
        for p in parts:
            t = phash(exact(pq.read_table(p)))
            n_ok += t.num_rows  # rows that went through every stage (kept or counted reject)
        total = time.perf_counter() - t0
    kept = []
    for p in parts:  # after the streaming stages, before the global dedup: what the reference predicts
        for r in pq.read_table(p, columns=["id", "phash", "reason"]).to_pylist():
            if r["reason"] is None:
                kept.append((r["id"], r["phash"]))
    return {
        "wall": total,
        "stream": t_stream,
        "rows": n_ok,
        "cpu": sampler.cpu_s,
        "cpu_stream": cpu_stream,
        "rss": sampler.peak,
        "stages": stage_stats([stats_dir]),
        "kept": sorted(kept),
        "by_kind": sampler.cpu_by_kind(),
    }


def reference_kept(urls: list[str], base: str) -> list[tuple[str, str]]:
    """(id, pHash) the image stages must keep, computed without them: each served file opened with Pillow,
    kept when both sides exceed 256 px, pHash = ``imagehash.phash`` of its RGBA frame."""
    import io

    import imagehash
    from PIL import Image

    from mella.schema import record_id

    by_path: dict[str, str | None] = {}
    out = []
    for u in urls:
        path = u[len(base) :].split("?", 1)[0]
        if path not in by_path:
            by_path[path] = None
            try:
                with Image.open(io.BytesIO((MINIWEB / path).read_bytes())) as im:
                    if im.width > 256 and im.height > 256 and im.format in ("JPEG", "PNG", "WEBP", "GIF"):
                        by_path[path] = str(imagehash.phash(im.convert("RGBA"), hash_size=8))
            except Exception:
                pass
        if by_path[path] is not None:
            out.append((record_id("hu", "bench", u), by_path[path]))
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=6, help="query-string copies of each miniweb image")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--fetch-actors", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=32, help="our requests in flight per fetch actor")
    ap.add_argument("--img2dataset", help="path of an img2dataset executable (default: own venv)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each pipeline (medians reported)")
    ap.add_argument("--batches-per-actor", type=int, default=2, help="ray.image_pool.batches_per_actor of ours")
    ap.add_argument(
        "--ab-batches-per-actor",
        type=int,
        help="also run our streaming stages with this value, interleaved (an A/B of the fetch/decode overlap)",
    )
    ap.add_argument("--latency-ms", type=float, default=0.0, help="delay every response of the image server")
    args = ap.parse_args()

    import statistics

    import ray

    from mella.runtime import init_ray

    exe = ensure_img2dataset(args.img2dataset)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(MINIWEB), str(port), str(args.latency_ms)])
    time.sleep(2)
    try:
        base = f"http://127.0.0.1:{port}/"
        urls = [f"{base}{p}?copy={k}" for k in range(args.copies) for p in image_paths()]
        tmp = tempfile.mkdtemp(prefix="mella-bench-")
        url_list = os.path.join(tmp, "urls.txt")
        Path(url_list).write_text("\n".join(urls) + "\n")
        print(
            f"{len(urls)} distinct URLs over {len(image_paths())} real miniweb images, server 127.0.0.1:{port}, "
            f"{args.latency_ms:g} ms added per response"
        )
        expected = reference_kept(urls, base)

        # interleaved repeats (A, B, A, B...) so that outside load hits both sides alike; medians reported
        runs: dict[str, list[tuple[float, float, int]]] = {"cmp": [], "dl": [], "ours": [], "stream": []}
        ours: list[dict] = []
        for rep in range(args.repeats):
            runs["cmp"].append(
                run_img2dataset(
                    exe,
                    url_list,
                    os.path.join(tmp, f"i2d_cmp{rep}"),
                    args.processes,
                    args.threads,
                    ["--min_image_size", "256"],
                    server.pid,
                )
            )
            ok_cmp = count_img2dataset_ok(os.path.join(tmp, f"i2d_cmp{rep}"))
            init_ray(num_cpus=2)  # Ray start-up is paid once per job, before its first stage: not timed
            ray.data.DataContext.get_current().enable_progress_bars = False
            o = run_ours(
                urls, os.path.join(tmp, "ours"), args.fetch_actors, args.concurrency, server.pid, args.batches_per_actor
            )
            ray.shutdown()
            if o["kept"] != expected:
                missing, extra = set(expected) - set(o["kept"]), set(o["kept"]) - set(expected)
                raise SystemExit(
                    f"ours kept other rows than the reference: {len(missing)} missing, {len(extra)} extra, "
                    f"e.g. {sorted(missing)[:2]} {sorted(extra)[:2]}"
                )
            ours.append(o)
            runs["ours"].append((o["wall"], o["cpu"], o["rss"]))
            runs["stream"].append((o["stream"], o["cpu_stream"], o["rss"]))
            if args.ab_batches_per_actor:
                init_ray(num_cpus=2)
                ray.data.DataContext.get_current().enable_progress_bars = False
                o = run_ours(
                    urls,
                    os.path.join(tmp, "ours_ab"),
                    args.fetch_actors,
                    args.concurrency,
                    server.pid,
                    args.ab_batches_per_actor,
                )
                ray.shutdown()
                runs.setdefault("ab", []).append((o["stream"], o["cpu_stream"], o["rss"]))
            runs["dl"].append(
                run_img2dataset(
                    exe,
                    url_list,
                    os.path.join(tmp, f"i2d_dl{rep}"),
                    args.processes,
                    args.threads,
                    ["--disable_all_reencoding", "True"],
                    server.pid,
                )
            )
            ok_dl = count_img2dataset_ok(os.path.join(tmp, f"i2d_dl{rep}"))
            print(f"repeat {rep}: " + ", ".join(f"{k} {v[-1][0]:.1f} s" for k, v in runs.items()), flush=True)
        n = len(urls)
        med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in runs.items()}
        rows = [
            ("img2dataset --min_image_size 256 (decode + size check)", "cmp", f"({ok_cmp} kept)"),
            ("img2dataset --disable_all_reencoding (download only)", "dl", f"({ok_dl} ok)"),
            ("mella fetch → decode → resolution (streaming stages)", "stream", f"({len(expected)} kept)"),
            ("mella ... → global exact + pHash dedup", "ours", f"({ours[-1]['rows']} rows)"),
        ]
        if "ab" in runs:
            rows.insert(3, (f"mella streaming stages, batches_per_actor={args.ab_batches_per_actor}", "ab", "(A/B)"))
        print(
            f"{'pipeline (median of ' + str(args.repeats) + ' interleaved runs)':<58}{'wall s':>8}{'img/s':>7}"
            f"{'CPU ms/img':>11}{'peak RSS MiB':>13}"
        )
        for label, k, note in rows:
            w, c, r = med[k]
            print(f"{label:<58}{w:>8.1f}{n / w:>7.0f}{1000 * c / n:>11.2f}{r / 2**20:>13.0f}   {note}")
        r_cmp = med["cmp"][0]
        print(
            f"ratio ours (streaming stages) / img2dataset comparable setting: {r_cmp / med['stream'][0]:.2f}x wall, "
            f"{med['cmp'][1] / med['stream'][1]:.2f}x CPU per image (target >= 1.5x)"
        )
        if "ab" in med:
            print(
                f"A/B: batches_per_actor={args.batches_per_actor} vs {args.ab_batches_per_actor}: "
                f"{med['ab'][0] / med['stream'][0]:.2f}x faster (wall of the streaming stages)"
            )
        print(
            f"ratio ours (with global exact + pHash dedup) / img2dataset comparable setting: {r_cmp / med['ours'][0]:.2f}x"
        )
        print(
            f"ratio ours (streaming stages) / img2dataset download-only bound: {med['dl'][0] / med['stream'][0]:.2f}x"
        )
        print(f"kept rows: ids and pHashes equal to the reference's ({len(expected)}) in every repeat")
        print("our stages, CPU ms per input row (median over repeats; the thread or event loop running the stage):")
        for name in ours[0]["stages"]:
            per_row = [o["stages"][name]["cpu_ms_per_row"] or 0 for o in ours]
            rows_in = ours[0]["stages"][name]["rows_in"]
            print(
                f"  {name:<12} {statistics.median(per_row):7.2f} ms x {rows_in} rows = "
                f"{statistics.median(per_row) * rows_in / n:5.2f} ms per URL"
            )
        print("our CPU ms per URL by process (median over repeats; streaming stages and global phase together):")
        kinds = sorted({k for o in ours for k in o["by_kind"]}, key=lambda k: -ours[0]["by_kind"].get(k, 0))
        for k in kinds:
            v = statistics.median(o["by_kind"].get(k, 0.0) for o in ours)
            if v >= 0.05 * n / 1000:
                print(f"  {k:<60} {1000 * v / n:6.2f}")
        print(
            f"processes {args.processes} x threads {args.threads} for img2dataset; {args.fetch_actors} actors x "
            f"{args.batches_per_actor} batches x {args.concurrency} requests for ours; 2 CPUs; "
            f"load average at the end {os.getloadavg()[0]:.1f}"
        )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
