"""Image fetch throughput with many origins: the job-wide lease actor (mella.hostlimits) against each
actor's own gate (per-actor limits, the behaviour before the lease service), on a real local Ray.

``--origins`` aiohttp sites on 127.0.0.1 (one port each: distinct origins) serve a small PNG after
``--hold-ms``; ``--actors`` Ray actors each run a real ImageFetchStage over their share of
``--images`` URLs (politeness 0, per_host_concurrency 4). Each mode first fetches one image per origin
per actor, untimed (the lease actor's start, a few seconds once per job, and robots.txt). Prints
images/s of each mode, interleaved ``--repeats`` times, and the median ratio.

    python tests/benchmarks/bench_host_leases.py [--origins 40] [--images 800] [--actors 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))

from aiohttp import web
from PIL import Image


def _serve(n_origins: int, hold_s: float) -> tuple[list[int], callable]:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "PNG")
    png = buf.getvalue()

    async def image(_request):
        await asyncio.sleep(hold_s)
        return web.Response(body=png, content_type="image/png")

    async def robots(_request):
        return web.Response(text="User-agent: *\nAllow: /\n", content_type="text/plain")

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def start():
        app = web.Application()
        app.router.add_get("/robots.txt", robots)
        app.router.add_get("/img/{n}.png", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ports = []
        for _ in range(n_origins):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])
        return runner, ports

    runner, ports = asyncio.run_coroutine_threadsafe(start(), loop).result()
    return ports, lambda: asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--origins", type=int, default=40)
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--actors", type=int, default=4)
    ap.add_argument("--hold-ms", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import ray

    from mella.config import CrawlConfig
    from mella.runtime import init_ray

    init_ray(num_cpus=2)
    ports, stop = _serve(args.origins, args.hold_ms / 1000)
    cfg = CrawlConfig(politeness_delay_s=0.0, allow_private_hosts=["127.0.0.1"], respect_tdmrep=False)

    @ray.remote(num_cpus=0.25)
    class FetchActor:
        def __init__(self, warc_dir: str, shared: bool):
            from mella.hostlimits import HostGate
            from mella.stages.io.fetch import ImageFetchStage

            self.stage = ImageFetchStage(cfg, None, [], concurrency=32, index_dir=warc_dir)
            self.stage.setup()
            if not shared:
                self.stage.fetcher.gate = HostGate(cfg)

        def fetch(self, rows):
            self.stage.process(rows)
            return sum(1 for r in rows if not r.get("reason"))

    results: dict[str, list[float]] = {"shared": [], "per-actor": []}
    for rep in range(args.repeats):
        for mode in ("shared", "per-actor"):
            with tempfile.TemporaryDirectory() as tmp:
                urls = [
                    f"http://127.0.0.1:{ports[i % len(ports)]}/img/{rep}-{mode}-{i}.png" for i in range(args.images)
                ]
                actors = [FetchActor.remote(tmp, mode == "shared") for _ in range(args.actors)]
                ray.get([a.__ray_ready__.remote() for a in actors])
                # warm-up, not timed: the lease actor's start (a worker process, once per job) and robots.txt
                warm = [f"http://127.0.0.1:{p}/img/warm-{rep}-{mode}.png" for p in ports]
                ray.get([a.fetch.remote([{"image_url": u, "id": u} for u in warm]) for a in actors])
                t0 = time.monotonic()
                ok = sum(
                    ray.get(
                        [
                            a.fetch.remote([{"image_url": u, "id": u} for u in urls[i :: args.actors]])
                            for i, a in enumerate(actors)
                        ]
                    )
                )
                wall = time.monotonic() - t0
                for a in actors:
                    ray.kill(a)
            assert ok == args.images, (mode, ok)
            results[mode].append(args.images / wall)
            print(
                f"repeat {rep} {mode:>9}: {args.images} images from {args.origins} origins in {wall:.2f} s "
                f"= {args.images / wall:.0f} images/s",
                flush=True,
            )
    stop()
    med = {m: statistics.median(v) for m, v in results.items()}
    print(
        f"median images/s: shared lease actor {med['shared']:.0f}, per-actor gates {med['per-actor']:.0f}, "
        f"ratio {med['shared'] / med['per-actor']:.2f}"
    )


if __name__ == "__main__":
    main()
