"""pHash near-duplicates: 64-bit perceptual hashes and an exact, sub-quadratic Hamming-distance index.

Paper appendix B.2 removes near-duplicate images by perceptual hash (pHash, Zauner 2010). Two images
are near-duplicates when the Hamming distance of their 64-bit pHashes is <= ``threshold`` bits.

**Index (all pairs within distance t, exact).** Brute force is O(n^2). We use the *generalised
pigeonhole* form of multi-index hashing (Norouzi, Punjani, Fleet, CVPR 2012, sec. 3) in the
table layout of Manku, Jain, Das Sarma, "Detecting near-duplicates for web crawling" (WWW 2007,
sec. 3.1):

    Split the 64 bit positions into m disjoint substrings S_0..S_{m-1} (substring k = bit
    positions {k, k+m, k+2m, ...}; interleaved so correlated neighbouring DCT bits are spread).
    Let s = m - t >= 1 and build one table per s-subset C of {0..m-1} (C(m, s) tables); a pair
    is a *candidate* in table C when it agrees exactly on every substring in C.

    Claim: every pair (h, g) with d(h, g) <= t is found, in exactly one table.
    Proof: each substring on which h and g differ contains at least one of the d <= t differing
    bits, and the substrings are disjoint, so at most t substrings differ and at least m - t = s
    agree. Let C* be the s lowest-numbered agreeing substrings; the pair is a candidate in C*.
    We emit a candidate found in table C only if (1) popcount(h ^ g) <= t, (2) it really agrees on
    every substring of C (guards against hash collisions of the table key), and (3) it differs on
    every substring numbered below max(C) that is not in C, i.e. C == C*. (3) holds for exactly one
    table per pair, so the union over tables has no duplicates and nothing is missed. Candidates
    are verified exactly, so there are no false positives.                                     QED

A table is one ``np.sort`` of ``key << idx_bits | idx`` (key = a multiplicative hash of
``h & mask(C)``), so equal keys form runs with ascending indices; runs are enumerated by offset
(position p vs p + 1, p + 2, ...) which bounds the working memory of a big bucket to O(n) per step.
With uniformly random hashes a table holds about n^2 / 2^(bits + 1) chance candidates for a key of
``bits`` = 64 s / m bits; :func:`choose_num_substrings` picks m by a cost model (sort cost x
tables + verify cost x candidates); e.g. t = 6 at 1M hashes gives m = 9: 84 tables of ~21-bit
keys. Identical hashes are collapsed first (exact duplicates would otherwise make every table
quadratic) and expanded at the end.

**Why our own code.** faiss's ``IndexBinaryMultiHash`` is the library alternative: it implements
Norouzi's *probing* variant (nhash substrings, every neighbour within ``nflip`` bits of each query
substring is probed, one query at a time). Exact for t requires nflip = floor(t / nhash); at 1M
hashes, t = 6 (nhash 4, b 16, nflip 1) it took 186 s on 2 cores and did not finish in 15 min at
t = 8 (issue 3). The all-pairs self-join above needs no probing, only sorts: in
``tests/benchmarks/bench_phash_index.py`` it returns the identical pair set at 1M hashes, t = 6 in
~3 s (faiss: 186-560 s on the same 2-core box). A BK-tree is exact too, but it is per-query pointer
chasing in Python.

**Default threshold.** ``DEFAULT_THRESHOLD`` = 6 bits, measured on the 395 real PNG/JPEG images
> 256 px of ``shared/miniweb`` (``tests/benchmarks/measure_phash_threshold.py``): the smallest
threshold that catches every JPEG q70 re-encode (max distance 4) and every 90% resize (max 6);
it also catches 93% of x1.1 brightness changes and 65% of 2% crops, which are left to CNN
semantic dedup, the fine-grained step of paper B.2. imagehash thresholds 64 DCT values at their
median, so hashes have 32 ones and distances are even: an odd t acts like t - 1.

**Removal.** :func:`near_duplicate_drops` keeps, greedily in priority order (largest width x
height, then smallest id, then earliest index), every image that has no *kept* near-duplicate of
higher priority (the one rule of :mod:`mella.survivor`, shared with the build's dedup stages). Connected components were rejected: chaining A~B~C drops C although d(A, C) may
be 2t, so distinct images are lost as density grows. Greedy-by-priority guarantees (1) no two
survivors are within t, (2) every dropped image has a kept image within t of higher priority
(reported as ``kept_by``), (3) the result depends only on the global pair set and the priorities,
not on shards, partitions or input order (given distinct ids).

**Scale-out.** Tables are independent and their outputs disjoint (proof above), so
:func:`find_pairs_distributed` runs groups of tables as Ray tasks over one shared (zero-copy)
object-store copy of the unique hashes and concatenates; memory per node is 8 bytes per unique hash.
The build's stage (:mod:`mella.stages.dedup.phash`) instead shuffles one band row per (image, table) with
Ray Data and searches each bucket with the same :func:`pairs_in_runs`, so both find the same pairs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from mella import survivor

#: Hamming distance (bits) at or below which two pHashes are near-duplicates (module docstring).
DEFAULT_THRESHOLD = 6
_U64 = np.uint64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Knuth multiplicative hashing constant (2^64 / phi, odd)
# Cost model constants (seconds per element), measured on the 2-core dev box with numpy 2.4:
# one table = key hash + np.sort of n uint64 (~25 ns/hash); one candidate verify ~40 ns.
_SORT_S_PER_HASH = 25e-9
_VERIFY_S_PER_CAND = 40e-9


# ----------------------------------------------------------------------------------------- pHash


def phash64(image) -> int:
    """64-bit pHash of a PIL image as an unsigned int in [0, 2^64).

    Uses ``imagehash.phash`` (hash_size 8: 32x32 greyscale, 2-D DCT, 8x8 low frequencies
    thresholded at their median; Zauner 2010 / hackerfactor "Looks like it"). The bit order is
    imagehash's (row-major, first coefficient = most significant bit), so ``hash_to_hex`` of the
    result equals ``str(imagehash.phash(image))``.

    Raises:
        TypeError: ``image`` is not a ``PIL.Image.Image``.
    """
    import imagehash
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"phash64 needs a PIL.Image.Image, got {type(image).__name__}")
    return int(str(imagehash.phash(image, hash_size=8)), 16)


def hash_to_hex(h: int) -> str:
    """64-bit hash → 16 lower-case hex chars (the ``phash`` column of ``mella.schema``).

    Raises:
        ValueError: ``h`` is outside [0, 2^64).
    """
    h = int(h)
    if not 0 <= h < 1 << 64:
        raise ValueError(f"not a 64-bit unsigned hash: {h}")
    return f"{h:016x}"


def hex_to_hash(text: str) -> int:
    """16 hex chars → int in [0, 2^64). Raises ValueError on any other string."""
    if not isinstance(text, str) or len(text) != 16:
        raise ValueError(f"pHash hex must be 16 hex chars, got {text!r}")
    try:
        return int(text, 16)
    except ValueError:
        raise ValueError(f"pHash hex must be 16 hex chars, got {text!r}") from None


def hashes_from_hex(texts: Sequence[str]) -> np.ndarray:
    """Sequence of 16-char hex pHashes → ``np.ndarray`` shape (n,), dtype uint64."""
    return np.fromiter((hex_to_hash(t) for t in texts), dtype=_U64, count=len(texts))


def hashes_to_hex(hashes: np.ndarray) -> list[str]:
    """``np.ndarray`` (n,) uint64 → list of 16-char hex strings."""
    return [f"{int(h):016x}" for h in _as_hashes(hashes)]


# ------------------------------------------------------------------------------------ primitives


def _as_hashes(hashes) -> np.ndarray:
    """Validate and view input as a contiguous 1-D uint64 array (int64 is reinterpreted bitwise)."""
    if not isinstance(hashes, np.ndarray):  # python ints: numpy would turn ints >= 2^63 into float64
        seq = list(hashes)
        if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in seq):
            raise TypeError("hashes must be 64-bit integers")
        if any(not 0 <= int(x) < 1 << 64 for x in seq):
            raise ValueError("hash outside [0, 2^64)")
        return np.fromiter((int(x) for x in seq), dtype=_U64, count=len(seq))
    arr = hashes
    if arr.ndim != 1:
        raise ValueError(f"hashes must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(_U64)
    if arr.dtype == np.int64:
        arr = arr.view(_U64)
    elif arr.dtype.kind == "u":
        arr = arr.astype(_U64)
    elif arr.dtype.kind == "i":
        if arr.min() < 0:
            raise ValueError("negative hash in a narrower-than-64-bit signed array")
        arr = arr.astype(_U64)
    else:
        raise TypeError(f"hashes must be 64-bit integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _check_threshold(threshold) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)):
        raise TypeError(f"threshold must be an int (bits), got {threshold!r}")
    if not 0 <= threshold <= 63:
        raise ValueError(f"threshold must be in [0, 63] bits, got {threshold}")
    return int(threshold)


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64_lut(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 via a byte lookup table (numpy < 2.0 has no ``np.bitwise_count``)."""
    x = np.ascontiguousarray(x, dtype=_U64)
    return _POP8[x.view(np.uint8)].reshape(x.shape + (8,)).sum(-1, dtype=np.uint8)


#: Number of set bits of each uint64 → uint8 array of the same shape.
popcount64 = getattr(np, "bitwise_count", _popcount64_lut)


def hamming(a, b) -> np.ndarray:
    """Element-wise Hamming distance (bits, uint8 array) of two broadcastable hash arrays or ints."""

    def vec(x):
        return _as_hashes([x] if isinstance(x, (int, np.integer)) else x)

    return popcount64(np.bitwise_xor(vec(a), vec(b)))


def _substring_masks(m: int) -> list[np.uint64]:
    """Bit masks of the m interleaved substrings: substring k holds bit positions k, k+m, ..."""
    return [_U64(sum(1 << p for p in range(k, 64, m))) for k in range(m)]


def num_tables(m: int, threshold: int) -> int:
    """Tables the index builds for m substrings at threshold t: C(m, m - t)."""
    return math.comb(m, m - threshold)


def choose_num_substrings(n: int, threshold: int) -> int:
    """Pick m in (t, 64] minimising the modelled cost for n unique uniformly random hashes.

    cost(m) = C(m, s) * (n * sort_cost + n^2 / 2^(bits + 1) * verify_cost), s = m - t, where bits =
    min(64 s / m, key bits left after the index) is the table key length. Real pHashes are not
    uniform, so this is a starting point; pass ``num_substrings`` to override.
    """
    t = _check_threshold(threshold)
    idx_bits = max(1, int(n - 1).bit_length())
    best, best_cost = t + 1, math.inf
    for m in range(t + 1, 65):
        s = m - t
        tables = math.comb(m, s)
        if tables > 100_000:
            break
        bits = min(64 * s / m, 64 - idx_bits)
        cost = tables * (n * _SORT_S_PER_HASH + n * n / 2 ** (bits + 1) * _VERIFY_S_PER_CAND)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


# ---------------------------------------------------------------------------------------- index


def table_masks(m: int, threshold: int) -> list[tuple[np.uint64, list[np.uint64]]]:
    """The multi-index tables for m substrings at ``threshold``, by table id (module docstring).

    Table id k is the k-th s-subset C of {0..m-1} (s = m - threshold) in ``itertools.combinations`` order.
    Returns, per table: (uint64 mask of C's bit positions, uint64 masks of the substrings numbered below
    max(C) that are not in C: a pair must differ on each of them to be emitted by this table).
    """
    subs = _substring_masks(m)
    out = []
    for combo in itertools.combinations(range(m), m - threshold):
        mask = _U64(0)
        for k in combo:
            mask |= subs[k]
        out.append((mask, [subs[k] for k in range(combo[-1]) if k not in combo]))
    return out


def _emitted_by(x: np.ndarray, table, tables) -> np.ndarray:
    """bool (k,): pairs with XOR ``x`` (uint64 (k,)) that table ``table`` (an int, or int (k,) per pair) emits:
    they agree on every substring of C (guards against key-hash collisions) and C is their first s agreeing
    substrings, so each pair is emitted by exactly one table."""
    if np.ndim(table) == 0:
        mask, earlier = tables[int(table)]
        ok = (x & mask) == 0
        for e in earlier:
            ok &= (x & e) != 0
        return ok
    ok = np.zeros(x.size, bool)
    for k in np.unique(table):
        sel = table == k
        ok[sel] = _emitted_by(x[sel], k, tables)
    return ok


def pairs_in_runs(run: np.ndarray, rows: np.ndarray, h: np.ndarray, table, tables, threshold: int):
    """Pairs within ``threshold`` bits among the candidates of the multi-index: rows in one run of equal ``run``.

    The one pair search of the index (:func:`find_pairs`) and of the build's distributed stage
    (:mod:`mella.stages.dedup.phash`). Runs are enumerated by offset (position p vs p + 1, p + 2, ...), so the
    working memory of a big run stays O(n) per step; candidates are verified exactly and emitted only by
    their first agreeing table (module docstring), so there are no false positives and no repeats.

    Args:
        run: (n,) run keys in sorted order (any dtype): equal values are adjacent; one run = one table's bucket.
        rows: int64 (n,), the row (index into ``h``) at each sorted position.
        h: uint64 (N,), the hashes, indexed by row.
        table: the table id of every row: an int, or int (N,) indexed by row when tables are mixed.
        tables: :func:`table_masks` of (m, ``threshold``).
        threshold: maximum Hamming distance in bits.

    Returns:
        (i int64 (k,), j int64 (k,), distance uint8 (k,)): the rows of each pair; i comes first in the run.
    """
    n = run.size
    p = np.flatnonzero(run[1:] == run[:-1])
    out_i, out_j, out_d = [], [], []
    d = 1
    while p.size:
        i, j = rows[p], rows[p + d]
        x = h[i] ^ h[j]
        dist = popcount64(x)
        ok = dist <= threshold
        if ok.any():
            i, j, x, dist = i[ok], j[ok], x[ok], dist[ok]
            ok = _emitted_by(x, table if np.ndim(table) == 0 else table[i], tables)
            out_i.append(i[ok])
            out_j.append(j[ok])
            out_d.append(dist[ok])
        d += 1
        p = p[p + d < n]
        p = p[run[p + d] == run[p]]
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _pairs_in_tables(uniq: np.ndarray, threshold: int, m: int, table_ids: Sequence[int]):
    """Pairs (i < j) of *distinct* hashes in ``uniq`` within ``threshold``, from the given tables.

    Returns (i int64 (k,), j int64 (k,), distance uint8 (k,)); each pair comes from exactly one
    table of the full set (module docstring), so results of disjoint table sets can be concatenated.
    """
    n = uniq.size
    tables = table_masks(m, threshold)
    idx_bits = max(1, int(n - 1).bit_length())
    if idx_bits > 32:
        raise ValueError(f"too many hashes for one index: {n}")
    shift = _U64(idx_bits)
    low = _U64((1 << idx_bits) - 1)
    positions = np.arange(n, dtype=_U64)
    out_i, out_j, out_d = [], [], []
    for tid in table_ids:
        # key hash: top (64 - idx_bits) bits of (h & mask) * golden; the index fills the low bits, so equal
        # keys form runs with ascending indices
        packed = np.sort(((uniq & tables[tid][0]) * _GOLDEN) >> shift << shift | positions)
        i, j, dist = pairs_in_runs(packed >> shift, (packed & low).astype(np.int64), uniq, tid, tables, threshold)
        out_i.append(i)
        out_j.append(j)
        out_d.append(dist)
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint8)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _unique(hashes: np.ndarray):
    """Distinct hashes (sorted), inverse map, counts."""
    return np.unique(hashes, return_inverse=True, return_counts=True)


def _expand(inverse: np.ndarray, counts: np.ndarray, ui, uj, ud):
    """Unique-level pairs → all pairs of original indices, sorted by (i, j).

    Adds the distance-0 pairs among copies of one hash. Output size is the true number of pairs
    (quadratic in the number of copies of a repeated hash, by definition of "every pair").
    """
    members = np.argsort(inverse, kind="stable")  # original indices grouped by unique hash
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rep = np.flatnonzero(counts > 1)
    # copies of one hash pair with each other (distance 0), handled as unique pairs (u, u)
    ai = np.concatenate((ui, rep)).astype(np.int64)
    aj = np.concatenate((uj, rep)).astype(np.int64)
    ad = np.concatenate((ud, np.zeros(rep.size, np.uint8)))
    ca, cb = counts[ai], counts[aj]
    sizes = ca * cb
    q = np.repeat(np.arange(ai.size), sizes)
    r = np.arange(q.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    i = members[starts[ai[q]] + r // cb[q]]
    j = members[starts[aj[q]] + r % cb[q]]
    keep = i != j
    same = ai[q] == aj[q]
    keep &= ~same | (i < j)  # within one hash: each unordered pair once
    i, j, dist = i[keep], j[keep], ad[q][keep]
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    o = np.lexsort((hi, lo))
    return np.stack((lo[o], hi[o]), axis=1).astype(np.int64), dist[o]


def _unique_pairs_local(uniq: np.ndarray, threshold: int, num_substrings: int | None):
    m = num_substrings or choose_num_substrings(uniq.size, threshold)
    _check_m(m, threshold)
    return _pairs_in_tables(uniq, threshold, m, range(num_tables(m, threshold)))


def _check_m(m: int, threshold: int) -> None:
    if not threshold < m <= 64:
        raise ValueError(f"num_substrings must be in (threshold, 64], got {m} for threshold {threshold}")


def find_pairs(hashes, threshold: int, *, num_substrings: int | None = None):
    """Every pair of hashes within Hamming distance <= ``threshold`` (exact, single process).

    Args:
        hashes: array-like (n,) of 64-bit hashes (uint64, int64 bit pattern, or python ints).
        threshold: maximum Hamming distance in bits, 0..63.
        num_substrings: m of the multi-index (default: :func:`choose_num_substrings`).

    Returns:
        (pairs, distances): pairs int64 array (n_pairs, 2) of indices into ``hashes`` with
        i < j, sorted by (i, j); distances uint8 (n_pairs,) in bits.

    Raises:
        TypeError / ValueError: non-integer hashes, not 1-D, or threshold / m out of range.
    """
    t = _check_threshold(threshold)
    h = _as_hashes(hashes)
    uniq, inverse, counts = _unique(h)
    return _expand(inverse, counts, *_unique_pairs_local(uniq, t, num_substrings))


def _unique_pairs_distributed(uniq: np.ndarray, threshold: int, num_partitions: int, num_substrings):
    import ray

    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    m = num_substrings or choose_num_substrings(uniq.size, threshold)
    _check_m(m, threshold)
    tables = list(range(num_tables(m, threshold)))
    parts = [tables[k::num_partitions] for k in range(min(num_partitions, len(tables)))]
    task = ray.remote(num_cpus=1)(_pairs_in_tables)
    ref = ray.put(uniq)
    results = ray.get([task.remote(ref, threshold, m, part) for part in parts])
    return tuple(np.concatenate(cols) for cols in zip(*results))


def find_pairs_distributed(hashes, threshold: int, num_partitions: int, *, num_substrings: int | None = None):
    """Same result as :func:`find_pairs`, with the tables split over ``num_partitions`` Ray tasks.

    Each task gets the unique hashes from the object store (one zero-copy copy per node) and
    builds ``tables[k::num_partitions]``; the tables' outputs are disjoint (module docstring), so
    the driver concatenates, expands identical hashes and sorts. Uses the current Ray cluster
    (``ray.init`` is called by Ray with defaults if it is not initialised).

    Returns / Raises: as :func:`find_pairs`; ValueError if ``num_partitions`` < 1.
    """
    t = _check_threshold(threshold)
    h = _as_hashes(hashes)
    uniq, inverse, counts = _unique(h)
    return _expand(inverse, counts, *_unique_pairs_distributed(uniq, t, num_partitions, num_substrings))


# -------------------------------------------------------------------------------------- removal


def _priority_order(n: int, pixels, ids) -> np.ndarray:
    """Indices sorted best first: larger pixels, then smaller id (lexicographic), then index."""
    keys = [np.arange(n)]
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
        keys.append(np.unique(ids, return_inverse=True)[1].reshape(n))
    if pixels is not None:
        pixels = np.asarray(pixels, dtype=np.int64)
        if pixels.shape != (n,):
            raise ValueError(f"pixels must have shape ({n},), got {pixels.shape}")
        keys.append(-pixels)
    return np.lexsort(keys)


def near_duplicate_drops(
    hashes,
    threshold: int,
    *,
    pixels=None,
    ids=None,
    num_partitions: int | None = None,
    num_substrings: int | None = None,
):
    """Global, deterministic pHash near-duplicate removal (greedy by priority, module docstring), in one process.

    Not what build_corpus runs: the build uses the distributed stage
    :class:`mella.stages.dedup.phash.PhashDedupStage` (pairs found in Ray tasks over every work unit's
    Parquet parts, the survivor rule applied by :func:`mella.stages.dedup.near_dup.drops_from_pairs`).
    This is the single-process, in-memory form of the same method, for measurement scripts
    (``tests/benchmarks/measure_phash_threshold.py``) and tests; both apply the one survivor rule of
    :func:`mella.survivor.greedy_drops`, so they drop the same images for the same priorities.

    Args:
        hashes: array-like (n,) of 64-bit pHashes.
        threshold: Hamming distance (bits) at or below which two images are near-duplicates.
        pixels: optional (n,) ints, width * height; larger survives first.
        ids: optional (n,) strings or ints (e.g. the record ``id``); smaller survives first among
            equal pixels. Remaining ties go to the smaller index.
        num_partitions: if given, find pairs with Ray (:func:`find_pairs_distributed`).
        num_substrings: m of the index (default chosen by cost model).

    Returns:
        (drop, kept_by): int64 arrays (k,), ``drop`` sorted ascending = indices to remove;
        ``kept_by[x]`` = the highest-priority survivor within ``threshold`` of ``drop[x]``.

    Copies of one hash are reduced to their best copy before the greedy pass (the others are
    dropped by it or by the survivor that drops it), which gives the same result as greedy on the
    expanded pair set without materialising its quadratic pairs.
    """
    t = _check_threshold(threshold)
    h = _as_hashes(hashes)
    n = h.size
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = _priority_order(n, pixels, ids)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    uniq, inverse, _ = _unique(h)
    inverse = inverse.reshape(n)
    # representative of each unique hash = its best-ranked copy
    best_rank = np.full(uniq.size, n, np.int64)
    np.minimum.at(best_rank, inverse, rank)
    rep = order[best_rank]  # original index of each unique hash's best copy
    if num_partitions is None:
        ui, uj, _ = _unique_pairs_local(uniq, t, num_substrings)
    else:
        ui, uj, _ = _unique_pairs_distributed(uniq, t, num_partitions, num_substrings)
    dropped = survivor.greedy_drops(ui, uj, np.zeros(len(ui)), rank=best_rank)
    dropped_by = np.full(uniq.size, -1, np.int64)  # unique index of the survivor that drops it
    if dropped:
        dropped_by[np.fromiter(dropped, np.int64)] = [s for s, _ in dropped.values()]
    # original rows: a copy that is not its hash's representative is dropped by whoever keeps/drops it
    u_survivor = np.where(dropped_by >= 0, dropped_by, np.arange(uniq.size))
    kept_by_all = rep[u_survivor[inverse]]
    drop = np.flatnonzero(kept_by_all != np.arange(n))
    return drop.astype(np.int64), kept_by_all[drop].astype(np.int64)
