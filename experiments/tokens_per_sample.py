"""Measure tokens per training sample on a corpus, for the GPU-hour estimate of docs/experiments.md.

    python experiments/tokens_per_sample.py --data mella_repro/corpus --model mella_repro/base-tiny-qwen2-vl

Qwen2-VL: the training code's own sample builder (mella.train.samples.SampleBuilder: the prompt pool, chat
template, image tokens, answer) with the real Qwen tokenizer of the checkpoint and Qwen2-VL's image processor
at the paper's image budget (TrainConfig defaults: 4·28² to 1024·28² pixels, i.e. at most 1024 visual tokens).
InternVL2-8B: the same text tokens plus 256 tokens per 448-px tile, tiles counted by transformers'
GotOcr2 image processor (InternVL2's dynamic tiling) with at most ``--max-tiles`` (6) tiles plus the thumbnail.
Prints per source: samples, mean and p90 tokens (text, image, total). Assumes the Qwen tokenizer's text token
counts hold for InternVL2's InternLM2 tokenizer too (not shipped here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def measure(data: Path, model: str, langs: list[str] | None, max_tiles: int) -> dict:
    import io

    import pyarrow.parquet as pq
    from PIL import Image
    from transformers import GotOcr2ImageProcessorPil

    from mella.train.config import TrainConfig
    from mella.train.samples import ANSWER_COLUMN, SampleBuilder

    d = TrainConfig.model_fields
    tiles = GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=max_tiles
    )
    out = {}
    for source in ("d_know", "d_ling"):
        files = sorted((data / source).glob("*.parquet"))
        if not files:
            continue
        t = pq.read_table(files, columns=["lang", "sha256", "image", ANSWER_COLUMN[source]]).to_pylist()
        rows = [r for r in t if not langs or r["lang"] in langs]
        qwen, text, intern = [], [], []
        for lang in sorted({r["lang"] for r in rows}):
            b = SampleBuilder(
                "qwen2-vl",
                model,
                lang,
                10**6,
                0,
                d["image_min_pixels"].default,
                d["image_max_pixels"].default,
                max_tiles,
            )
            mine = [r for r in rows if r["lang"] == lang]
            res = b(
                {
                    "image": [r["image"] for r in mine],
                    "answer": [r[ANSWER_COLUMN[source]] for r in mine],
                    "source": [source] * len(mine),
                    "sha256": [r["sha256"] for r in mine],
                }
            )
            pad = b.bb.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            for ids, r in zip(res["input_ids"], mine):
                n_img = int((ids == pad).sum())
                qwen.append(len(ids))
                text.append(len(ids) - n_img)
                img = Image.open(io.BytesIO(r["image"])).convert("RGB")
                n_tiles = tiles(img, return_tensors="np")["pixel_values"].shape[0]
                intern.append(len(ids) - n_img + 256 * n_tiles)
        out[source] = {
            "samples": len(qwen),
            **{
                f"{k}_mean": round(statistics.fmean(v), 1)
                for k, v in (("text", text), ("qwen2vl_total", qwen), ("internvl2_total", intern))
            },
            "qwen2vl_total_p90": sorted(qwen)[int(0.9 * (len(qwen) - 1))],
            "internvl2_total_p90": sorted(intern)[int(0.9 * (len(intern) - 1))],
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True, help="a Qwen2-VL checkpoint dir (its tokenizer is used; weights are not)")
    ap.add_argument("--langs", help="comma-separated (default: all)")
    ap.add_argument("--max-tiles", type=int, default=6)
    a = ap.parse_args()
    print(json.dumps(measure(Path(a.data), a.model, a.langs.split(",") if a.langs else None, a.max_tiles), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
