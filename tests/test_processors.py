"""Backbones go through transformers' real processors; where the platform still expands an image placeholder
itself (serving encodes multi-image chats image by image), it is shown equal to the processor here, on many
images (sizes, aspect ratios, real miniweb photos) and prompts (several scripts). Checkpoint: the tiny
Qwen/Qwen2-VL-7B-Instruct in its published layout, from an offline HF cache (tests/hf_cache.py).
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from hf_cache import QWEN2_VL, hf_home, offline_hub  # noqa: F401 - pytest fixtures requested by name
from PIL import Image

from mella.models.backbones import END_OF_TURN, load_backbone
from mella.models.hub import resolve_model
from mella.train.samples import build_sample

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 64
PROMPTS = [
    "Mi látható ezen a képen?",
    "이 이미지에 무엇이 있나요?",
    "Что изображено на картинке?",
    "ما الذي في هذه الصورة؟",
    "Hình ảnh này có gì?",
    "ภาพนี้แสดงอะไร",
    "Describe the image. 🙂",
    "  spaces\tand\nnewlines  ",
    "x",
]
SIZES = [
    (10, 10),
    (28, 28),
    (56, 84),
    (100, 37),
    (37, 100),
    (640, 480),
    (480, 640),
    (1000, 30),
    (30, 1000),
    (333, 333),
    (1920, 1080),
    (57, 29),
]


def _images() -> list[Image.Image]:
    from conftest_train import miniweb_pairs

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]
    for pair in miniweb_pairs("hu")[:6]:
        imgs.append(Image.open(io.BytesIO(pair["data"])).convert("RGB"))
    return imgs


@pytest.fixture(scope="module")
def qwen(hf_home):  # noqa: F811 - a pytest fixture requested by name
    import os

    old = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE")}
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
    try:
        path = resolve_model(QWEN2_VL)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return load_backbone("qwen2-vl", path, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, max_tiles=4)


def test_qwen2vl_uses_its_processor(qwen):
    assert type(qwen.processor).__name__ == "Qwen2VLProcessor"
    assert qwen.processor.image_processor is qwen.image_processor


def test_hand_expansion_equals_the_processor_on_many_images_and_prompts(qwen):
    rng = random.Random(0)
    imgs = _images()
    assert len(imgs) >= 15
    for i, img in enumerate(imgs):
        prompt = PROMPTS[i % len(PROMPTS)] if i < len(PROMPTS) else rng.choice(PROMPTS) + " " + rng.choice(PROMPTS)
        ids, feats = qwen.encode(img, prompt)
        hand_feats, tokens = qwen.image_features(img)
        assert qwen.expand(qwen.prompt_ids(prompt), tokens) == ids, (img.size, prompt)
        np.testing.assert_array_equal(hand_feats["image_grid_thw"], feats["image_grid_thw"])
        np.testing.assert_allclose(hand_feats["pixel_values"], feats["pixel_values"], rtol=0, atol=1e-6)
        n = int(feats["image_grid_thw"].prod()) // qwen.image_processor.merge_size**2
        assert ids.count(qwen.tokenizer.convert_tokens_to_ids("<|image_pad|>")) == n
        assert MIN_PIXELS <= n * 28 * 28 <= MAX_PIXELS


def test_answer_only_loss_through_the_processor(qwen):
    """Labels are -100 on every prompt and image token; the supervised part is exactly answer + <|im_end|>."""
    img = _images()[5]
    answer = "Egy piros alma az asztalon."
    s = build_sample(qwen, _png(img), PROMPTS[0], answer, 4096)
    ids, _ = qwen.encode(img, PROMPTS[0])
    assert s.input_ids[: len(ids)].tolist() == ids and (s.labels[: len(ids)] == -100).all()
    assert qwen.tokenizer.decode(s.input_ids[s.labels != -100]) == answer + END_OF_TURN
    batch = qwen.collate(
        {
            "input_ids": [s.input_ids],
            "labels": [s.labels],
            "pixel_values": [s.features["pixel_values"]],
            "image_grid_thw": [s.features["image_grid_thw"]],
        }
    )
    chat = qwen.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[0]}]}],
        chat_template=qwen.template,
        add_generation_prompt=True,
        tokenize=False,
    )
    out = qwen.processor(text=[chat], images=[img], return_tensors="pt")
    assert out["input_ids"][0].tolist() == ids
    assert batch["mm_token_type_ids"][0, : len(ids)].tolist() == out["mm_token_type_ids"][0].tolist()


def test_placeholder_in_the_prompt_is_refused(qwen):
    with pytest.raises(ValueError, match="expected one <|image_pad|>"):
        qwen.encode(_images()[0], "a <|image_pad|> smuggled in")


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
