"""Synthetic work-unit parts for the global dedup phase (issue 12): the real column types of
:data:`mella.schema.REJECT_SCHEMA` (sha1 row ids, sha256 pixel hex, 64-bit pHash hex, L2-normalised
float32 embeddings) with planted duplicates whose answers are known.

Per ``n`` rows, about: 1 % exact duplicates (an image-text pair repeated on another page), 1 % pHash
near-duplicates (another file, pHash 2 bits away, 90 % size), 1 % CNN near-duplicates (another file,
pHash far, embedding at cosine ≈ 0.995, 90 % size), 5 % D_ling candidates (alt-text unusable), and
same-page cases: a near-copy on its original's page with the same alt-text (a duplicate) and with
another alt-text (kept). Random 64-bit pHashes are > 4 bits apart and random 1280-d unit vectors
below cosine 0.2 with overwhelming probability, so the distinct rows form no pair.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mella.schema import REJECT_SCHEMA, record_id, to_table

LANGS = ("hu", "sr")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_parts(out_dir: str, n: int, n_parts: int = 8, dim: int = 1280, seed: int = 0) -> dict:
    """Write ``n_parts`` Parquet parts with about ``n`` rows under ``out_dir``.

    Returns ``{"parts": [paths], "planted": {copy row id: (kind, original row id)}`` (kind ``exact``,
    ``phash`` or ``semantic``; of each pair exactly one row must go), ``"kept_same_page":
    [row ids of near-copies with another alt-text on their original's page, which must stay]}``.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    planted: dict[str, str] = {}
    kept_same_page: list[str] = []
    n_base = int(n * 0.96)

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    def vec(i):  # the embedding of base image i, regenerated on demand (no n × dim matrix held)
        return unit(np.random.default_rng((seed, i)).standard_normal(dim))

    def row(lang, page, url, pixel, phash, emb, alt, w=800, h=600, routed=False):
        r = {
            "id": record_id(lang, page, url),
            "lang": lang,
            "page_url": page,
            "image_url": url,
            "source": "warc",
            "alt_text": None if routed else alt,
            "pixel_sha256": pixel,
            "phash": f"{phash:016x}",
            "embedding": emb,
            "width": w,
            "height": h,
            "image_bytes": w * h // 10,
            "image": b"\x89PNG" + pixel[:28].encode(),
            "d_ling_reason": "alt_text:alt_empty" if routed else None,
        }
        rows.append(r)
        return r

    base = []
    for i in range(n_base):
        lang = LANGS[i % 2]
        ph = int(rng.integers(0, 2**63, dtype=np.int64)) << 1 | int(rng.integers(0, 2))
        emb = ("base", i)
        r = row(
            lang,
            f"http://site{i % 997}.example/p{i}.html",
            f"http://site{i % 997}.example/img{i}.png",
            _sha(f"img{i}"),
            ph,
            emb,
            f"kép {i} leírása",
            routed=(i % 20 == 7),
        )
        base.append((r, ph, emb))
    k = 0
    for kind in ("exact", "phash", "semantic"):
        for _ in range(max(1, n // 100)):
            r, ph, emb = base[int(rng.integers(0, n_base))]
            if r["d_ling_reason"] or r["id"] in planted or r.get("_copied"):
                continue
            r["_copied"] = True
            page = f"http://mirror{k % 50}.example/q{k}.html"
            if kind == "exact":
                c = row(
                    r["lang"], page, r["image_url"].replace("img", "copy"), r["pixel_sha256"], ph, emb, r["alt_text"]
                )
            elif kind == "phash":
                flip = (1 << int(rng.integers(0, 32))) | (1 << int(rng.integers(32, 64)))
                c = row(
                    r["lang"],
                    page,
                    f"http://mirror.example/ph{k}.jpg",
                    _sha(f"ph{k}"),
                    ph ^ flip,
                    ("rand", k),
                    r["alt_text"],
                    720,
                    540,
                )
            else:
                far = int(rng.integers(0, 2**63, dtype=np.int64))
                c = row(
                    r["lang"],
                    page,
                    f"http://mirror.example/se{k}.jpg",
                    _sha(f"se{k}"),
                    far,
                    ("near", emb[1], k),
                    r["alt_text"],
                    720,
                    540,
                )
            planted[c["id"]] = (kind, r["id"])
            k += 1
    for s in range(max(2, n // 1000)):  # same page: same alt → a duplicate; another alt → kept
        r, ph, emb = base[int(rng.integers(0, n_base))]
        if r["d_ling_reason"] or r.get("_copied"):
            continue
        r["_copied"] = True
        same = s % 2 == 0
        c = row(
            r["lang"],
            r["page_url"],
            f"{r['image_url']}.thumb{s}.jpg",
            _sha(f"th{s}"),
            ph ^ 0b11,
            ("rand", 10**9 + s),
            r["alt_text"] if same else f"{r['alt_text']} — részlet",
            400,
            300,
        )
        if same:
            planted[c["id"]] = ("phash", r["id"])
        else:
            kept_same_page.append(c["id"])

    def embedding(recipe):
        if recipe[0] == "base":
            return vec(recipe[1])
        noise = unit(np.random.default_rng((seed, 7, recipe[-1])).standard_normal(dim))
        return noise if recipe[0] == "rand" else unit(vec(recipe[1]) + 0.1 * noise)

    order = rng.permutation(len(rows))
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for p, chunk in enumerate(np.array_split(order, n_parts)):
        path = os.path.join(out_dir, f"part-{p:04d}.parquet")
        part_rows = [{k: v for k, v in rows[i].items() if k not in ("_copied", "embedding")} for i in chunk]
        t = to_table(part_rows, REJECT_SCHEMA)
        emb = (
            np.stack([embedding(rows[i]["embedding"]) for i in chunk]) if len(chunk) else np.zeros((0, dim), np.float32)
        )
        col = pa.ListArray.from_arrays(
            pa.array(np.arange(0, emb.size + 1, dim, dtype=np.int32)), pa.array(emb.reshape(-1))
        )
        t = t.set_column(t.schema.get_field_index("embedding"), "embedding", col)
        pq.write_table(t, path)
        paths.append(path)
    return {"parts": paths, "planted": planted, "kept_same_page": kept_same_page, "rows": len(rows)}
