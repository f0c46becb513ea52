"""Compare a D_know output with a PAIRS_expected.tsv oracle (miniweb / demo web)."""

from __future__ import annotations

import csv
import glob
import os

import pyarrow.parquet as pq


def read_expected(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for r in rows:
        r["lang"] = "sr" if r["lang"].startswith("sr") else r["lang"]
        r["alt"] = " ".join(r["alt"].split())
    return rows


def read_d_know(out_dir: str, columns=("lang", "page_url", "image_url", "alt_text", "sha256", "id")) -> list[dict]:
    rows = []
    for p in sorted(glob.glob(os.path.join(out_dir, "d_know", "*.parquet"))):
        rows.extend(pq.read_table(p, columns=list(columns)).to_pylist())
    return rows


def recall(out_dir: str, expected_tsv: str, base_url: str) -> tuple[float, list[dict]]:
    """Share of expected pairs present in D_know with the same lang and alt text; also the missing ones.

    A pair counts as present when D_know has a row with its language and alt text whose image has
    the same bytes as the expected image (the kept copy of an exact duplicate may sit on another page).
    """
    root = os.path.dirname(os.path.abspath(expected_tsv))
    base = base_url.rstrip("/") + "/"
    rows = read_d_know(out_dir)
    by_key = {(r["lang"], r["alt_text"], r["sha256"]) for r in rows}
    by_url = {(r["lang"], r["page_url"], r["image_url"], r["alt_text"]) for r in rows}
    import hashlib

    missing = []
    expected = read_expected(expected_tsv)
    for e in expected:
        img_path = os.path.join(root, e["img"])
        sha = hashlib.sha256(open(img_path, "rb").read()).hexdigest() if os.path.exists(img_path) else None
        if (e["lang"], base + e["page"], base + e["img"], e["alt"]) in by_url:
            continue
        if (e["lang"], e["alt"], sha) in by_key:
            continue
        missing.append(e)
    return 1 - len(missing) / max(1, len(expected)), missing
