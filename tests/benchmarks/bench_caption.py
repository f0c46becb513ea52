"""Issue 4 benchmark: the caption stage in a Ray Data actor pool vs a plain Python loop, same model and images.

Model: a tiny random-weight Qwen2-VL with the real Qwen tokenizer (tests/conftest_train.py), Qwen2-VL
image budget 56²..112² px, greedy, ``--new-tokens`` tokens per caption (EOS suppressed by
``min_new_tokens``, so every caption costs the same). Images: real miniweb screenshots/photos (> 256 px).

* loop — one process: ``CaptionStage`` built once, called on consecutive ``--batch-size`` slices of one
  Arrow table (the exact per-batch work the actor does), 1 torch thread; run before and after the Ray
  run, best of the two (the machine may be shared).
* ray  — ``mella.executor.apply(ray.data.from_arrow(table), CaptionStage(cfg))`` (an actor pool of A,
  batch_size=B, num_cpus=1)`` (Ray gives a 1-CPU actor 1 OMP thread), on a local Ray with 2 CPUs.
  Reported twice: end to end (actor start + model load included) and steady state (wall time after
  the first batch finished, from the stage's per-batch records).

Ratio = ray images/s ÷ loop images/s (< 1: Ray overhead; > 1 with A > 1: parallelism). Peak RSS: the
loop process, and the largest actor (``max_rss_mb`` of the stage's batch records).

    python tests/benchmarks/bench_caption.py                       # 32 images, batch 4, 1 actor
    python tests/benchmarks/bench_caption.py --images 64 --actors 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "platform"))
sys.path.insert(0, str(ROOT / "tests"))

MINIWEB = Path(os.environ.get("MELLA_SHARED", ROOT.parent / "shared")) / "miniweb"


def images(n: int) -> list[tuple[str, bytes]]:
    from PIL import Image

    out = []
    for p in sorted(glob.glob(str(MINIWEB / "*" / "*" / "**" / "*.png"), recursive=True)):
        with Image.open(p) as im:
            if min(im.size) > 256:
                out.append((p, Path(p).read_bytes()))
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} miniweb images > 256 px found, asked for {n}")


def table(imgs):
    from mella.schema import REJECT_SCHEMA, record_id, to_table

    rows = [
        {
            "id": record_id("th", f"http://b/{i}", p),
            "lang": "th",
            "page_url": f"http://b/{i}",
            "image_url": p,
            "image": data,
            "category": "screenshot_ui",
        }
        for i, (p, data) in enumerate(imgs)
    ]
    return to_table(rows, REJECT_SCHEMA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=16)
    args = ap.parse_args()

    import pyarrow as pa
    import ray
    import torch
    from conftest_train import MAX_PIXELS, MIN_PIXELS, tiny_qwen2vl

    from mella.stages.enrich.caption import CaptionConfig, CaptionStage

    work = Path(tempfile.mkdtemp(prefix="bench_caption_"))
    model = tiny_qwen2vl(work / "qwen")
    gen = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "repetition_penalty": 1.5}
    cfg = CaptionConfig(
        mllm={
            "family": "qwen2-vl",
            "model_path": str(model),
            "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS,
            "device": "cpu",
        },
        generation=gen,
        batch_size=args.batch_size,
        pool_size=args.actors,
        num_cpus=1,
    )
    t = table(images(args.images))
    n = t.num_rows

    # ---- plain loop
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    stage = CaptionStage(cfg)
    stage.setup()
    load_s = time.perf_counter() - t0

    def run_loop() -> float:
        t0 = time.perf_counter()
        out = [stage(t.slice(i, args.batch_size)) for i in range(0, n, args.batch_size)]
        assert sum(o.num_rows for o in out) == n and all(c for o in out for c in o["caption_en"].to_pylist())
        return time.perf_counter() - t0

    loop_times = [run_loop()]

    # ---- Ray Data actor pool
    stats = work / "stats"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        blocks = [t.slice(i, args.batch_size) for i in range(0, n, args.batch_size)]  # spread over the pool
        from mella.executor import apply

        ds = apply(ray.data.from_arrow(blocks), CaptionStage(cfg, stats_dir=str(stats)))  # the job's executor
        res = pa.concat_tables(ray.get(ds.to_arrow_refs()))
        ray_s = time.perf_counter() - t0
        t_end = time.time()
    finally:
        ray.shutdown()
    loop_times.append(run_loop())  # again after Ray: the machine is shared, take the best of two
    loop_s = min(loop_times)
    loop_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    recs = [json.loads(Path(p).read_text()) for p in glob.glob(str(stats / "*.json"))]
    assert res.num_rows == n and sum(r["rows"] for r in recs) == n
    model_s = sum(r["seconds"] for r in recs)
    first_done = min(os.path.getmtime(p) for p in glob.glob(str(stats / "*.json")))
    steady_s = t_end - first_done
    steady_n = n - args.batch_size * args.actors  # batches after the first one of each actor
    actor_rss = max(r["max_rss_mb"] for r in recs)

    loop_ips = n / loop_s
    ray_ips = n / ray_s
    steady_ips = steady_n / steady_s if steady_s > 0 and steady_n > 0 else float("nan")
    print(
        f"caption stage, tiny Qwen2-VL, {n} miniweb images, batch {args.batch_size}, {args.new_tokens} new tokens, "
        f"{args.actors} actor(s); torch {torch.__version__}, ray {ray.__version__}"
    )
    print("| run | wall s | images/s | ratio vs loop | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| plain loop, best of 2 ({loop_times[0]:.1f}/{loop_times[1]:.1f} s; model load {load_s:.1f} s excluded) | {loop_s:.1f} | {loop_ips:.2f} | 1.00 | {loop_rss:.0f} |"
    )
    print(
        f"| Ray actor pool, end to end (actor start + load included) | {ray_s:.1f} | {ray_ips:.2f} | "
        f"{ray_ips / loop_ips:.2f} | {actor_rss:.0f} (actor) |"
    )
    print(
        f"| Ray actor pool, steady state (after first batch) | {steady_s:.1f} | {steady_ips:.2f} | "
        f"{steady_ips / loop_ips:.2f} | |"
    )
    print(
        f"model time inside the actors: {model_s:.1f} s for {n} images ({n / model_s:.2f} images/s); "
        f"Ray wall − model time = {ray_s - model_s:.1f} s (scheduling, actor start, model load, transfers)"
    )


if __name__ == "__main__":
    main()
