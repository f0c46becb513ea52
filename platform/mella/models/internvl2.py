"""InternVL2-8B as published (remote-code layout) → transformers' native InternVL, converted once and cached.

``OpenGVLab/InternVL2-8B`` is published only for its own remote code (``model_type: internvl_chat``,
``auto_map``): InternViT-300M-448px (``vision_model.*``) + a 2-layer MLP projector (``mlp1.{0,1,3}``) +
InternLM2.5-7B-chat (``language_model.*``, fused grouped ``attention.wqkv``) and an InternLM2 sentencepiece
tokenizer. :func:`native_checkpoint` rewrites it, shard by shard, into transformers' own
``InternVLForConditionalGeneration`` (``model_type: internvl``, Llama text model) with a fast tokenizer,
an ``InternVLProcessor`` (GotOcr2 image processor tiling as InternVL2's ``dynamic_preprocess``) and InternVL2's
``internlm2-chat`` chat template. The weight mapping follows transformers'
``models/internvl/convert_internvl_weights_to_hf.py`` (not shipped in the wheel); the ``wqkv`` layout follows
InternLM2's ``modeling_internlm2.py`` (``'b q (h gs d) -> b q h gs d'``, ``gs = 2 + heads / kv_heads``: per kv
head, its query heads, then its key, then its value). Why convert instead of running the remote code:
docs/models.md ("InternVL2-8B").

:func:`write_tiny_published` writes a tiny random-weight checkpoint in the published file layout for tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

#: InternVL2 ``internlm2-chat`` template (InternVL ``conversation.py``, SeparatorStyle.MPT: turns are
#: ``<|im_start|>role\n...<|im_end|>`` with no newline between them); the image goes first in the user
#: turn as ``<image>\n`` (here ``<IMG_CONTEXT>\n``, expanded to ``<img>`` + N × ``<IMG_CONTEXT>`` + ``</img>``).
INTERNVL2_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
INTERNVL2_TEMPLATE = (
    "{{ '<|im_start|>system\n" + INTERNVL2_SYSTEM + "<|im_end|>' }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: InternVL2 tiles are normalised with ImageNet statistics (InternVL ``train/constants.py``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: special tokens of InternVL2-8B's ``tokenizer_config.json`` after the sentencepiece vocabulary, in id order
#: (published ids 92538..92552; InternLM2's chat/tool tokens, then InternVL's image and grounding tokens)
SPECIAL_TOKENS = (
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)

#: the tokenizer attributes ``InternVLProcessor`` reads the image tokens from (``extra_special_tokens``); InternVL2
#: has no video token, so ``video_token`` names the image context token (videos are not used by MELLA)
IMAGE_TOKEN_NAMES = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<IMG_CONTEXT>",
}

#: the files the published repository holds besides weights that this module reads or writes
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")

_VISION_RENAMES = (  # transformers' ORIGINAL_TO_CONVERTED_KEY_MAPPING_VISION, applied in this order
    (r"^vision_model\.", "vision_tower."),
    (r"\.layers\.", ".layer."),
    (r"class_embedding", "cls_token"),
    (r"position_embedding", "position_embeddings"),
    (r"patch_embedding", "patch_embeddings.projection"),
    (r"\.ls(\d)$", r".lambda_\1"),
    (r"attn\.proj", "attention.projection_layer"),
    (r"\.attn\.", ".attention."),
    (r"norm1", "layernorm_before"),
    (r"norm2", "layernorm_after"),
)
_TEXT_RENAMES = (  # InternLM2 → Llama (transformers' ORIGINAL_TO_CONVERTED_KEY_MAPPING_TEXT_LLAMA)
    ("tok_embeddings", "embed_tokens"),
    ("attention.wo", "self_attn.o_proj"),
    ("feed_forward.w1", "mlp.gate_proj"),
    ("feed_forward.w2", "mlp.down_proj"),
    ("feed_forward.w3", "mlp.up_proj"),
    ("attention_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
)
_PROJECTOR_RENAMES = {
    "mlp1.0": "multi_modal_projector.layer_norm",
    "mlp1.1": "multi_modal_projector.linear_1",
    "mlp1.3": "multi_modal_projector.linear_2",
}


def published_config(*, vocab_size: int, text: dict, vision: dict, image_size: int, max_tiles: int = 12) -> dict:
    """``config.json`` of InternVL2-8B (keys and values as published) with the sizes in ``text``/``vision`` replaced.

    ``text``: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads;
    ``vision``: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, patch_size.
    ``image_size``: the tile side in px (448 in the published model).
    """
    llm = {
        "_name_or_path": "internlm/internlm2_5-7b-chat",
        "add_cross_attention": False,
        "architectures": ["InternLM2ForCausalLM"],
        "attn_implementation": "flash_attention_2",
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "model_type": "internlm2",
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 2.0, "type": "dynamic"},
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.37.2",
        "use_bfloat16": True,
        "use_cache": True,
        "vocab_size": vocab_size,
        **text,
    }
    vit = _published_vision_config(image_size, vision)
    return {
        "_commit_hash": None,
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": image_size,
        "llm_config": llm,
        "max_dynamic_patch": max_tiles,
        "min_dynamic_patch": 1,
        "model_type": "internvl_chat",
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internlm2-chat",
        "torch_dtype": "bfloat16",
        "transformers_version": None,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": vit,
    }


def _published_vision_config(image_size: int, vision: dict) -> dict:
    """``vision_config`` of InternVL2-8B's ``config.json`` (InternViT-300M-448px, as published) with ``vision``'s sizes."""
    return {
        "architectures": ["InternVisionModel"],
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "image_size": image_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-06,
        "model_type": "intern_vit_6b",
        "norm_type": "layer_norm",
        "num_channels": 3,
        "qk_normalization": False,
        "qkv_bias": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.37.2",
        "use_bfloat16": True,
        "use_flash_attn": True,
        **vision,
    }


def published_tensors(cfg: dict, seed: int = 0) -> dict:
    """Random bf16 tensors named and shaped as InternVL2's published ``model.safetensors`` shards for ``cfg``.

    Shapes follow the remote code: ``wqkv`` is ``[(heads + 2 * kv_heads) * head_dim, hidden]``; ``mlp1.0`` is a
    LayerNorm over ``vit_hidden * (1 / downsample_ratio)**2``.
    """
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, base=0.0):
        return (base + scale * torch.randn(*shape, generator=g)).to(torch.bfloat16)

    t, v = cfg["llm_config"], cfg["vision_config"]
    out = {}
    c, p, side = v["hidden_size"], v["patch_size"], v["image_size"]
    e = "vision_model.embeddings."
    out |= {
        e + "class_embedding": rnd(1, 1, c),
        e + "patch_embedding.weight": rnd(c, 3, p, p, scale=0.05),
        e + "patch_embedding.bias": rnd(c),
        e + "position_embedding": rnd(1, (side // p) ** 2 + 1, c),
    }
    for i in range(v["num_hidden_layers"]):
        n = f"vision_model.encoder.layers.{i}."
        out |= {
            n + "attn.qkv.weight": rnd(3 * c, c),
            n + "attn.qkv.bias": rnd(3 * c),
            n + "attn.proj.weight": rnd(c, c),
            n + "attn.proj.bias": rnd(c),
            n + "ls1": rnd(c, base=0.5),
            n + "ls2": rnd(c, base=0.5),
            n + "norm1.weight": rnd(c, base=1.0),
            n + "norm1.bias": rnd(c),
            n + "norm2.weight": rnd(c, base=1.0),
            n + "norm2.bias": rnd(c),
            n + "mlp.fc1.weight": rnd(v["intermediate_size"], c),
            n + "mlp.fc1.bias": rnd(v["intermediate_size"]),
            n + "mlp.fc2.weight": rnd(c, v["intermediate_size"]),
            n + "mlp.fc2.bias": rnd(c),
        }
    h, inter = t["hidden_size"], t["intermediate_size"]
    d = h // t["num_attention_heads"]
    ps = c * int(1 / cfg["downsample_ratio"]) ** 2
    out |= {
        "mlp1.0.weight": rnd(ps, base=1.0),
        "mlp1.0.bias": rnd(ps),
        "mlp1.1.weight": rnd(h, ps),
        "mlp1.1.bias": rnd(h),
        "mlp1.3.weight": rnd(h, h),
        "mlp1.3.bias": rnd(h),
    }
    out["language_model.model.tok_embeddings.weight"] = rnd(t["vocab_size"], h, scale=1.0)
    for i in range(t["num_hidden_layers"]):
        n = f"language_model.model.layers.{i}."
        out |= {
            n + "attention.wqkv.weight": rnd((t["num_attention_heads"] + 2 * t["num_key_value_heads"]) * d, h),
            n + "attention.wo.weight": rnd(h, h),
            n + "feed_forward.w1.weight": rnd(inter, h),
            n + "feed_forward.w3.weight": rnd(inter, h),
            n + "feed_forward.w2.weight": rnd(h, inter),
            n + "attention_norm.weight": rnd(h, base=1.0),
            n + "ffn_norm.weight": rnd(h, base=1.0),
        }
    out["language_model.model.norm.weight"] = rnd(h, base=1.0)
    out["language_model.output.weight"] = rnd(t["vocab_size"], h)
    return out


def _train_sentencepiece(path: Path, vocab_size: int) -> None:
    """Train a tiny BPE sentencepiece model as InternLM2's is built (byte fallback, no dummy prefix, digits split)."""
    import io

    import sentencepiece as spm

    words = (
        "the a picture of photo image shows cat dog house tree street people car river mountain city "
        "kép egy macska kutya ház fa utca ember autó folyó hegy város "
        "写真 猫 犬 家 一个 图片 12 345"
    )
    text = [f"{w} {words} {i}" for i, w in enumerate(words.split())] * 4
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        split_digits=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())


def _write_published_tokenizer(path: Path, sp_size: int) -> int:
    """InternLM2Tokenizer files as InternVL2-8B publishes them; returns the vocabulary size (sp + specials)."""
    _train_sentencepiece(path / "tokenizer.model", sp_size)

    def entry(tok):
        return {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    added = {str(i): entry(t) for i, t in enumerate(("<unk>", "<s>", "</s>"))}
    added |= {str(sp_size + i): entry(t) for i, t in enumerate(SPECIAL_TOKENS)}
    additional = [
        "<|im_start|>",
        "<|im_end|>",
        "<|action_start|>",
        "<|action_end|>",
        "<|interpreter|>",
        "<|plugin|>",
        *SPECIAL_TOKENS[6:],
    ]
    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": additional,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 8192,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    specials = {
        "additional_special_tokens": additional,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
    }
    (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    return sp_size + len(SPECIAL_TOKENS)


def write_tiny_published(path: Path, seed: int = 0) -> Path:
    """Write a tiny random-weight InternVL2 checkpoint in ``OpenGVLab/InternVL2-8B``'s published file layout.

    Files: ``config.json`` (published keys: ``internvl_chat`` with ``llm_config`` InternLM2 and ``vision_config``
    InternViT), ``model-0000N-of-00002.safetensors`` + ``model.safetensors.index.json`` (published weight names,
    bf16), ``tokenizer.model`` (a sentencepiece BPE model trained here, 384 pieces) + ``tokenizer_config.json`` +
    ``special_tokens_map.json`` (InternLM2Tokenizer, the 15 published special tokens after the pieces),
    ``generation_config.json`` and ``preprocessor_config.json``. Sizes: text hidden 64 (4 heads, 2 kv heads,
    2 layers), vision hidden 32 (2 heads, 2 layers), 56 px tiles of 14 px patches (4 tokens per tile after the
    pixel shuffle), up to 12 tiles + thumbnail. The remote-code ``*.py`` files (``modeling_internvl_chat.py``,
    ``modeling_internlm2.py``, ``tokenization_internlm2.py``, ...) are not written: they are OpenGVLab's code,
    and nothing here executes them. Returns ``path``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _write_published_tokenizer(path, sp_size=384)
    cfg = published_config(
        vocab_size=vocab,
        image_size=56,
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        vision={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 14,
        },
    )
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    tensors = published_tensors(cfg, seed)
    names = list(tensors)
    half = len(names) // 2
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": {}}
    for n, part in enumerate((names[:half], names[half:]), start=1):
        shard = f"model-{n:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, path / shard, metadata={"format": "pt"})
        index["weight_map"] |= {k: shard for k in part}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "transformers_version": "4.37.2"}, indent=2)
    )
    side = cfg["force_image_size"]
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": side,
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": list(IMAGENET_MEAN),
                "image_std": list(IMAGENET_STD),
                "resample": 3,
                "size": side,
            },
            indent=2,
        )
    )
    return path


def read_published_config(src: Path) -> dict:
    """``config.json`` of a published InternVL2 checkpoint, checked for what the conversion supports.

    Raises:
        FileNotFoundError: no ``config.json`` in ``src``.
        ValueError: not an ``internvl_chat`` checkpoint with an InternLM2 language model, ``ps_version`` v1
            (transformers' InternVL implements only v2's pixel shuffle), qk-normalised or non-square tiles.
    """
    path = Path(src) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{src}: no config.json (not a checkpoint directory)")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "internvl_chat":
        raise ValueError(
            f"{src}: model_type {cfg.get('model_type')!r}, expected 'internvl_chat' (InternVL2 as published)"
        )
    llm_type = cfg["llm_config"].get("model_type")
    if llm_type != "internlm2":
        raise ValueError(f"{src}: language model {llm_type!r}; only InternLM2 (InternVL2-2B/8B/26B) is converted")
    if cfg.get("ps_version") != "v2":
        raise ValueError(f"{src}: ps_version {cfg.get('ps_version')!r}; transformers' InternVL implements only 'v2'")
    if cfg["vision_config"].get("qk_normalization"):
        raise ValueError(f"{src}: qk_normalization vision models (InternViT-6B) are not converted here")
    if not cfg.get("use_thumbnail", False) and cfg.get("dynamic_image_size", False):
        raise ValueError(f"{src}: use_thumbnail false; transformers' GotOcr2 tiling always adds the thumbnail")
    return cfg


def _rename(key: str) -> str:
    """Published weight name → transformers' InternVL checkpoint name (qkv splits handled by the caller)."""
    if key.startswith("vision_model."):
        for pat, rep in _VISION_RENAMES:
            key = re.sub(pat, rep, key)
        return key
    if key == "language_model.output.weight":
        return "lm_head.weight"
    if key.startswith("language_model."):
        for old, new in _TEXT_RENAMES:
            key = key.replace(old, new)
        return key
    for old, new in _PROJECTOR_RENAMES.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    raise ValueError(f"unexpected weight {key!r} in an InternVL2 checkpoint")


def split_wqkv(w, num_heads: int, num_kv_heads: int):
    """InternLM2's fused ``wqkv`` weight ``[(H + 2K) * D, hidden]`` → ``(q [H*D, hidden], k [K*D, hidden], v)``.

    Layout (modeling_internlm2.py, ``'b q (h gs d) -> b q h gs d'`` with ``gs = H/K + 2``): for each of the K kv
    heads, its H/K query heads, then its key head, then its value head. dtype is kept.
    """
    groups = num_heads // num_kv_heads
    hidden = w.shape[-1]
    d = w.shape[0] // (num_kv_heads * (groups + 2))
    g = w.reshape(num_kv_heads, groups + 2, d, hidden)
    return (
        g[:, :groups].reshape(-1, hidden).clone(),
        g[:, -2].reshape(-1, hidden).clone(),
        g[:, -1].reshape(-1, hidden).clone(),
    )


def convert_tensor(key: str, tensor, cfg: dict) -> dict:
    """One published tensor → ``{native name: tensor}`` (the fused qkv projections become three)."""
    new = _rename(key)
    if key.endswith("attention.wqkv.weight"):
        t = cfg["llm_config"]
        q, k, v = split_wqkv(tensor, t["num_attention_heads"], t["num_key_value_heads"])
        base = new.replace("attention.wqkv", "self_attn.{}_proj")
        return {base.format("q"): q, base.format("k"): k, base.format("v"): v}
    if ".attention.qkv." in new:  # InternViT: [q; k; v] stacked along the output dim
        return {
            new.replace("attention.qkv", f"attention.{n}_proj"): part.clone()
            for n, part in zip("qkv", tensor.chunk(3, dim=0))
        }
    return {new: tensor}


def _rope_parameters(llm: dict) -> dict:
    """InternLM2 ``rope_theta`` + ``rope_scaling`` → transformers 5 ``rope_parameters`` (dynamic NTK / linear)."""
    scaling = llm.get("rope_scaling")
    params = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000))}
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("dynamic", "linear"):
            raise ValueError(f"rope_scaling type {kind!r}; InternLM2 defines only 'dynamic' and 'linear'")
        params |= {"rope_type": kind, "factor": float(scaling["factor"])}
    return params


def native_config(cfg: dict, image_token_id: int, eos_token_id: int):
    """transformers ``InternVLConfig`` (Llama text model) equivalent to the published ``cfg``."""
    from transformers import InternVLConfig

    llm, vit = cfg["llm_config"], cfg["vision_config"]
    side, patch = cfg.get("force_image_size") or vit["image_size"], vit["patch_size"]
    text = {
        "model_type": "llama",
        "vocab_size": llm["vocab_size"],
        "hidden_size": llm["hidden_size"],
        "intermediate_size": llm["intermediate_size"],
        "num_hidden_layers": llm["num_hidden_layers"],
        "num_attention_heads": llm["num_attention_heads"],
        "num_key_value_heads": llm["num_key_value_heads"],
        "head_dim": llm["hidden_size"] // llm["num_attention_heads"],
        "hidden_act": llm["hidden_act"],
        "max_position_embeddings": llm["max_position_embeddings"],
        "rms_norm_eps": llm["rms_norm_eps"],
        "rope_parameters": _rope_parameters(llm),
        "attention_bias": llm.get("bias", False),
        "mlp_bias": False,
        "bos_token_id": llm.get("bos_token_id"),
        "eos_token_id": eos_token_id,
        "pad_token_id": llm.get("pad_token_id"),
        "tie_word_embeddings": False,
        "use_cache": True,
    }
    vision = {
        "hidden_size": vit["hidden_size"],
        "intermediate_size": vit["intermediate_size"],
        "num_hidden_layers": vit["num_hidden_layers"],
        "num_attention_heads": vit["num_attention_heads"],
        "image_size": [side, side],
        "patch_size": [patch, patch],
        "attention_bias": vit.get("qkv_bias", True),
        "use_qk_norm": False,
        "layer_norm_eps": vit["layer_norm_eps"],
        "norm_type": vit.get("norm_type", "layer_norm"),
        "hidden_act": vit["hidden_act"],
        "attention_dropout": vit.get("attention_dropout", 0.0),
        "projection_dropout": vit.get("dropout", 0.0),
        "use_absolute_position_embeddings": True,
    }
    ratio = cfg["downsample_ratio"]
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        downsample_ratio=ratio,
        image_seq_length=int((side // patch) ** 2 * ratio**2),
        vision_feature_layer=cfg.get("select_layer", -1),
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
        architectures=["InternVLForConditionalGeneration"],
        dtype=cfg.get("torch_dtype", "bfloat16"),
    )


def _native_tokenizer(src: Path, work: Path):
    """A fast Llama-style tokenizer equal to InternLM2Tokenizer: the sentencepiece BPE model (no dummy prefix)
    converted by transformers' ``LlamaConverter``, plus the published special tokens at their published ids.

    Raises ``ValueError`` when a special token would land on another id than published.
    """
    from transformers import AddedToken, AutoTokenizer, LlamaTokenizer

    pub = json.loads((src / "tokenizer_config.json").read_text())
    work.mkdir()
    shutil.copyfile(src / "tokenizer.model", work / "tokenizer.model")
    (work / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "legacy": False,
                "add_prefix_space": False,
                "add_bos_token": pub.get("add_bos_token", True),
                "add_eos_token": pub.get("add_eos_token", False),
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )
    tok = LlamaTokenizer.from_pretrained(work)
    (work / "tokenizer.model").unlink()
    added = sorted((int(i), e["content"]) for i, e in pub["added_tokens_decoder"].items())
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for i, t in added if i > 2]}
    )
    tok.pad_token = pub.get("pad_token", "</s>")
    for i, t in added:
        if tok.convert_tokens_to_ids(t) != i:
            raise ValueError(f"special token {t!r} got id {tok.convert_tokens_to_ids(t)}, published id {i}")
    # InternVLProcessor reads the image tokens by name (tokenizer_config.json ``extra_special_tokens``); InternVL2
    # has no video token, so ``video_token`` names the image context token (videos are not used by MELLA)
    tok.save_pretrained(work)
    config = json.loads((work / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = dict(IMAGE_TOKEN_NAMES)
    (work / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    tok = AutoTokenizer.from_pretrained(work)
    shutil.rmtree(work)
    return tok


def _write_weights(src: Path, cfg: dict, out: Path) -> None:
    """Convert the published shards one at a time (peak memory: one output shard + one input tensor; dtype kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    index_path = src / "model.safetensors.index.json"
    if index_path.is_file():
        shards = sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    elif (src / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{src}: neither model.safetensors.index.json nor model.safetensors")
    weight_map, total = {}, 0
    for shard in shards:
        converted = {}
        with safe_open(src / shard, framework="pt") as f:
            for key in f.keys():
                converted |= convert_tensor(key, f.get_tensor(key), cfg)
        save_file(converted, out / shard, metadata={"format": "pt"})
        weight_map |= {k: shard for k in converted}
        total += sum(t.numel() * t.element_size() for t in converted.values())
        del converted
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def convert(src: Path, out: Path) -> None:
    """Write the native transformers InternVL checkpoint of the published InternVL2 checkpoint ``src`` into ``out``.

    ``out`` gets: ``config.json`` (``model_type: internvl``), the converted shards (+ index), ``tokenizer.json`` /
    ``tokenizer_config.json`` (fast tokenizer, no remote code), ``processor_config.json`` /
    ``preprocessor_config.json`` (``InternVLProcessor`` with ``GotOcr2ImageProcessorPil``: ``force_image_size`` px
    tiles, ``min_dynamic_patch``..``max_dynamic_patch`` tiles + thumbnail, ImageNet mean/std), the
    ``internlm2-chat`` chat template and ``generation_config.json`` (stops at ``<|im_end|>``, as InternVL2's
    ``chat()`` does). Raises what :func:`read_published_config` raises.
    """
    from transformers import GenerationConfig, GotOcr2ImageProcessorPil, InternVLProcessor, InternVLVideoProcessor

    src, out = Path(src), Path(out)
    cfg = read_published_config(src)
    out.mkdir(parents=True)
    tok = _native_tokenizer(src, out / "tokenizer-work")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    config = native_config(
        cfg, tok.convert_tokens_to_ids("<IMG_CONTEXT>"), eos_token_id=cfg["llm_config"]["eos_token_id"]
    )
    config.save_pretrained(out)
    _write_weights(src, cfg, out)
    side = config.vision_config.image_size[0]
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": side, "width": side},
        crop_to_patches=bool(cfg.get("dynamic_image_size", True)),
        min_patches=cfg.get("min_dynamic_patch", 1),
        max_patches=cfg.get("max_dynamic_patch", 12),
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )
    tok.chat_template = INTERNVL2_TEMPLATE
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=config.image_seq_length,
        chat_template=INTERNVL2_TEMPLATE,
    )
    processor.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=[im_end, tok.eos_token_id], pad_token_id=tok.pad_token_id
    ).save_pretrained(out)


def _content_hash(src: Path) -> str:
    """sha256 over the names and sizes of every file, the bytes of the small ones and the safetensors headers."""
    h = hashlib.sha256()
    for f in sorted(p for p in src.iterdir() if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if f.suffix == ".safetensors":
                n = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(n, 100_000_000)))
            elif size <= 50_000_000:
                h.update(fh.read())
    return h.hexdigest()


def cache_key(src: Path) -> str:
    """``<org>--<name>--<commit>`` for a Hugging Face cache snapshot (``models--org--name/snapshots/<commit>``),
    otherwise ``<dir name>-<path hash>--<content hash>``."""
    src = Path(src).resolve()
    parts = src.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return f"{parts[-3][len('models--') :]}--{parts[-1]}"
    path_hash = hashlib.sha256(str(src).encode()).hexdigest()[:12]
    return f"{src.name}-{path_hash}--{_content_hash(src)[:16]}"


def cache_root() -> Path:
    """``$HF_HOME/mella-converted`` (huggingface_hub's ``HF_HOME``, default ``~/.cache/huggingface``)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HOME", constants.HF_HOME)) / "mella-converted"


def native_checkpoint(src_dir: Path) -> Path:
    """The native transformers InternVL checkpoint of the published InternVL2 checkpoint ``src_dir``, converted
    once and cached under :func:`cache_root` / :func:`cache_key`.

    The conversion writes into a hidden temporary directory beside the cache entry and renames it into place,
    under a file lock (one converter per entry): a killed conversion leaves no entry, only a temporary directory
    that the next call removes. A second call returns the cached directory without reading the weights.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_published_config` and :func:`convert`.
    """
    from filelock import FileLock

    src = Path(src_dir)
    read_published_config(src)
    root = cache_root()
    final = root / cache_key(src)
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{final.name}.lock")):
        if final.is_dir():
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            convert(src, tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_processor(path: Path, max_tiles: int | None = None):
    """``InternVLProcessor`` of a converted checkpoint with the PIL backend of the GotOcr2 image processor.

    ``max_tiles``: InternVL2's ``max_num`` (``max_patches``: at most this many 448-px tiles, plus the thumbnail
    when more than one); None keeps the checkpoint's ``max_dynamic_patch``.
    The PIL backend's tiles equal InternVL2's ``load_image`` / ``dynamic_preprocess`` bit for bit (PIL bicubic
    resizes, tests/test_internvl2.py); ``AutoProcessor``'s default torchvision backend picks the same tiles but
    resamples with torch's bicubic (pixel differences up to a few 1/255 levels).
    """
    from transformers import AutoProcessor, GotOcr2ImageProcessorPil

    kw = {} if max_tiles is None else {"max_patches": max_tiles}
    return AutoProcessor.from_pretrained(path, image_processor=GotOcr2ImageProcessorPil.from_pretrained(path, **kw))
