"""pHash index: exactness vs brute force, edge cases, Ray scale-out, deterministic survivors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from mella import phash_index as pi
from mella.stages.dedup.phash import _bands, _bucket_pairs

THRESHOLDS = [0, 4, 6, 8, 10]


def brute_pairs(h: np.ndarray, t: int) -> list[tuple[int, int, int]]:
    out = []
    for i in range(h.size - 1):
        d = pi._popcount64_lut(h[i] ^ h[i + 1 :])  # independent popcount path
        for k in np.flatnonzero(d <= t):
            out.append((i, i + 1 + int(k), int(d[k])))
    return out


def as_list(pairs, dist) -> list[tuple[int, int, int]]:
    return [(int(i), int(j), int(d)) for (i, j), d in zip(pairs, dist)]


def planted(n: int, t: int, seed: int, frac: float = 0.1) -> np.ndarray:
    """n random hashes + frac*n copies of random ones with 0..t bits flipped + 5 exact repeats."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    k = int(n * frac)
    near = h[rng.integers(0, n, k)].copy()
    for q in range(k):
        for b in rng.choice(64, rng.integers(0, t + 1), replace=False):
            near[q] ^= np.uint64(1 << int(b))
    out = np.concatenate([h, near, h[:5]])
    return out[rng.permutation(out.size)]


# ----------------------------------------------------------------------------- hashes and hex


def test_phash64_matches_imagehash_and_hex_roundtrip():
    import imagehash

    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((300, 280, 3)) * 255).astype("uint8"))
    h = pi.phash64(img)
    assert 0 <= h < 2**64
    assert pi.hash_to_hex(h) == str(imagehash.phash(img))
    assert pi.hex_to_hash(pi.hash_to_hex(h)) == h
    # our Hamming distance == imagehash's on a modified copy
    img2 = img.resize((252, 270))
    assert int(pi.hamming(h, pi.phash64(img2))[0]) == imagehash.phash(img) - imagehash.phash(img2)
    arr = pi.hashes_from_hex(["0000000000000000", "ffffffffffffffff", pi.hash_to_hex(h)])
    assert arr.dtype == np.uint64 and arr.tolist() == [0, 2**64 - 1, h]
    assert pi.hashes_to_hex(arr)[1] == "ffffffffffffffff"


@pytest.mark.parametrize("bad", ["abc", "zzzzzzzzzzzzzzzz", "0" * 17, None])
def test_hex_rejects_bad_strings(bad):
    with pytest.raises(ValueError):
        pi.hex_to_hash(bad)


def test_input_validation():
    with pytest.raises(TypeError):
        pi.phash64(np.zeros((8, 8)))
    with pytest.raises(ValueError):
        pi.hash_to_hex(-1)
    with pytest.raises(ValueError):
        pi.find_pairs(np.zeros((2, 2), np.uint64), 4)
    with pytest.raises(TypeError):
        pi.find_pairs(np.zeros(3, np.float64), 4)
    with pytest.raises(ValueError):
        pi.find_pairs(np.zeros(3, np.uint64), 64)
    with pytest.raises(TypeError):
        pi.find_pairs(np.zeros(3, np.uint64), 4.0)
    with pytest.raises(ValueError):
        pi.find_pairs(np.zeros(3, np.uint64), 4, num_substrings=4)  # m must exceed t


def test_popcount_paths_agree():
    x = np.random.default_rng(3).integers(0, 2**64, size=1000, dtype=np.uint64)
    x[:2] = [0, 2**64 - 1]
    want = [bin(int(v)).count("1") for v in x]
    assert pi._popcount64_lut(x).tolist() == want
    assert pi.popcount64(x).tolist() == want


# ----------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("t", THRESHOLDS)
def test_exact_vs_brute_force(t):
    h = planted(2500, t, seed=t)
    want = brute_pairs(h, t)
    assert len(want) > 250  # the planted pairs are there (test cannot pass vacuously)
    default_m = pi.choose_num_substrings(np.unique(h).size, t)
    for m in sorted({t + 1, default_m, min(64, t + 4)}):
        got = as_list(*pi.find_pairs(h, t, num_substrings=m))
        assert got == want, f"t={t} m={m}"


def test_boundary_distances_exact():
    """Pairs at exactly t are found, at t + 1 are not, for bits flipped anywhere."""
    rng = np.random.default_rng(7)
    for t in THRESHOLDS:
        base = rng.integers(0, 2**64, size=200, dtype=np.uint64)
        at_t, over = base.copy(), base.copy()
        for q in range(base.size):
            bits = rng.choice(64, t + 1, replace=False)
            for b in bits[:t]:
                at_t[q] ^= np.uint64(1 << int(b))
            over[q] = at_t[q] ^ np.uint64(1 << int(bits[t]))
        h = np.concatenate([base, at_t, over])
        pairs, dist = pi.find_pairs(h, t)
        got = {(int(i), int(j)) for i, j in pairs}
        n = base.size
        assert all((q, q + n) in got for q in range(n))
        assert not any((q, q + 2 * n) in got for q in range(n))
        assert set(as_list(pairs, dist)) == set(brute_pairs(h, t))


def test_edge_cases():
    for t in (0, 6):
        p, d = pi.find_pairs(np.array([], np.uint64), t)
        assert p.shape == (0, 2) and p.dtype == np.int64 and d.shape == (0,)
        p, d = pi.find_pairs(np.array([5], np.uint64), t)
        assert p.shape == (0, 2)
    # all equal: every pair, distance 0
    p, d = pi.find_pairs(np.full(40, 0xDEADBEEF, np.uint64), 6)
    assert len(p) == 40 * 39 // 2 and not d.any()
    assert (p[:, 0] < p[:, 1]).all()
    # int64 bit patterns (negative) and python ints above 2^63 mean the same hashes
    h = np.array([2**63 + 1, 2**63 + 3, 7], dtype=np.uint64)
    a = as_list(*pi.find_pairs(h.view(np.int64), 1))
    b = as_list(*pi.find_pairs([2**63 + 1, 2**63 + 3, 7], 1))
    assert a == b == [(0, 1, 1)]


# ------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():  # another module's Ray: start ours with our settings
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("t", [0, 6, 10])
def test_distributed_equals_local(ray_local, t):
    h = planted(3000, t, seed=100 + t)
    want_p, want_d = pi.find_pairs(h, t)
    for parts in (1, 3, 1000):  # 1000 > number of tables: one task per table
        got_p, got_d = pi.find_pairs_distributed(h, t, parts)
        assert np.array_equal(got_p, want_p) and np.array_equal(got_d, want_d)
    assert len(want_p) > 300
    with pytest.raises(ValueError):
        pi.find_pairs_distributed(h, t, 0)
    # removal on Ray == removal locally
    ids = [f"id{k:05d}" for k in range(h.size)]
    local = pi.near_duplicate_drops(h, t, ids=ids)
    dist = pi.near_duplicate_drops(h, t, ids=ids, num_partitions=2)
    assert all(np.array_equal(a, b) for a, b in zip(local, dist))


# -------------------------------------------------------------------------------- survivors


def naive_greedy(h, t, pixels, ids):
    """Reference: greedy by priority over the expanded brute-force pair set."""
    n = h.size
    order = sorted(range(n), key=lambda k: (-pixels[k], ids[k], k))
    adj = {k: set() for k in range(n)}
    for i, j, _ in brute_pairs(h, t):
        adj[i].add(j)
        adj[j].add(i)
    kept, kept_by = [], {}
    for v in order:
        better_kept = [u for u in kept if u in adj[v]]
        if better_kept:
            kept_by[v] = better_kept[0]  # kept is in priority order
        else:
            kept.append(v)
    return kept_by


@pytest.mark.parametrize("t", [0, 6, 10])
def test_survivors_match_reference_and_invariants(t):
    rng = np.random.default_rng(50 + t)
    h = planted(600, t, seed=50 + t, frac=0.4)
    pixels = rng.integers(1, 4, h.size) * 100_000  # many ties on pixels → ids decide
    ids = [f"{rng.integers(0, 10**9):09d}-{k}" for k in range(h.size)]
    drop, kept_by = pi.near_duplicate_drops(h, t, pixels=pixels, ids=ids)
    ref = naive_greedy(h, t, pixels, ids)
    assert drop.tolist() == sorted(ref) and kept_by.tolist() == [ref[d] for d in sorted(ref)]
    assert len(drop) > 50
    keep = np.setdiff1d(np.arange(h.size), drop)
    assert not len(pi.find_pairs(h[keep], t)[0])  # no two survivors within t
    assert (pi.hamming(h[drop], h[kept_by]) <= t).all()
    assert np.isin(kept_by, keep).all()


def test_survivors_deterministic_under_permutation():
    t = 6
    h = planted(2000, t, seed=9, frac=0.3)
    rng = np.random.default_rng(9)
    pixels = rng.integers(1, 3, h.size) * 1000
    ids = np.array([f"rec{k:06d}" for k in range(h.size)])
    drop, _ = pi.near_duplicate_drops(h, t, pixels=pixels, ids=ids)
    survivors = set(ids) - set(ids[drop])
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(h.size)
        d2, _ = pi.near_duplicate_drops(h[perm], t, pixels=pixels[perm], ids=ids[perm])
        assert set(ids[perm]) - set(ids[perm][d2]) == survivors


def test_larger_image_survives_then_smaller_id():
    h = np.array([10, 10 ^ 0b11, 10 ^ 0b111, 0xFFFF << 48], np.uint64)
    drop, kept_by = pi.near_duplicate_drops(h, 3, pixels=[100, 400, 400, 1], ids=["d", "c", "b", "a"])
    # 1 and 2 tie on pixels, "b" < "c" → index 2 survives; index 3 has no near-duplicate
    assert drop.tolist() == [0, 1] and kept_by.tolist() == [2, 2]
    drop, kept_by = pi.near_duplicate_drops(h, 3)  # no priorities → earliest index survives
    assert drop.tolist() == [1, 2] and kept_by.tolist() == [0, 0]
    assert [a.tolist() for a in pi.near_duplicate_drops([], 3)] == [[], []]
    with pytest.raises(ValueError):
        pi.near_duplicate_drops(h, 3, pixels=[1, 2])


# ------------------------------------------------------------------ the build stage's pair search


@pytest.mark.parametrize("t", [0, 4, 6])
def test_stage_bucket_pairs_equal_brute_force(t):
    """The pHash dedup stage's band rows and per-bucket search (the index's ``pairs_in_runs``) find exactly the
    brute-force pairs within each language, at every planted distance 0..t + 2, however the bands are bucketed."""
    rng = np.random.default_rng(200 + t)
    base = rng.integers(0, 2**64, size=1500, dtype=np.uint64)
    near = base[rng.integers(0, base.size, 1500)].copy()
    flips = np.arange(near.size) % (t + 3)  # every distance 0..t + 2, planted
    for q in range(near.size):
        for b in rng.choice(64, flips[q], replace=False):
            near[q] ^= np.uint64(1 << int(b))
    h = np.concatenate([base, near])
    lang = rng.choice(["hu", "cs"], h.size)
    img = rng.permutation(h.size) * 3 + 1  # image ids are not row numbers
    want = set()
    for code in ("hu", "cs"):
        rows = np.flatnonzero(lang == code)
        want |= {
            (code, int(min(img[rows[i]], img[rows[j]])), int(max(img[rows[i]], img[rows[j]])), d)
            for i, j, d in brute_pairs(h[rows], t)
        }
    assert len(want) > 200  # the planted pairs within t are there (the test cannot pass vacuously)
    m = pi.choose_num_substrings(h.size, t)
    table = pa.table({"lang": lang.tolist(), "img": img, "phash": pi.hashes_to_hex(h)})
    for p in (1, 5):
        bands = _bands(table, m, t, p)
        got = []
        for k in range(p):
            out = _bucket_pairs(bands.filter(pc.equal(bands["bucket"], k)), m, t)
            got += zip(out["lang"].to_pylist(), out["a"].to_pylist(), out["b"].to_pylist(), out["dist"].to_pylist())
        assert len(got) == len(set(got)) and {(la, a, b, int(d)) for la, a, b, d in got} == want, (t, p)
