"""Measure EfficientNet-lite0 cosines on real images to choose the semantic-dedup threshold (issue 3).

Images: every PNG/JPEG in ../shared/miniweb/MANIFEST.tsv (kind=image) with width and height > 256 px,
one representative per pixel-distinct image, and the same planted near-duplicates as
``measure_phash_threshold.py``: jpeg70 (JPEG q70), resize90 (90% Lanczos), crop2 (2% off left/top),
bright (brightness x1.1), all4 (all four chained).
Prints:
- cosine image ↔ each of its variants, versus cosine between distinct real images, split into
  "same file name" (one figure localised into another language) and "other name" pairs;
- per threshold, what the full method (:func:`find_semantic_duplicates`: k-means, pairs within the
  n_probe nearest clusters, greedy by priority) drops: the planted recall of CNN dedup alone and of
  CNN ∪ pHash (at pHash's default threshold; the issue asks that pHash *or* CNN removes them), and
  the distinct real images it drops;
- the pair recall of the clustered search against brute force for one cluster (SemDeDup), the 2 nearest
  and the default probe rule;
- embedding throughput on this machine, and peak RSS.

    python tests/benchmarks/measure_semantic_threshold.py [--root ../shared/miniweb] [--threads 2]
        [--cache /tmp/semdedup-emb.npz]   # reuse embeddings of an earlier run
"""

from __future__ import annotations

import argparse
import hashlib
import io
import resource
import time
import warnings
from pathlib import Path

import numpy as np
from measure_phash_threshold import DEFAULT_ROOT, load_images, pct, variants

from mella import phash_index
from mella.stages.dedup.phash import PhashConfig
from mella.stages.dedup.semantic import SemanticDedupConfig, find_semantic_duplicates, semantic_pairs

EDITS = ("jpeg70", "resize90", "crop2", "bright", "all4")
DEFAULT_T = SemanticDedupConfig().threshold
THRESHOLDS = (0.85, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)


def png_bytes(img) -> bytes:
    """Lossless bytes of a variant (JPEG variants are already JPEG-decoded pixels)."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def embed_all(args, images):
    """(originals (n, 1280), {edit: (n, 1280)}, images/s, re-embedding max diff), cached in --cache."""
    if args.cache and args.cache.exists():
        z = np.load(args.cache)
        print(f"embeddings from {args.cache} (throughput of the run that made them: {float(z['rate']):.1f} images/s)")
        return z["orig"], {k: z[k] for k in EDITS}, float(z["rate"]), float(z["diff"])
    import torch

    from mella.stages.enrich.embed import EmbedStage

    stage = EmbedStage(SemanticDedupConfig(num_cpus=args.threads))
    stage.setup()
    torch.set_num_threads(args.threads)
    originals = [(args.root / p).read_bytes() for p, _ in images]
    stage.embed(originals[:4])  # warm-up
    t0 = time.perf_counter()
    e = stage.embed(originals)
    rate = len(originals) / (time.perf_counter() - t0)
    diff = float(np.abs(stage.embed(originals[:16]) - e[:16]).max())
    var = {k: [] for k in EDITS}
    for _, img in images:
        for name, v in variants(img).items():
            var[name].append(png_bytes(v))
    var_emb = {k: stage.embed(v) for k, v in var.items()}
    if args.cache:
        np.savez(args.cache, orig=e, rate=rate, diff=diff, **var_emb)
    return e, var_emb, rate, diff


def corroborated(e, var, h0, hv, i, j, cos, other, paths) -> None:
    """Pairwise (brute force) rule table: cosine ≥ 0.96, or pHash ≤ the pHash stage's threshold, or
    cosine ≥ tc with pHash ≤ tb bits (the corroborated rule of :class:`SemanticDedupConfig`)."""
    ht = PhashConfig().threshold
    ham = phash_index.hamming(h0[i], h0[j])
    hv_bits = {k: phash_index.hamming(h0, hv[k]) for k in EDITS}
    cv = {k: np.einsum("ij,ij->i", e, var[k]) for k in EDITS}

    def rule(c, h, tc, tb):
        return (c >= DEFAULT_T) | (h <= ht) | ((c >= tc) & (h <= tb))

    base = rule(cos, ham, 2.0, -1)
    n_base = len(set(i[base].tolist()) | set(j[base].tolist()))
    print(
        f"\ncorroborated rule, pairwise: near-duplicate if cosine >= {DEFAULT_T} or pHash <= {ht} bits or "
        f"(cosine >= tc and pHash <= tb bits)"
    )
    print("| tc | tb | " + " | ".join(EDITS) + " | distinct images in a near-duplicate pair | added pairs |")
    print("|---" * (len(EDITS) + 4) + "|")
    for tc, tb in [(2.0, -1)] + [(tc, tb) for tc in (0.93, 0.94, 0.95) for tb in (8, 10, 12)]:
        caught = [rule(cv[k], hv_bits[k], tc, tb).mean() for k in EDITS]
        pr = rule(cos, ham, tc, tb)
        n_img = len(set(i[pr].tolist()) | set(j[pr].tolist()))
        label = "off | –" if tc > 1 else f"{tc:.2f} | {tb}"
        print(
            f"| {label} | " + " | ".join(f"{c:.1%}" for c in caught) + f" | {n_img} (off: {n_base}) | "
            f"{int((pr & ~base).sum())} |"
        )
    tc, tb = SemanticDedupConfig().corroborated_threshold, SemanticDedupConfig().corroborated_phash_bits
    added = rule(cos, ham, tc, tb) & ~base
    print(
        f"pairs the default (tc {tc}, tb {tb}) adds: "
        + "; ".join(f"{cos[q]:.4f}/{ham[q]} bits {paths[i[q]]} ~ {paths[j[q]]}" for q in np.nonzero(added)[0])
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--show", type=int, default=12)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", "Palette images with Transparency")

    images = load_images(args.root)
    pix = [hashlib.sha256(img.convert("RGBA").tobytes() + repr(img.size).encode()).hexdigest() for _, img in images]
    e_all, var_all, rate, diff = embed_all(args, images)
    cfg = SemanticDedupConfig()
    print(
        f"{len(images)} real PNG/JPEG images > 256x256 px; EfficientNet-lite0 embedding {rate:.1f} images/s "
        f"incl. decode+resize ({args.threads} threads, batch {cfg.batch_size}); re-embedding max |diff| {diff:.1e}"
    )

    first = sorted({p: k for k, p in reversed(list(enumerate(pix)))}.values())  # one per pixel-distinct image
    n0 = len(first)
    e = e_all[first]
    var = {k: v[first] for k, v in var_all.items()}
    names = [Path(images[k][0]).name for k in first]
    paths = [images[k][0] for k in first]
    area = np.array([images[k][1].width * images[k][1].height for k in first], float)
    print(f"{n0} pixel-distinct images\n")

    for name in EDITS:
        c = np.einsum("ij,ij->i", e, var[name])
        print(
            f"planted {name:<9} n={n0}: min {c.min():.4f}, p1 {pct(c, 1):.4f}, p5 {pct(c, 5):.4f}, "
            f"median {np.median(c):.4f}"
        )
    i, j = np.triu_indices(n0, 1)
    cos = np.einsum("ij,ij->i", e[i], e[j])
    other = np.array([names[a] != names[b] for a, b in zip(i, j)], bool)
    for label, c in (("distinct pairs", cos), ("  other name", cos[other]), ("  same name", cos[~other])):
        print(
            f"{label:<17} n={c.size}: max {c.max():.4f}, p99.9 {pct(c, 99.9):.4f}, p99 {pct(c, 99):.4f}, "
            f"median {np.median(c):.4f}"
        )
    nn = np.full(n0, -1.0)
    np.maximum.at(nn, i[other], cos[other])
    np.maximum.at(nn, j[other], cos[other])
    print(
        f"nearest other-name neighbour n={n0}: max {nn.max():.4f}, p95 {pct(nn, 95):.4f}, "
        f"p90 {pct(nn, 90):.4f}, median {np.median(nn):.4f}"
    )
    for t in (0.93, 0.95, 0.97):
        print(f"  images with an other-name neighbour >= {t}: {int((nn >= t).sum())} ({(nn >= t).mean():.1%})")

    # pHash at its default threshold on the same images and variants
    ht = PhashConfig().threshold  # the pHash stage's default
    h0 = np.array([phash_index.phash64(images[k][1]) for k in first], np.uint64)
    ph_caught, hv_all = {}, {}
    for name in EDITS:
        hv = hv_all[name] = np.array([phash_index.phash64(variants(images[k][1])[name]) for k in first], np.uint64)
        ph_caught[name] = phash_index.hamming(h0, hv) <= ht
    ph_drop, _ = phash_index.near_duplicate_drops(h0, ht, pixels=area, ids=paths)
    print(
        f"\npHash (t = {ht} bits) alone: catches "
        + ", ".join(f"{k} {ph_caught[k].mean():.1%}" for k in EDITS)
        + f"; drops {len(ph_drop)} of the {n0} distinct images"
    )

    all_e = np.concatenate([e] + [var[k] for k in EDITS])
    ids = [f"o{q:04d}" for q in range(n0)] + [f"v{k}{q:04d}" for k in EDITS for q in range(n0)]
    pri = np.concatenate([area + 1e9] + [area] * len(EDITS))  # originals outrank their copies
    print(
        f"\nfull method on {n0} originals + {len(ids) - n0} planted variants (k = ceil(sqrt(n)), n_probe = "
        f"{cfg.n_probe}, probe_margin = {cfg.probe_margin}); 'CNN | pHash' = removed by either:"
    )
    print(
        "| cosine t | "
        + " | ".join(f"{k} CNN (CNN or pHash)" for k in EDITS)
        + " | distinct images dropped: other name / same name only | search s |"
    )
    print("|---" * (len(EDITS) + 3) + "|")
    brute = all_e @ all_e.T
    recall_rows = []
    for t in THRESHOLDS:
        t0 = time.perf_counter()
        drops = find_semantic_duplicates(
            all_e, ids, pri, threshold=t, n_probe=cfg.n_probe, probe_margin=cfg.probe_margin
        )
        ts = time.perf_counter() - t0
        dropped = {d: kp for d, kp, _ in drops}
        cells = []
        for k in EDITS:
            cnn = np.array([f"v{k}{q:04d}" in dropped for q in range(n0)])
            cells.append(f"{cnn.mean():.1%} ({(cnn | ph_caught[k]).mean():.1%})")
        orig = [(d, kp) for d, kp in dropped.items() if d.startswith("o")]
        same = sum(kp.startswith("o") and names[int(d[1:])] == names[int(kp[1:])] for d, kp in orig)
        print(f"| {t:.2f} | " + " | ".join(cells) + f" | {len(orig) - same} / {same} | {ts:.2f} |")
        bi, bj = np.nonzero(np.triu(brute >= t, 1))
        truth = set(zip(bi.tolist(), bj.tolist()))
        rec = []
        for p, m in ((1, 0.0), (2, 0.0), (cfg.n_probe, cfg.probe_margin)):
            a, b, _ = semantic_pairs(all_e, t, n_probe=p, probe_margin=m if p > 1 else 0.0)
            rec.append(len(truth & set(zip(a.tolist(), b.tolist()))))
        recall_rows.append((t, len(truth), rec))
    print("\npair recall of the clustered search vs brute force (same embeddings):")
    print(
        "| cosine t | pairs (brute force) | 1 cluster (SemDeDup) | 2 nearest | default: margin "
        f"{cfg.probe_margin}, at most {cfg.n_probe} |\n|---|---|---|---|---|"
    )
    for t, tot, (r1, r2, r3) in recall_rows:
        print(f"| {t:.2f} | {tot} | {r1 / tot:.1%} | {r2 / tot:.1%} | {r3 / tot:.1%} |")

    corroborated(e, var, h0, hv_all, i, j, cos, other, paths)

    order = np.argsort(-np.where(other, cos, -1), kind="stable")[: args.show]
    print(f"\n{args.show} most similar distinct other-name pairs (cosine, sizes, paths):")
    for q in order:
        a, b = first[i[q]], first[j[q]]
        print(f"  {cos[q]:.4f}  {images[a][1].size} {images[b][1].size}  {images[a][0]}  {images[b][0]}")
    low = np.argsort(np.einsum("ij,ij->i", e, var["bright"]))[:5]
    print(
        "\nlowest brightness-x1.1 cosines: "
        + ", ".join(f"{paths[q]} {float(e[q] @ var['bright'][q]):.3f}" for q in low)
    )
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
