"""The two MLLM backbones of the paper (4.1.3, Table 7): Qwen2-VL-7B-Instruct and InternVL2-8B.

Each backbone knows: its chat template (Jinja, from the model's own repository), how an image and a prompt
become model inputs, how to collate a padded batch, and how to load the model class from transformers.

Qwen2-VL goes through its real processor (``Qwen2VLProcessor``: image processor, placeholder expansion,
``mm_token_type_ids``), loaded with ``from_pretrained`` from the checkpoint: :meth:`Backbone.encode`.
Serving encodes multi-image chats image by image (:meth:`Backbone.image_features` + :meth:`Backbone.expand`);
tests/test_processors.py shows that path equal to the processor's output on many images and prompts.

InternVL2 runs through transformers' native ``InternVLForConditionalGeneration``, i.e. an ``-hf``
checkpoint (``model_type: internvl``; InternVL2-8B as published is converted by mella.models.hub), and its real
processor (``InternVLProcessor`` with GotOcr2's PIL image processor: dynamic 448-px tiling, max tiles + thumbnail,
``<img>`` + tiles × ``image_seq_length`` ``<IMG_CONTEXT>`` + ``</img>``); the chat format is InternVL2's
``internlm2-chat`` conversation template (InternVL ``conversation.py``), with its system message, tokenized with
the BOS token ``<s>`` first, as InternVL2's ``chat()`` and its fine-tuning code do.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

#: Qwen2-VL-7B-Instruct ``chat_template.json`` (verbatim, Qwen/Qwen2-VL-7B-Instruct).
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# InternVL2's chat template lives with its checkpoint conversion (the converted checkpoint carries it)
from mella.models.internvl2 import INTERNVL2_TEMPLATE  # noqa: E402 - kept beside its conversion

END_OF_TURN = "<|im_end|>"  # both templates close a turn with it; it is part of the answer's labels


def decode_image(data: bytes) -> Image.Image:
    """Image file bytes → RGB PIL image (first frame). Raises ``PIL.UnidentifiedImageError``/``OSError``."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


@dataclass
class Backbone:
    """Shared logic; subclasses set the template, placeholder and image handling."""

    name: str
    tokenizer: Any
    image_processor: Any
    template: str
    placeholder: str  # token the template emits once per image
    #: tokenize a chat with the tokenizer's own special tokens (InternVL2: ``<s>`` first; Qwen2-VL adds none)
    add_special_tokens: bool = False

    def chat_text(self, prompt: str) -> str:
        """The chat template on one user turn (image placeholder + ``prompt``) + the assistant header, as text."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, add_generation_prompt=True, tokenize=False
        )

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a rendered chat ``text`` as the model's own inference and training code tokenize it
        (InternVL2: ``tokenizer(query)``, BOS first; Qwen2-VL: no special tokens added)."""
        return self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of system + user turn (image placeholder + ``prompt``) + the assistant header."""
        return self.text_ids(self.chat_text(prompt))

    def check_placeholder(self, text: str) -> None:
        """Raise ``ValueError`` unless ``text`` holds exactly one image placeholder (a prompt that itself contains
        the placeholder string would desynchronise features and tokens)."""
        if text.count(self.placeholder) != 1:
            raise ValueError(f"expected one {self.placeholder} in the prompt, found {text.count(self.placeholder)}")

    def answer_ids(self, answer: str) -> list[int]:
        """Token ids of the answer followed by the end-of-turn token (the supervised part)."""
        return self.tokenizer(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]

    def expand(self, ids: list[int], image_tokens: list[int]) -> list[int]:
        """Replace the single image placeholder in ``ids`` with ``image_tokens``.

        Raises ``ValueError`` unless the placeholder occurs exactly once (a prompt or template that
        itself contains the placeholder string would otherwise desynchronise features and tokens).
        """
        pid = self.tokenizer.convert_tokens_to_ids(self.placeholder)
        where = [i for i, t in enumerate(ids) if t == pid]
        if len(where) != 1:
            raise ValueError(f"expected one {self.placeholder} in the prompt, found {len(where)}")
        i = where[0]
        return ids[:i] + image_tokens + ids[i + 1 :]

    def encode(self, img: Image.Image, prompt: str) -> tuple[list[int], dict[str, np.ndarray]]:
        """Prompt ids (system + user turn with the image's tokens + assistant header) and the image features.

        This base version expands the placeholder by hand (:meth:`expand`); Qwen2-VL uses its processor.
        Raises ``ValueError`` as :meth:`expand`.
        """
        feats, tokens = self.image_features(img)
        return self.expand(self.prompt_ids(prompt), tokens), feats

    def check_image(self, width: int, height: int) -> None:
        """Raise ``ValueError`` when this backbone's image processor cannot take a ``width`` × ``height`` px image.

        Checked from the size alone (cheap: before pixels are processed). The base class accepts any size.
        """

    def _pad(self, rows: list[np.ndarray], value: int) -> torch.Tensor:
        out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        return out

    def collate_text(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask``/``labels`` (int64, ``[B, L]``; labels padded with -100)."""
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        ids = self._pad(list(batch["input_ids"]), pad)
        mask = self._pad([np.ones(len(r)) for r in batch["input_ids"]], 0)
        return {"input_ids": ids, "attention_mask": mask, "labels": self._pad(list(batch["labels"]), -100)}


class Qwen2VL(Backbone):
    """Qwen2-VL: dynamic resolution; ``grid_thw.prod() // merge_size**2`` ``<|image_pad|>`` tokens per image."""

    feature_names = ("pixel_values", "image_grid_thw")

    def __init__(self, model_path: str, min_pixels: int, max_pixels: int):
        from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

        # the PIL backend (Qwen2-VL's reference resizing, as the platform used before the processor); the
        # torchvision backend resamples with torch's bicubic
        pil = Qwen2VLImageProcessorPil.from_pretrained(model_path, min_pixels=min_pixels, max_pixels=max_pixels)
        self.processor = Qwen2VLProcessor.from_pretrained(model_path, image_processor=pil)
        # from_pretrained hands the image_processor kwarg to the tokenizer too, whose save_pretrained then fails
        # (a processor object in tokenizer_config.json): it is no tokenizer setting
        self.processor.tokenizer.init_kwargs.pop("image_processor", None)
        super().__init__(
            "qwen2-vl", self.processor.tokenizer, self.processor.image_processor, QWEN2_VL_TEMPLATE, "<|image_pad|>"
        )

    def encode(self, img: Image.Image, prompt: str) -> tuple[list[int], dict[str, np.ndarray]]:
        """Through ``Qwen2VLProcessor``: prompt ids with ``<|image_pad|>`` expanded by the processor;
        ``pixel_values`` float32 ``[patches, C*T*P*P]``, ``image_grid_thw`` int64 ``[1, 3]``.

        Raises ``ValueError`` unless the chat holds exactly one image placeholder (a prompt that itself
        contains ``<|image_pad|>`` would desynchronise features and tokens).
        """
        text = self.chat_text(prompt)
        self.check_placeholder(text)
        out = self.processor(text=[text], images=[img], return_tensors="np")
        feats = {
            "pixel_values": out["pixel_values"].astype(np.float32),
            "image_grid_thw": out["image_grid_thw"].astype(np.int64),
        }
        return out["input_ids"][0].tolist(), feats

    def check_image(self, width: int, height: int) -> None:
        """Run transformers' own ``smart_resize`` (Qwen2-VL image processor) on the size: it raises ``ValueError``
        when the aspect ratio is over 200 (e.g. 4096×1 px), which the processor would raise in the middle of a batch."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        p = self.image_processor
        smart_resize(
            height,
            width,
            factor=p.patch_size * p.merge_size,
            min_pixels=p.size.shortest_edge,
            max_pixels=p.size.longest_edge,
        )

    def image_features(self, img: Image.Image) -> tuple[dict[str, np.ndarray], list[int]]:
        """``pixel_values`` float32 ``[patches, C*T*P*P]``, ``image_grid_thw`` int64 ``[1, 3]``; and the image tokens."""
        out = self.image_processor(images=[img], return_tensors="np")
        grid = out["image_grid_thw"].astype(np.int64)
        n = int(grid.prod()) // self.image_processor.merge_size**2
        feats = {"pixel_values": out["pixel_values"].astype(np.float32), "image_grid_thw": grid}
        return feats, [self.tokenizer.convert_tokens_to_ids(self.placeholder)] * n

    def collate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Model inputs; ``mm_token_type_ids`` (1 on image tokens) is required by transformers 5 Qwen2-VL."""
        out = self.collate_text(batch)
        out["pixel_values"] = torch.from_numpy(np.concatenate(list(batch["pixel_values"])))
        out["image_grid_thw"] = torch.from_numpy(np.concatenate(list(batch["image_grid_thw"])))
        image_id = self.tokenizer.convert_tokens_to_ids(self.placeholder)
        out["mm_token_type_ids"] = (out["input_ids"] == image_id).int()
        return out

    @staticmethod
    def model_class():
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration


class InternVL2(Backbone):
    """InternVL2 (-hf layout) through ``InternVLProcessor``: dynamic 448 px tiling; ``image_seq_length`` context
    tokens per tile."""

    feature_names = ("pixel_values",)

    def __init__(self, model_path: str, max_tiles: int):
        from mella.models.internvl2 import load_processor

        self.processor = load_processor(model_path, max_tiles=max_tiles)
        self.tokens_per_tile = self.processor.image_seq_length
        super().__init__(
            "internvl2",
            self.processor.tokenizer,
            self.processor.image_processor,
            INTERNVL2_TEMPLATE,
            "<IMG_CONTEXT>",
            add_special_tokens=True,
        )

    def encode(self, img: Image.Image, prompt: str) -> tuple[list[int], dict[str, np.ndarray]]:
        """Through ``InternVLProcessor``: prompt ids (``<s>`` first, the image as ``<img>`` + tiles ×
        ``image_seq_length`` ``<IMG_CONTEXT>`` + ``</img>``); ``pixel_values`` float32 ``[tiles, 3, H, W]``.

        Raises ``ValueError`` unless the chat holds exactly one ``<IMG_CONTEXT>``.
        """
        text = self.chat_text(prompt)
        self.check_placeholder(text)
        out = self.processor(text=[text], images=[img], return_tensors="np")
        return out["input_ids"][0].tolist(), {"pixel_values": out["pixel_values"].astype(np.float32)}

    def image_features(self, img: Image.Image) -> tuple[dict[str, np.ndarray], list[int]]:
        """``pixel_values`` float32 ``[tiles, 3, H, W]``; the image's tokens as the processor expands one
        ``<IMG_CONTEXT>`` (``<img>`` + tiles × ``image_seq_length`` ``<IMG_CONTEXT>`` + ``</img>``)."""
        out = self.processor(text=[self.placeholder], images=[img], add_special_tokens=False, return_tensors="np")
        return {"pixel_values": out["pixel_values"].astype(np.float32)}, out["input_ids"][0].tolist()

    def collate(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.collate_text(batch)
        out["pixel_values"] = torch.from_numpy(np.concatenate(list(batch["pixel_values"])))
        return out

    @staticmethod
    def model_class():
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration


def load_backbone(name: str, model_path: str, *, min_pixels: int, max_pixels: int, max_tiles: int) -> Backbone:
    """Tokenizer + image processor of ``name`` (``qwen2-vl`` | ``internvl2``) from a local checkpoint dir."""
    if name == "qwen2-vl":
        return Qwen2VL(str(model_path), min_pixels, max_pixels)
    if name == "internvl2":
        return InternVL2(str(model_path), max_tiles)
    raise ValueError(f"unknown backbone {name!r}; expected qwen2-vl or internvl2")


def load_model(name: str, model_path: str, dtype: torch.dtype) -> torch.nn.Module:
    """The transformers model of backbone ``name`` from ``model_path`` in ``dtype``."""
    cls = {"qwen2-vl": Qwen2VL, "internvl2": InternVL2}[name].model_class()
    return cls.from_pretrained(str(model_path), dtype=dtype)
