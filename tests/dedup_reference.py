"""Brute-force reference of the global dedup phase (issue 12), in one process, for small N: exact groups
by dict, every pair of distinct images compared (pHash Hamming distance, cosine of embeddings), the one
survivor rule of :mod:`mella.survivor` with the same-page exemption written out again here.
Returns the decisions ``{row id: (stage, reason, detail)}`` the distributed stages must reproduce."""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow.parquet as pq

from mella import survivor
from mella.phash_index import hamming, hashes_from_hex
from mella.stages.dedup.exact import group_key, sort_key


def _alt(r):
    if r["d_ling_reason"]:
        return None
    a = " ".join(unicodedata.normalize("NFKC", r["alt_text"] or "").lower().split())
    return a.strip(" .:!-\u2013\u2014|") or None


def _exempt(a, b):
    shared = set(a) & set(b)
    return bool(shared) and not any((a[p] & b[p]) - {None} for p in shared)


def _near(rows, drop_ids, value, pairs_fn, detail_fn):
    imgs = {}
    for r in rows:
        if r["id"] in drop_ids or r[value] is None:
            continue
        key = (r["lang"], r["pixel_sha256"])
        rank = (1 if r["d_ling_reason"] else 0, -(r["width"] * r["height"]), -r["image_bytes"], r["image_url"], key[1])
        e = imgs.setdefault(key, {"rank": rank, "row": r, "apps": {}})
        if rank < e["rank"]:
            e["rank"], e["row"] = rank, r
        e["apps"].setdefault(r["page_url"], set()).add(_alt(r))
    keys = sorted(imgs, key=lambda k: imgs[k]["rank"])
    out = {}
    for lang in sorted({k[0] for k in keys}):
        ks = [k for k in keys if k[0] == lang]
        i, j, d, extra = pairs_fn([imgs[k]["row"] for k in ks])
        idx = np.arange(len(i))
        dropped = survivor.greedy_drops(
            i, j, idx, exempt=lambda s, t, ks=ks: _exempt(imgs[ks[s]]["apps"], imgs[ks[t]]["apps"])
        )
        for dd, (s, q) in dropped.items():
            out[ks[dd]] = detail_fn(d[q], extra[q], imgs[ks[s]]["row"]["image_url"])
    return out


def reference_decisions(
    parts, exact_mode="image_text", with_d_ling=True, phash_bits=4, cos_thr=0.96, corr=0.95, corr_bits=10
) -> dict:
    rows = [r for p in parts for r in pq.read_table(p).drop_columns(["image"]).to_pylist() if r["reason"] is None]
    out = {}
    groups, images = {}, {}
    for r in rows:
        groups.setdefault(group_key(r, exact_mode), []).append(r)
        images.setdefault(group_key(r, "image"), []).append(r)
    for g in groups.values():
        best = min(g, key=sort_key)
        _f, page, img, _ = sort_key(best).split("\x1f")
        for r in g:
            if r is not best:
                out[r["id"]] = ("exact_dedup", "duplicate", f"same as {img} on {page}")
    if with_d_ling:
        for g in images.values():
            best = min(g, key=sort_key)
            if best["d_ling_reason"]:
                continue
            _f, page, img, _ = sort_key(best).split("\x1f")
            for r in g:
                if r["d_ling_reason"] and r["id"] not in out:
                    out[r["id"]] = ("exact_dedup", "duplicate", f"already in D_know: {img} on {page}")

    def ph_pairs(rs):
        h = hashes_from_hex([r["phash"] for r in rs])
        i, j = np.triu_indices(len(h), 1)
        d = hamming(h[i], h[j])
        k = d <= phash_bits
        return i[k], j[k], d[k], d[k]

    def by_key(drops, stage, reason):
        for r in rows:
            key = (r["lang"], r["pixel_sha256"])
            if r["id"] not in out and key in drops:
                out[r["id"]] = (stage, reason, drops[key])

    ph = _near(
        rows, set(out), "phash", ph_pairs, lambda d, _e, url: f"pHash distance {int(d)} <= {phash_bits} to {url}"
    )
    by_key(ph, "phash_dedup", "near_duplicate")

    def cos_pairs(rs):
        x = np.asarray([r["embedding"] for r in rs], np.float32)
        c = x @ x.T
        i, j = np.triu_indices(len(rs), 1)
        c = c[i, j]
        h = hashes_from_hex([r["phash"] for r in rs])
        b = hamming(h[i], h[j]).astype(np.int64)
        k = (c >= cos_thr) | ((c >= corr) & (b <= corr_bits))
        return i[k], j[k], c[k], b[k]

    def cos_detail(c, b, url):
        if c >= cos_thr:
            return f"cosine {c:.4f} >= {cos_thr} to {url}"
        return f"cosine {c:.4f} >= {corr} and pHash {b} bits <= {corr_bits} to {url}"

    se = _near(rows, set(out), "embedding", cos_pairs, cos_detail)
    by_key(se, "semantic_dedup", "semantic_duplicate")
    return out
