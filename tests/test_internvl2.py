"""InternVL2 as published → transformers' native InternVL: the conversion proven against InternVL2's own formulas.

The reference computations below are written from OpenGVLab's published code (InternVL repository,
``internvl_chat/internvl/model``): ``internlm2/modeling_internlm2.py`` (``InternLM2Attention.forward``: the
grouped ``wqkv`` rearrange, rotary embedding, ``repeat_kv``, softmax in fp32, ``wo``; ``InternLM2MLP``;
``InternLM2RMSNorm``), ``internvl_chat/modeling_intern_vit.py`` (``InternVisionEmbeddings``,
``InternAttention._naive_attn``, ``InternVisionEncoderLayer``), ``modeling_internvl_chat.py``
(``pixel_shuffle`` v2, ``extract_feature``, ``mlp1``) and the model card's ``build_transform`` /
``dynamic_preprocess`` / ``load_image``. They run on the ORIGINAL published tensors; the converted model
runs through transformers.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mella.models import internvl2
from mella.train.config import LORA_TARGETS

torch.manual_seed(0)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    old = os.environ.get("HF_HOME")
    os.environ["HF_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("HF_HOME")
    else:
        os.environ["HF_HOME"] = old


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    return internvl2.write_tiny_published(tmp_path_factory.mktemp("InternVL2-8B"))


@pytest.fixture(scope="module")
def converted(published, hf_home):
    return internvl2.native_checkpoint(published)


@pytest.fixture(scope="module")
def model(converted):
    from transformers import InternVLForConditionalGeneration

    return InternVLForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def original(published):
    """The published tensors, upcast to float32 (bf16 → fp32 is exact, as is the converted model's load)."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(published.glob("model-*.safetensors")):
        with safe_open(shard, framework="pt") as f:
            out |= {k: f.get_tensor(k).float() for k in f.keys()}
    return out


@pytest.fixture(scope="module")
def cfg(published):
    return json.loads((published / "config.json").read_text())


# ---------------------------------------------------------------- InternLM2, from modeling_internlm2.py


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def internlm2_attention(x, wqkv, wo, llm):
    """InternLM2Attention.forward (eager, no cache, causal) on x [b, q, hidden]."""
    b, q, _ = x.shape
    heads, kv = llm["num_attention_heads"], llm["num_key_value_heads"]
    d = llm["hidden_size"] // heads
    groups = heads // kv
    qkv = (x @ wqkv.T).reshape(b, q, kv, 2 + groups, d)  # 'b q (h gs d) -> b q h gs d'
    query = qkv[..., :groups, :].reshape(b, q, heads, d).transpose(1, 2)  # 'b q h gs d -> b q (h gs) d'
    key = qkv[..., -2, :].transpose(1, 2)
    value = qkv[..., -1, :].transpose(1, 2)
    inv_freq = 1.0 / (llm["rope_theta"] ** (torch.arange(0, d, 2).float() / d))  # InternLM2RotaryEmbedding
    freqs = torch.outer(torch.arange(q).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, None], emb.sin()[None, None]
    query, key = query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)  # repeat_kv
    scores = query @ key.transpose(2, 3) / math.sqrt(d)
    scores = scores + torch.full((q, q), torch.finfo(x.dtype).min).triu(1)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32)
    out = (probs @ value).transpose(1, 2).reshape(b, q, heads * d)
    return out @ wo.T


def internlm2_mlp(x, t, n):
    return (F.silu(x @ t[n + "feed_forward.w1.weight"].T) * (x @ t[n + "feed_forward.w3.weight"].T)) @ t[
        n + "feed_forward.w2.weight"
    ].T


def internlm2_logits(ids, t, llm):
    """InternLM2ForCausalLM.forward: tok_embeddings, decoder layers (pre-norm), norm, output."""
    h = t["language_model.model.tok_embeddings.weight"][ids]
    eps = llm["rms_norm_eps"]
    for i in range(llm["num_hidden_layers"]):
        n = f"language_model.model.layers.{i}."
        a = rms_norm(h, t[n + "attention_norm.weight"], eps)
        h = h + internlm2_attention(a, t[n + "attention.wqkv.weight"], t[n + "attention.wo.weight"], llm)
        h = h + internlm2_mlp(rms_norm(h, t[n + "ffn_norm.weight"], eps), t, n)
    h = rms_norm(h, t["language_model.model.norm.weight"], eps)
    return h @ t["language_model.output.weight"].T


def test_attention_split_equals_internlm2_definition(model, original, cfg):
    """Layer 0's converted q/k/v/o attention == InternLM2's fused-wqkv attention on the original tensors."""
    seen = {}
    layer = model.model.language_model.layers[0]
    hooks = [
        layer.self_attn.register_forward_hook(
            lambda m, a, kw, out: seen.update(x=kw["hidden_states"], y=out[0]), with_kwargs=True
        ),
        layer.mlp.register_forward_hook(lambda m, a, out: seen.update(mx=a[0], my=out)),
    ]
    ids = torch.randint(0, cfg["llm_config"]["vocab_size"], (2, 11))
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    n = "language_model.model.layers.0."
    want = internlm2_attention(
        seen["x"], original[n + "attention.wqkv.weight"], original[n + "attention.wo.weight"], cfg["llm_config"]
    )
    torch.testing.assert_close(seen["y"], want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["my"], internlm2_mlp(seen["mx"], original, n), rtol=1e-5, atol=1e-5)
    # the split is not the identity: reading wqkv as plain [q; k; v] rows gives another attention
    heads, d = cfg["llm_config"]["num_attention_heads"], 16
    naive_q = original[n + "attention.wqkv.weight"][: heads * d]
    assert not torch.allclose(model.model.language_model.layers[0].self_attn.q_proj.weight, naive_q)


def test_logits_equal_internlm2_forward(model, original, cfg):
    ids = torch.randint(0, cfg["llm_config"]["vocab_size"], (1, 9))
    with torch.no_grad():
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, internlm2_logits(ids, original, cfg["llm_config"]), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- InternViT + mlp1, from modeling_intern_vit.py


def internvit_features(pixels, t, cfg):
    """InternVLChatModel.extract_feature (select_layer -1, ps_version v2) on pixels [n, 3, H, W]."""
    v = cfg["vision_config"]
    e = "vision_model.embeddings."
    x = F.conv2d(pixels, t[e + "patch_embedding.weight"], t[e + "patch_embedding.bias"], stride=v["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([t[e + "class_embedding"].expand(len(x), 1, -1), x], dim=1) + t[e + "position_embedding"]
    heads, c = v["num_attention_heads"], v["hidden_size"]
    for i in range(v["num_hidden_layers"]):
        n = f"vision_model.encoder.layers.{i}."
        a = F.layer_norm(x, (c,), t[n + "norm1.weight"], t[n + "norm1.bias"], v["layer_norm_eps"])
        b, s, _ = a.shape
        qkv = (a @ t[n + "attn.qkv.weight"].T + t[n + "attn.qkv.bias"]).reshape(b, s, 3, heads, c // heads)
        q, k, vv = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        a = (attn @ vv).transpose(1, 2).reshape(b, s, c) @ t[n + "attn.proj.weight"].T + t[n + "attn.proj.bias"]
        x = x + a * t[n + "ls1"]
        m = F.layer_norm(x, (c,), t[n + "norm2.weight"], t[n + "norm2.bias"], v["layer_norm_eps"])
        m = (
            F.gelu(m @ t[n + "mlp.fc1.weight"].T + t[n + "mlp.fc1.bias"]) @ t[n + "mlp.fc2.weight"].T
            + t[n + "mlp.fc2.bias"]
        )
        x = x + m * t[n + "ls2"]
    x = x[:, 1:, :]
    side = int(x.shape[1] ** 0.5)
    x = x.reshape(len(x), side, side, -1)
    n_, w, h, ch = x.size()  # pixel_shuffle(scale_factor=0.5), ps_version v2
    x = x.view(n_, w, h // 2, ch * 2).permute(0, 2, 1, 3).contiguous().view(n_, h // 2, w // 2, ch * 4)
    x = x.permute(0, 2, 1, 3).contiguous().reshape(n_, -1, ch * 4)
    x = F.layer_norm(x, (ch * 4,), t["mlp1.0.weight"], t["mlp1.0.bias"], 1e-5)  # nn.LayerNorm default eps
    return F.gelu(x @ t["mlp1.1.weight"].T + t["mlp1.1.bias"]) @ t["mlp1.3.weight"].T + t["mlp1.3.bias"]


def test_vision_tower_and_projector_equal_internvit(model, original, cfg):
    pixels = torch.randn(3, 3, cfg["force_image_size"], cfg["force_image_size"])
    with torch.no_grad():
        got = model.model.get_image_features(
            pixel_values=pixels, vision_feature_layer=-1, vision_feature_select_strategy="default"
        ).pooler_output
    want = internvit_features(pixels, original, cfg)
    assert got.shape == (3, 4, cfg["llm_config"]["hidden_size"])  # (56/14)^2 patches * 0.5^2 = 4 tokens per tile
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- tiling, from the model card's load_image


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff, best_ratio = float("inf"), (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff, best_ratio = ratio_diff, ratio
        elif ratio_diff == best_ratio_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image, min_num, max_num, image_size, use_thumbnail):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height
    target_ratios = sorted(
        {
            (i, j)
            for n in range(min_num, max_num + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_num <= i * j <= max_num
        },
        key=lambda x: x[0] * x[1],
    )
    ratio = find_closest_aspect_ratio(aspect_ratio, target_ratios, orig_width, orig_height, image_size)
    target_width, target_height = image_size * ratio[0], image_size * ratio[1]
    blocks = ratio[0] * ratio[1]
    resized = image.resize((target_width, target_height))
    tiles = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        tiles.append(resized.crop(box))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def load_image(image, cfg):
    """The model card's load_image: dynamic_preprocess, then build_transform (RGB, bicubic resize, ImageNet norm)."""
    from torchvision import transforms as T

    side = cfg["force_image_size"]
    transform = T.Compose(
        [
            T.Lambda(lambda img: img.convert("RGB")),
            T.Resize((side, side), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=internvl2.IMAGENET_MEAN, std=internvl2.IMAGENET_STD),
        ]
    )
    tiles = dynamic_preprocess(image, cfg["min_dynamic_patch"], cfg["max_dynamic_patch"], side, cfg["use_thumbnail"])
    return torch.stack([transform(t) for t in tiles])


SIZES = [(56, 56), (40, 30), (200, 60), (33, 170), (500, 400), (112, 56), (7, 300), (1000, 20)]


def test_processor_tiles_equal_dynamic_preprocess(converted, cfg):
    """The converted processor (PIL backend) tiles as InternVL2's load_image does, bit for bit; AutoProcessor's
    default torchvision backend picks the same tiles and differs only by its bicubic resampling."""
    from transformers import AutoProcessor

    processor = internvl2.load_processor(converted)
    auto = AutoProcessor.from_pretrained(converted)
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert processor.image_processor.max_patches == cfg["max_dynamic_patch"] == 12
    grids = set()
    for size in SIZES:
        rng = np.random.default_rng(sum(size))
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        want = load_image(image, cfg)
        got = processor(images=[image], text=["<IMG_CONTEXT>"], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        fast = auto.image_processor(images=[image], return_tensors="pt")["pixel_values"]
        assert fast.shape == want.shape
        assert float((fast - want).abs().mean()) < 2e-3
        grids.add(len(want))
    assert len(grids) >= 4  # several tile counts were exercised (1, 3, 4, 13, ...)


# ---------------------------------------------------------------- tokenizer, template, generate, LoRA


def test_tokenizer_equals_sentencepiece_with_published_specials(converted, published):
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(published / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(converted)
    pub = json.loads((published / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    for i, entry in pub.items():
        assert tok.convert_tokens_to_ids(entry["content"]) == int(i)
    for text in ["a picture of a cat", " két macska  a házban\n", "写真 猫 12345", "zqxj unseen ÿ"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    ids = tok("<|im_start|>user\nkép<|im_end|>", add_special_tokens=False)["input_ids"]
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    assert ids == [start] + sp.encode("user\nkép") + [end]
    assert tok("kép")["input_ids"][0] == sp.bos_id()  # add_bos_token, as InternLM2Tokenizer


def internvl2_chat_ids(tokenizer, question: str, context_tokens: int) -> list[int]:
    """InternVL2's chat(): the internlm2-chat conversation (SeparatorStyle.MPT), '<image>\\n' + question, the image
    expanded to <img> + num_image_token * tiles <IMG_CONTEXT> + </img>, tokenized with the BOS token."""
    from mella.models.internvl2 import INTERNVL2_SYSTEM

    query = (
        f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|><|im_start|>user\n<image>\n{question}<|im_end|>"
        "<|im_start|>assistant\n"
    )
    query = query.replace("<image>", "<img>" + "<IMG_CONTEXT>" * context_tokens + "</img>", 1)
    return tokenizer(query)["input_ids"]


def test_loads_and_generates_on_an_image(converted):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mella.models.internvl2 import INTERNVL2_SYSTEM

    processor = internvl2.load_processor(converted)
    assert type(AutoProcessor.from_pretrained(converted)).__name__ == "InternVLProcessor"
    model = AutoModelForImageTextToText.from_pretrained(converted).eval()
    assert type(model).__name__ == "InternVLForConditionalGeneration" and model.config.model_type == "internvl"
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Írd le a képet."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|><|im_start|>user\n<IMG_CONTEXT>\n")
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    tiles = inputs["pixel_values"].shape[0]
    assert tiles == 7  # 150x90 px: the 3x2 grid (ratio 1.5, closest to 1.67 within 12 tiles) + the thumbnail
    want = internvl2_chat_ids(processor.tokenizer, "Írd le a képet.", model.config.image_seq_length * tiles)
    assert inputs["input_ids"][0].tolist() == want
    assert inputs["input_ids"][0, 0] == processor.tokenizer.bos_token_id
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4 or out[0, -1] in model.generation_config.eos_token_id


def test_lora_targets_match_converted_language_model(model):
    import re

    names = [n for n, _ in model.named_modules()]
    hit = [n for n in names if re.fullmatch(LORA_TARGETS["internvl2"], n)]
    layers = model.config.text_config.num_hidden_layers
    assert len(hit) == 7 * layers
    assert all("language_model" in n for n in hit)
    assert {n.rsplit(".", 1)[1] for n in hit} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


def test_peft_wraps_exactly_the_lora_targets(converted):
    from peft import LoraConfig, get_peft_model
    from transformers import InternVLForConditionalGeneration

    base = InternVLForConditionalGeneration.from_pretrained(converted, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS["internvl2"]))
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert len(wrapped) == 7 * base.config.text_config.num_hidden_layers
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in wrapped)


# ---------------------------------------------------------------- cache


def test_converted_once_and_cached(published, converted, hf_home, monkeypatch):
    assert converted.parent == hf_home / "mella-converted"
    assert json.loads((converted / "config.json").read_text())["model_type"] == "internvl"

    def fail(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(internvl2, "convert", fail)
    assert internvl2.native_checkpoint(published) == converted


def test_cache_key_of_a_hub_snapshot_names_repo_and_commit(published, tmp_path):
    snapshot = tmp_path / "hub" / "models--OpenGVLab--InternVL2-8B" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    assert internvl2.cache_key(snapshot) == "OpenGVLab--InternVL2-8B--0123abcd"
    key = internvl2.cache_key(published)
    assert key.startswith(published.name + "-") and key == internvl2.cache_key(published)


def test_failed_conversion_leaves_nothing(published, hf_home, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(published, broken)
    shard = broken / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated: the second shard fails after the first is written
    key = internvl2.cache_key(broken)
    stale = hf_home / "mella-converted" / f".{key}.tmp-deadbeef"  # as a killed conversion leaves it
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError, match="header"):
        internvl2.native_checkpoint(broken)
    left = [p.name for p in (hf_home / "mella-converted").iterdir() if key in p.name and not p.name.endswith(".lock")]
    assert left == []
    with pytest.raises(ValueError, match="internvl_chat"):
        internvl2.native_checkpoint(hf_home / "mella-converted" / internvl2.cache_key(published))


# ---------------------------------------------------------------- the platform's backbone and vLLM prompts

PROMPTS = [
    "Írd le a képet.",
    "Mi látható ezen a képen?",
    "이 이미지에 무엇이 있나요?",
    "Что изображено на картинке?",
    "ما الذي في هذه الصورة؟",
    "写真 猫",
    "ภาพนี้แสดงอะไร",
    "  spaces\tand\nnewlines  ",
    "x",
]
BACKBONE_SIZES = [(1, 1), (10, 10), *SIZES, (1920, 1080), (1080, 1920), (448, 56), (30, 1000)]


@pytest.fixture(scope="module")
def backbone(converted):
    from mella.models.backbones import load_backbone

    return load_backbone("internvl2", converted, min_pixels=1, max_pixels=1, max_tiles=12)


def test_backbone_ids_equal_internvl2_chat_on_many_images_and_prompts(backbone, cfg):
    """The backbone's prompt (through InternVLProcessor) is InternVL2's chat() prompt, BOS first, and its tiles
    are load_image's, on images from 1 px to 13 tiles and prompts in several scripts; serving's per-image
    expansion (image_features + expand) gives the same ids."""
    tok, bos = backbone.tokenizer, backbone.tokenizer.bos_token_id
    assert type(backbone.processor).__name__ == "InternVLProcessor" and bos is not None
    tiles_seen = set()
    for i, size in enumerate(BACKBONE_SIZES):
        image = Image.fromarray(np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        prompt = PROMPTS[i % len(PROMPTS)]
        ids, feats = backbone.encode(image, prompt)
        want_pixels = load_image(image, cfg)
        torch.testing.assert_close(torch.from_numpy(feats["pixel_values"]), want_pixels, rtol=0, atol=1e-6)
        tiles = len(want_pixels)
        tiles_seen.add(tiles)
        assert ids == internvl2_chat_ids(tok, prompt, backbone.tokens_per_tile * tiles), (size, prompt)
        assert backbone.prompt_ids(prompt)[0] == bos and ids[0] == bos and ids.count(bos) == 1
        hand_feats, tokens = backbone.image_features(image)
        assert backbone.expand(backbone.prompt_ids(prompt), tokens) == ids
        np.testing.assert_array_equal(hand_feats["pixel_values"], feats["pixel_values"])
    assert {1, 13} <= tiles_seen and len(tiles_seen) >= 5


def test_backbone_answer_only_loss_with_bos(backbone):
    from mella.models.backbones import END_OF_TURN
    from mella.train.samples import build_sample

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    s = build_sample(backbone, buf.getvalue(), PROMPTS[1], "Egy macska a házban.", 4096)
    ids, _ = backbone.encode(image, PROMPTS[1])
    assert s.input_ids[: len(ids)].tolist() == ids and (s.labels[: len(ids)] == -100).all()
    assert s.input_ids[0] == backbone.tokenizer.bos_token_id
    assert backbone.tokenizer.decode(s.input_ids[s.labels != -100]) == "Egy macska a házban." + END_OF_TURN


def test_placeholder_in_the_prompt_is_refused(backbone):
    image = Image.new("RGB", (60, 60))
    with pytest.raises(ValueError, match="expected one <IMG_CONTEXT>"):
        backbone.encode(image, "a <IMG_CONTEXT> smuggled in")


def test_vllm_args_and_prompt_for_the_converted_checkpoint(backbone, converted):
    """What vLLM 0.33 gets for the converted checkpoint (served as InternS1ForConditionalGeneration through
    transformers' InternVLProcessor): no remote code, ``max_patches`` for the tiling, the prompt with one unexpanded
    ``<IMG_CONTEXT>``. vLLM's processing (its HF processor, torchvision backend, called with the prompt and
    mm_processor_kwargs; the prompt tokenized with special tokens) then gives the backbone's ids."""
    from transformers import AutoProcessor, GotOcr2ImageProcessorFast

    from mella.models.backbones import load_backbone
    from mella.models.mllm import MLLMConfig, vllm_engine_args, vllm_prompt, vllm_requests

    args = vllm_engine_args(MLLMConfig(family="internvl2", model_path=str(converted), max_tiles=6))
    assert "trust_remote_code" not in args and args["model"] == str(converted)
    assert args["mm_processor_kwargs"] == {"max_patches": 6}
    assert args["limit_mm_per_prompt"] == {"image": 1, "video": 0}
    hf = AutoProcessor.from_pretrained(converted)  # as vLLM loads it (InternS1ProcessingInfo.get_hf_processor)
    assert isinstance(hf.image_processor, GotOcr2ImageProcessorFast) and hf.image_token == "<IMG_CONTEXT>"
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (300, 700, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    reqs = vllm_requests(backbone, [(buf.getvalue(), PROMPTS[2]), (None, PROMPTS[3])])
    prompt = reqs[0]["prompt"]
    assert prompt == vllm_prompt(backbone, PROMPTS[2], True) and prompt.count("<IMG_CONTEXT>") == 1
    assert "<image>" not in prompt and not prompt.startswith("<s>")
    assert hf.tokenizer(prompt)["input_ids"] == backbone.prompt_ids(PROMPTS[2])
    np.testing.assert_array_equal(np.asarray(reqs[0]["multi_modal_data"]["image"]), np.asarray(image))
    assert "multi_modal_data" not in reqs[1] and "<IMG_CONTEXT>" not in reqs[1]["prompt"]
    out = hf(text=[prompt], images=[image], **args["mm_processor_kwargs"], return_tensors="np")
    six_tiles = load_backbone("internvl2", converted, min_pixels=1, max_pixels=1, max_tiles=6)
    ids, feats = six_tiles.encode(image, PROMPTS[2])
    assert out["input_ids"][0].tolist() == ids
    # 700x300 px: the 2x1 grid + thumbnail within 6 tiles (the 5x2 grid + thumbnail within the checkpoint's 12)
    assert out["pixel_values"].shape == feats["pixel_values"].shape == (3, 3, 56, 56)
    assert len(backbone.encode(image, PROMPTS[2])[1]["pixel_values"]) == 11
    assert float(np.abs(out["pixel_values"] - feats["pixel_values"]).mean()) < 2e-3  # torch vs PIL bicubic
    with pytest.raises(ValueError, match="expected 1 <IMG_CONTEXT>"):
        vllm_prompt(backbone, "two <IMG_CONTEXT>", True)
    qwen = vllm_engine_args(MLLMConfig(family="qwen2-vl", model_path="Qwen/Qwen2-VL-7B-Instruct"))
    assert qwen["mm_processor_kwargs"] == {"min_pixels": 4 * 28 * 28, "max_pixels": 1280 * 28 * 28}
    assert qwen["limit_mm_per_prompt"] == {"image": 1} and "trust_remote_code" not in qwen
