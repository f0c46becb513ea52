"""Measure pHash Hamming distances on real images to choose the near-duplicate threshold (issue 3).

Images: every PNG/JPEG in ../shared/miniweb/MANIFEST.tsv (kind=image) with width and height > 256 px
(the resolution filter of paper B.2). For each image we make planted near-duplicates
  jpeg70      JPEG re-encode at quality 70
  resize90    resize to 90% width and height (Lanczos)
  crop2       crop 2% of width and height off the left/top edges (content shifts)
  bright      brightness x1.1 (PIL ImageEnhance)
  all4        all four above, chained
and compare the distances image ↔ its variants with the distances between *distinct* real images
(pairs whose decoded pixels differ; pixel-identical copies are the exact-dedup stage's job).
Prints the distributions, what greedy removal drops at each threshold, and the smallest threshold
that catches every light edit (JPEG re-encode, resize).

    python tests/benchmarks/measure_phash_threshold.py [--root ../shared/miniweb] [--show 15]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from mella.phash_index import hamming, hash_to_hex, near_duplicate_drops, phash64

DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "shared" / "miniweb"


def variants(img: Image.Image) -> dict[str, Image.Image]:
    rgb = img.convert("RGB")
    w, h = rgb.size

    def jpeg70(x):
        buf = io.BytesIO()
        x.save(buf, "JPEG", quality=70)
        return Image.open(io.BytesIO(buf.getvalue()))

    def resize90(x):
        return x.resize((round(x.width * 0.9), round(x.height * 0.9)), Image.LANCZOS)

    def crop2(x):
        return x.crop((round(x.width * 0.02), round(x.height * 0.02), x.width, x.height))

    def bright(x):
        return ImageEnhance.Brightness(x).enhance(1.1)

    assert w > 256 and h > 256
    return {
        "jpeg70": jpeg70(rgb),
        "resize90": resize90(rgb),
        "crop2": crop2(rgb),
        "bright": bright(rgb),
        "all4": jpeg70(bright(crop2(resize90(rgb)))),
    }


def load_images(root: Path):
    rows = []
    with open(root / "MANIFEST.tsv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t"):
            if r["kind"] != "image" or not r["path"].lower().endswith((".png", ".jpg", ".jpeg")):
                continue
            img = Image.open(root / r["path"])
            img.load()
            if img.width > 256 and img.height > 256:
                rows.append((r["path"], img))
    return rows


def pct(a, q):
    return float(np.percentile(a, q)) if len(a) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--show", type=int, default=15, help="closest distinct pairs to list")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", "Palette images with Transparency")  # Pillow note on some PNGs

    images = load_images(args.root)
    t0 = time.perf_counter()
    hashes = np.array([phash64(img) for _, img in images], dtype=np.uint64)
    rate = len(images) / (time.perf_counter() - t0)
    pix = [hashlib.sha256(img.convert("RGBA").tobytes() + repr(img.size).encode()).hexdigest() for _, img in images]
    print(
        f"{len(images)} real PNG/JPEG images > 256x256 px from {args.root} "
        f"({len(set(pix))} pixel-distinct); pHash {rate:.0f} images/s (decoded, 1 core)\n"
    )

    # planted near-duplicates: distance image ↔ variant
    planted: dict[str, list[int]] = {}
    for (_path, img), h in zip(images, hashes):
        for name, v in variants(img).items():
            planted.setdefault(name, []).append(int(hamming(int(h), phash64(v))[0]))
    # distinct real images: all pairs with different decoded pixels
    i, j = np.triu_indices(len(images), 1)
    distinct = np.array([pix[a] != pix[b] for a, b in zip(i, j)], bool)
    i, j = i[distinct], j[distinct]
    dd = hamming(hashes[i], hashes[j]).astype(int)
    nn = np.full(len(images), 64)  # nearest distinct neighbour of each image
    np.minimum.at(nn, i, dd)
    np.minimum.at(nn, j, dd)
    # same file name in another language folder = one figure localised or re-scaled (a near-dup in
    # spirit); different file names are the clearer negatives
    names = [Path(p).name for p, _ in images]
    other = np.array([names[a] != names[b] for a, b in zip(i, j)], bool)
    nn_other = np.full(len(images), 64)
    np.minimum.at(nn_other, i[other], dd[other])
    np.minimum.at(nn_other, j[other], dd[other])

    print("distance (bits)       " + " ".join(f"{k:>5}" for k in range(0, 17)))
    for name, ds in planted.items():
        c = np.bincount(ds, minlength=65)
        print(f"planted {name:<13} " + " ".join(f"{x:>5}" for x in c[:17]) + f"   (>16: {c[17:].sum()})")
    c = np.bincount(dd, minlength=65)
    print("distinct pairs        " + " ".join(f"{x:>5}" for x in c[:17]) + f"   (>16: {c[17:].sum()})")
    c = np.bincount(dd[other], minlength=65)
    print("  of which other name " + " ".join(f"{x:>5}" for x in c[:17]) + f"   (>16: {c[17:].sum()})")
    c = np.bincount(nn, minlength=65)
    print("distinct nearest-nbr  " + " ".join(f"{x:>5}" for x in c[:17]) + f"   (>16: {c[17:].sum()})")
    c = np.bincount(nn_other, minlength=65)
    print("  other-name nearest  " + " ".join(f"{x:>5}" for x in c[:17]) + f"   (>16: {c[17:].sum()})\n")
    odd = sum(int(np.sum(np.array(ds) % 2)) for ds in planted.values()) + int(np.sum(dd % 2))
    print(
        f"odd distances: {odd} (imagehash thresholds 64 DCT values at their median, so hashes of distinct-"
        f"valued DCTs have 32 ones and distances are even: an odd threshold t acts like t - 1)\n"
    )

    for name, ds in planted.items():
        ds = np.array(ds)
        print(
            f"planted {name:<9} n={ds.size}: median {np.median(ds):.0f}, p95 {pct(ds, 95):.0f}, "
            f"p99 {pct(ds, 99):.0f}, max {ds.max()}"
        )
    print(
        f"distinct pairs    n={dd.size}: min {dd.min()}, p0.1 {pct(dd, 0.1):.0f}, p1 {pct(dd, 1):.0f}, "
        f"median {np.median(dd):.0f}"
    )
    print(
        f"nearest distinct  n={nn.size}: min {nn.min()}, p1 {pct(nn, 1):.0f}, p5 {pct(nn, 5):.0f}, "
        f"median {np.median(nn):.0f}\n"
    )

    light = np.concatenate([planted["jpeg70"], planted["resize90"]])
    # one representative per pixel-distinct image, then what greedy removal would really drop
    first = sorted({p: k for k, p in reversed(list(enumerate(pix)))}.values())
    areas = [images[k][1].width * images[k][1].height for k in first]
    print(
        "| t | JPEG q70 | resize 90% | brightness x1.1 | crop 2% | all four | pixel-distinct images "
        f"dropped (of {len(first)}) | distinct pairs <= t (other name) |\n|---|---|---|---|---|---|---|---|"
    )
    recommended = None
    for t in range(0, 17, 2):
        edits = ("jpeg70", "resize90", "bright", "crop2", "all4")
        caught = [f"{(np.array(planted[k]) <= t).mean():.1%}" for k in edits]
        drop, _ = near_duplicate_drops(hashes[first], t, pixels=areas, ids=[images[k][0] for k in first])
        print(
            f"| {t} | " + " | ".join(caught) + f" | {len(drop)} ({len(drop) / len(first):.1%}) | "
            f"{int((dd <= t).sum())} ({int((dd[other] <= t).sum())}) |"
        )
        if recommended is None and (light <= t).all():
            recommended = t
    print(
        f"\nsmallest even t catching every light edit (JPEG q70 re-encode and 90% resize): t = {recommended}; "
        "crops and combined edits beyond it are left to CNN semantic dedup (paper B.2: pHash is the "
        "coarse-grained step)"
    )

    order = np.argsort(dd, kind="stable")[: args.show]
    print(f"\n{args.show} closest distinct pairs (distance, sizes, paths):")
    for k in order:
        a, b = images[i[k]], images[j[k]]
        kind = "other name" if other[k] else "same name "
        print(
            f"  {dd[k]:>2}  {kind}  {a[1].size} {b[1].size}  {a[0]}  {b[0]}  "
            f"{hash_to_hex(int(hashes[i[k]]))} {hash_to_hex(int(hashes[j[k]]))}"
        )


if __name__ == "__main__":
    main()
