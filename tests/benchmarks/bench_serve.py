"""Serving throughput: 3 LoRA adapters round-robin vs one adapter, same server, same run (issue 6).

    python tests/benchmarks/bench_serve.py [--requests 48] [--concurrency 8] [--max-tokens 8]

A tiny random-weight Qwen2-VL (real Qwen tokenizer) with 3 PEFT adapters is served by the MELLA Ray Serve
app on 127.0.0.1; the same image+prompt requests are sent over HTTP with ``--concurrency`` in flight,
first all to ``mella-hu`` (baseline), then round-robin over ``mella-hu``/``mella-ko``/``mella-ar``.
Prints RPS, p50/p99 latency per phase, the ratio RPS(round-robin) / RPS(one adapter) (target >= 0.8),
and the model replica's peak RSS. The LRU holds all 3 adapters (``max_adapters_per_replica=3``), so the
ratio measures mixed-adapter batching, not adapter reloads; ``--lru 1`` shows the reload cost instead.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "platform"), str(ROOT / "tests")]

import httpx  # noqa: E402 - after the sys.path set-up above
from conftest_train import MAX_PIXELS, MIN_PIXELS, miniweb_pairs, tiny_qwen2vl  # noqa: E402 - after the sys.path set-up above
from serve_helpers import data_url, make_adapters, serving  # noqa: E402 - after the sys.path set-up above

ADAPTERS = ["mella-hu", "mella-ko", "mella-ar"]


async def phase(url: str, models: list[str], n: int, concurrency: int, body: dict) -> dict:
    sem, lat = asyncio.Semaphore(concurrency), []
    async with httpx.AsyncClient(timeout=600) as client:

        async def one(i: int):
            async with sem:
                t = time.perf_counter()
                r = await client.post(f"{url}/v1/chat/completions", json={**body, "model": models[i % len(models)]})
                lat.append(time.perf_counter() - t)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100)
    return {"rps": n / wall, "p50_s": q[49], "p99_s": q[98], "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--lru", type=int, default=3, help="max_adapters_per_replica")
    a = ap.parse_args()
    import ray
    from ray import serve

    from mella.runtime import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_qwen2vl(tmp / "tiny-qwen2-vl")
        make_adapters(model, tmp / "adapters", ADAPTERS)
        img = miniweb_pairs("hu")[0]["data"]
        body = {
            "max_tokens": a.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url(img)}},
                        {"type": "text", "text": "Írja le ezt a képet."},
                    ],
                }
            ],
        }
        init_ray(num_cpus=2)
        args = dict(
            model=str(model),
            adapters=str(tmp / "adapters"),
            max_adapters_per_replica=a.lru,
            image_min_pixels=MIN_PIXELS,
            image_max_pixels=MAX_PIXELS,
            max_batch_size=8,
        )
        try:
            with serving(args) as url:
                asyncio.run(phase(url, ADAPTERS, 6, 3, body))  # warm-up: load all adapters
                one = asyncio.run(phase(url, ["mella-hu"], a.requests, a.concurrency, body))
                rr = asyncio.run(phase(url, ADAPTERS, a.requests, a.concurrency, body))
                stats = serve.get_deployment_handle("VLMDeployment", "mella").stats.remote().result()
        finally:
            ray.shutdown()
    for name, r in (("one adapter", one), ("3 adapters round-robin", rr)):
        print(
            f"{name:24s} RPS {r['rps']:6.2f}  p50 {r['p50_s'] * 1000:7.1f} ms  p99 {r['p99_s'] * 1000:7.1f} ms  "
            f"({a.requests} requests, concurrency {a.concurrency}, max_tokens {a.max_tokens})"
        )
    print(f"ratio RPS(round-robin)/RPS(one adapter) = {rr['rps'] / one['rps']:.2f}  (target >= 0.8)")
    print(
        f"model replica: adapter loads {stats['loads']}, temporary loads {stats['temporary_loads']}, "
        f"peak RSS {stats['peak_rss_mib']:.0f} MiB, LRU size {a.lru}"
    )


if __name__ == "__main__":
    main()
