"""Issue 3, benchmark 1: exact pHash near-duplicate index vs faiss IndexBinaryMultiHash.

For each n: n random 64-bit hashes of which 1% are planted near-duplicates of others (1..t bits
flipped). Measures, each in a fresh process (so peak RSS is per method):
  * ours   — ``mella.phash_index.find_pairs`` (single process) and ``find_pairs_distributed`` on a
             local Ray cluster (``--ray-partitions`` tasks; 0 skips);
  * faiss  — ``faiss.IndexBinaryMultiHash(64, nhash, 64 // nhash)`` with ``nflip = t // nhash``
             (exact by the pigeonhole principle) and ``range_search(radius = t + 1)`` (faiss keeps
             distances < radius), self-pairs removed.
Checks: every planted pair found; ours == brute force on a 20k subset (recall and precision 100%);
ours == faiss pair set; Ray == local. Prints a markdown table.

    python tests/benchmarks/bench_phash_index.py                      # 10k, 100k, 1M at t = 6
    python tests/benchmarks/bench_phash_index.py --sizes 10000 --threshold 8 --skip-faiss
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import resource
import time

import numpy as np

SEED = 20250805
SUBSET = 20_000


def make_hashes(n: int, t: int):
    """(hashes uint64 (n,), planted pairs int64 (k, 2)) — deterministic from n, t."""
    rng = np.random.default_rng([SEED, n, t])
    k = n // 100
    base = rng.integers(0, 2**64, size=n - k, dtype=np.uint64)
    src = rng.choice(n - k, k, replace=False)
    near = base[src].copy()
    nbits = rng.integers(1, t + 1, k) if t > 0 else np.zeros(k, int)
    for q in range(k):
        for b in rng.choice(64, nbits[q], replace=False):
            near[q] ^= np.uint64(1 << int(b))
    h = np.concatenate([base, near])
    perm = rng.permutation(n)  # position of old index in the shuffled array
    out = np.empty_like(h)
    out[perm] = h
    planted = np.sort(np.stack([perm[src], perm[np.arange(n - k, n)]], axis=1), axis=1)
    return out, planted


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def job_ours(n: int, t: int):
    from mella.phash_index import choose_num_substrings, find_pairs, num_tables

    h, _ = make_hashes(n, t)
    m = choose_num_substrings(np.unique(h).size, t)
    t0, c0 = time.perf_counter(), time.process_time()
    pairs, _ = find_pairs(h, t)
    return {
        "s": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "pairs": pairs,
        "rss": peak_rss_mib(),
        "info": f"m={m}, tables={num_tables(m, t)}",
    }


def job_ray(n: int, t: int, parts: int):
    import ray

    from mella.phash_index import find_pairs_distributed

    h, _ = make_hashes(n, t)
    ray.init(num_cpus=parts, include_dashboard=False, log_to_driver=False)
    try:
        find_pairs_distributed(h[:1000], t, parts)  # warm the worker pool (import mella in workers)
        t0 = time.perf_counter()
        pairs, _ = find_pairs_distributed(h, t, parts)
        secs = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"s": secs, "pairs": pairs, "rss": peak_rss_mib(), "info": f"{parts} tasks; driver RSS only"}


def job_faiss(n: int, t: int, nhash: int):
    import faiss

    h, _ = make_hashes(n, t)
    codes = h.view(np.uint8).reshape(n, 8)
    t0, c0 = time.perf_counter(), time.process_time()
    index = faiss.IndexBinaryMultiHash(64, nhash, 64 // nhash)
    index.nflip = t // nhash
    index.add(codes)
    lims, _, ids = index.range_search(codes, t + 1)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    q = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    keep = q < ids
    pairs = np.stack([q[keep], ids[keep].astype(np.int64)], axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return {
        "s": secs,
        "cpu": cpu,
        "pairs": pairs,
        "rss": peak_rss_mib(),
        "info": f"nhash={nhash}, b={64 // nhash}, nflip={t // nhash}, {faiss.omp_get_max_threads()} threads",
    }


def run_isolated(fn, *args):
    """Run ``fn(*args)`` in a fresh spawned process; its peak RSS is then its own."""
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(fn, *args).result()


def brute_pairs(h: np.ndarray, t: int) -> set[tuple[int, int]]:
    out = set()
    for i in range(h.size - 1):
        d = np.bitwise_count(h[i] ^ h[i + 1 :])
        out.update((i, i + 1 + int(k)) for k in np.flatnonzero(d <= t))
    return out


def check_subset(h, planted, pairs, t):
    """Ours (full run) restricted to a 20k subset == brute force on that subset."""
    rng = np.random.default_rng(SEED)
    if h.size <= SUBSET:
        sub = np.arange(h.size)
    else:  # 500 planted pairs (both ends) + random others, so the subset has real positives
        chosen = planted[rng.choice(len(planted), min(500, len(planted)), replace=False)].ravel()
        rest = rng.choice(np.setdiff1d(np.arange(h.size), chosen), SUBSET - chosen.size, replace=False)
        sub = np.sort(np.concatenate([chosen, rest]))
    pos = np.full(h.size, -1)
    pos[sub] = np.arange(sub.size)
    inside = (pos[pairs[:, 0]] >= 0) & (pos[pairs[:, 1]] >= 0)
    ours = {(int(a), int(b)) for a, b in pos[pairs[inside]]}
    truth = brute_pairs(h[sub], t)
    recall = len(ours & truth) / max(1, len(truth))
    precision = len(ours & truth) / max(1, len(ours))
    return len(truth), recall, precision


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--threshold", type=int, default=6)
    ap.add_argument("--nhash", type=int, default=4, help="faiss substrings (b = 64 / nhash)")
    ap.add_argument("--ray-partitions", type=int, default=2, help="Ray tasks for the distributed run; 0 skips")
    ap.add_argument("--skip-faiss", action="store_true")
    args = ap.parse_args()
    t = args.threshold
    rows, prev = [], None
    all_ok = True
    for n in args.sizes:
        h, planted = make_hashes(n, t)
        ours = run_isolated(job_ours, n, t)
        pairs = ours["pairs"]
        got = {(int(a), int(b)) for a, b in pairs}
        planted_found = all((int(a), int(b)) in got for a, b in planted)
        n_truth, recall, precision = check_subset(h, planted, pairs, t)
        growth = f"{ours['s'] / prev[1]:.1f}x time for {n / prev[0]:.0f}x n" if prev else "-"
        prev = (n, ours["s"])
        ok = planted_found and recall == 1.0 and precision == 1.0
        print(
            f"n={n:,}: ours {ours['s']:.2f} s wall, {ours['cpu']:.2f} s CPU ({ours['info']}), "
            f"{len(pairs):,} pairs, planted "
            f"{len(planted):,} all found={planted_found}; brute-force subset {n_truth} pairs, "
            f"recall {recall:.0%} precision {precision:.0%}; growth {growth}; peak RSS {ours['rss']:.0f} MiB",
            flush=True,
        )
        row = {
            "n": n,
            "ours_s": ours["s"],
            "ours_cpu": ours["cpu"],
            "pairs": len(pairs),
            "recall": recall,
            "ours_rss": ours["rss"],
            "growth": growth,
        }
        if args.ray_partitions:
            ray_res = run_isolated(job_ray, n, t, args.ray_partitions)
            same = np.array_equal(ray_res["pairs"], pairs)
            ok &= same
            print(
                f"  ray {ray_res['s']:.2f} s ({ray_res['info']}), identical to local: {same}; "
                f"driver peak RSS {ray_res['rss']:.0f} MiB",
                flush=True,
            )
            row.update(ray_s=ray_res["s"], ray_same=same)
        if not args.skip_faiss:
            fa = run_isolated(job_faiss, n, t, args.nhash)
            same = np.array_equal(fa["pairs"], pairs)
            ok &= same
            print(
                f"  faiss {fa['s']:.2f} s wall, {fa['cpu']:.2f} s CPU ({fa['info']}), {len(fa['pairs']):,} pairs, "
                f"identical pair set: "
                f"{same}; speed-up ours/faiss {fa['s'] / ours['s']:.1f}x; peak RSS {fa['rss']:.0f} MiB",
                flush=True,
            )
            row.update(faiss_s=fa["s"], faiss_cpu=fa["cpu"], faiss_same=same, faiss_rss=fa["rss"])
        all_ok &= ok
        rows.append(row)
    print(f"\nthreshold {t}; 1% planted near-duplicates; machine: {mp.cpu_count()} CPUs\n")
    print(
        "| n | ours wall (CPU) s | growth | Ray 2 tasks (s) | faiss MultiHash wall (CPU) s | faiss / ours wall "
        "| pairs | same as faiss | recall vs brute force (20k) | peak RSS ours / faiss (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fs = r.get("faiss_s")
        cells = [
            f"{r['n']:,}",
            f"{r['ours_s']:.2f} ({r['ours_cpu']:.2f})",
            r["growth"],
            f"{r['ray_s']:.2f}" if "ray_s" in r else "-",
            f"{fs:.2f} ({r['faiss_cpu']:.2f})" if fs else "-",
            f"{fs / r['ours_s']:.1f}x" if fs else "-",
            f"{r['pairs']:,}",
            str(r.get("faiss_same", "-")),
            f"{r['recall']:.0%}",
            f"{r['ours_rss']:.0f} / " + (f"{r['faiss_rss']:.0f}" if fs else "-"),
        ]
        print("| " + " | ".join(cells) + " |")
    print("\nALL CHECKS PASSED" if all_ok else "\nCHECK FAILED")
    if not all_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
