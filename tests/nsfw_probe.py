"""A synthetic NSFW-positive probe for the moderation tests, without explicit imagery in the repo.

The probe is an abstract colour field: a 16 × 16 RGB grid (768 bytes, ``PROBE_HEX``) upscaled
bicubically to 256 × 256 — a blurry multicoloured mosaic that depicts nothing. The bytes
were found by a seeded black-box search against the real open_nsfw model (NES gradient estimates
from the model's outputs only, signed steps; :func:`search`), starting from a uniform colour. What
we measured: no solid colour scores above 0.33, nor do 200 blurred skin-tone ellipse pictures (max
0.33); the search reached 0.81 after 60 iterations and 0.96 after 111. Regenerate with

    python tests/nsfw_probe.py [--seed 0] [--iterations 160] [--population 16]

which prints the new ``PROBE_HEX`` and its score.
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

GRID = 16
#: Found by ``python tests/nsfw_probe.py --seed 0 --iterations 160`` (stopped at iteration 110 with
#: P(nsfw) = 0.9600 ≥ target 0.95; 1,887 model evaluations, ~3 min on 2 cores).
PROBE_HEX = (
    "4bb46c875454f93c18c360a86fa8e49fb46c7b249033a82457609c873c7887909057e730f3cc3c575430f32460cfc06c"
    "7b1e54dba8c093600cc36c0693486cf3902487243cab24849fb4786f7884f34878db3c307b6024934824123c247b2a6c"
    "6f906c63549c7b84e48754e4cfd818e72a84930006c32484cf600c63063cc30c6c9f84cc6348a8b71e069fa86c574800"
    "879cb4e79054b79cdb9fb43c9360f3876054f98454636c84cf7860b79054c3cc3cc3b40ce7903cdbf03cf3609093606c"
    "5724307b0624ab306cc318489f0ca8db423c6f48547b006c570000ab786c63006ced9078cfa8487ba86cab1ea8c38424"
    "873660633c546f7830cfb4187bb43cf99060c3125ab7cc6c93a854ab90907b3c24e748b4abcc847ba878db7884e730b4"
    "b74824c33048f35484c300787b78066f60783360187b18601b909c93246c57063063a83c9f000c271848877800638460"
    "87603caba86c7b066c27123c9f90606fb4909f1878f99ca893e484db843cb7e43cb7543c939054db90c0635430c33c84"
    "27b4cc635424ff60a87ba89cb7f9c09f540cf954309f6c6cc36c9cc360244b0618f918908748547be478f35406abb490"
    "4b7890b7b43c7b48907b6c48934848576cb4e76c8493cc78ab780c3f5460b778009f6cdb279c000c3c90ab9c6c4b48b4"
    "57603c6f30603fb4607bd8fcb78490cfa848f9b4249f484893006c7b84cce160609fb4e1879c30931206571860e12424"
    "93609cab30546f54604b6c906f1e90c32a9c8760543f3c0087900cc3486c279024dbb4304b604887cc187be46c331896"
    "9384783f3030dbb43c4bd89c5754ccabed064b90c0dbb424db849cdb42783f8490ff6c48e73c78b79c9c6f06787b0c30"
    "db9c6cab609ced908457789c332484c33c546330a8936c54933078f378e79f8430c3a884f39024c3846ce71848e77800"
    "db6024abd806b7126ccf6078b724a8f36c60635454e76cc0872490c38484ab3084c324a86324789f30b47b3606577842"
    "933c3cf36c901bd8c00f54a86f2484ff78c0933c489384b4b73c0ccf8484e724c08784b4b700849f3c600c3606633048"
)


def render(params: np.ndarray | bytes | str) -> Image.Image:
    """(8, 8, 3) uint8 grid (array, 192 bytes or their hex) → 256 × 256 RGB image (bicubic)."""
    if isinstance(params, str):
        params = bytes.fromhex(params)
    if isinstance(params, (bytes, bytearray)):
        params = np.frombuffer(params, np.uint8)
    grid = np.asarray(params, np.uint8).reshape(GRID, GRID, 3)
    return Image.fromarray(grid, "RGB").resize((256, 256), Image.BICUBIC)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def search(
    seed: int = 0, iterations: int = 60, population: int = 16, sigma: float = 8.0, lr: float = 6.0, target: float = 0.95
):
    """NES (natural-evolution-strategy gradient estimate, antithetic Gaussian samples; Ilyas et al.
    2018's black-box attack) with signed steps on the grid, maximising logit P(nsfw) of the real model.

    Starts from the uniform colour (153, 102, 102), the highest-scoring of 216 solid colours (0.32).
    Returns (params uint8 (GRID*GRID*3,), P(nsfw)); stops early once P(nsfw) ≥ ``target``.
    """
    from mella.stages.filters.moderation import NSFWStage

    stage = NSFWStage()
    stage.setup()
    rng = np.random.default_rng(seed)

    def score(grids: np.ndarray) -> np.ndarray:
        return stage.scores([png(render(np.clip(np.rint(g), 0, 255).astype(np.uint8))) for g in grids])

    x = np.tile(np.array([153.0, 102.0, 102.0]), GRID * GRID)
    best, best_score = x.copy(), float(score(x[None])[0])
    for it in range(iterations):
        u = rng.normal(size=(population // 2, x.size))
        u = np.concatenate([u, -u])
        p = np.clip(score(x + sigma * u).astype(np.float64), 1e-6, 1 - 1e-6)
        f = np.log(p / (1 - p))
        grad = ((f - f.mean())[:, None] * u).mean(axis=0) / sigma
        x = np.clip(x + lr * np.sign(grad), 0, 255)
        s = float(score(x[None])[0])
        if s > best_score:
            best, best_score = x.copy(), s
        print(f"iteration {it:3d}: P(nsfw) = {s:.4f} (best {best_score:.4f})", flush=True)
        if best_score >= target:
            break
    return np.clip(np.rint(best), 0, 255).astype(np.uint8), best_score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--population", type=int, default=16)
    args = ap.parse_args()
    params, score = search(args.seed, args.iterations, args.population)
    print(f"\nPROBE_HEX = {params.tobytes().hex()!r}\nP(nsfw) = {score:.4f}")


if __name__ == "__main__":
    main()
