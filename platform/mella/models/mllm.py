"""One MLLM wrapper for the D_ling stages (categorise, caption, MLLM translation): batched generation
with Qwen2-VL or InternVL2, through transformers (CPU/GPU) or vLLM (GPU nodes, when installed).

Prompt building and image features come from :mod:`mella.models.backbones` (the chat templates of the
two model families and their processors: ``Backbone.encode``), so training and
data generation format prompts identically. Generation batches are **left-padded** (decoder-only
models continue from the last position), and Qwen2-VL gets ``mm_token_type_ids`` (required by
transformers 5, see STACK.md).

The vLLM path (``backend="vllm"``, or ``"auto"`` when ``import vllm`` works and CUDA is available) uses
``vllm.LLM.generate`` with ``multi_modal_data``; vLLM expands the image placeholder itself. Its engine arguments
and prompts are built by :func:`vllm_engine_args` and :func:`vllm_prompt` (unit-tested on CPU); the calls into vLLM
are not exercised on CPU-only machines (vLLM has no CPU wheel here) — see docs/d_ling.md.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import time
import uuid
from typing import Literal

from pydantic import Field

from mella.resources import Strict

# torch and the backbones (transformers) are imported where a model is built or run: this module's
# configs are imported by mella.config, i.e. by every Ray worker of build_corpus, most of which run no model
# (importing torch cost ~2 s of CPU per worker on the 2-core machine).


class GenerationConfig(Strict):
    """Decoding parameters (transformers ``generate`` / vLLM ``SamplingParams`` names)."""

    max_new_tokens: int = Field(512, ge=1, description="tokens generated at most per answer")
    min_new_tokens: int = Field(0, ge=0, description="tokens generated at least (EOS suppressed before)")
    do_sample: bool = Field(False, description="False = greedy (temperature/top_p ignored)")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.05, gt=0)
    num_beams: int = Field(1, ge=1, description="beam search width (transformers backend only)")
    suppress_special_tokens: bool = Field(
        True, description="never emit control tokens other than end-of-turn (image placeholders, box markers...)"
    )


class MLLMConfig(Strict):
    """Which MLLM to load and how (paper 3.1.1: InternVL; 4.1.3: Qwen2-VL-7B-Instruct, InternVL2-8B)."""

    family: Literal["qwen2-vl", "internvl2"] = "qwen2-vl"
    model_path: str = Field(..., description="local HF checkpoint dir (or a hub id on a cluster with hub access)")
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU"
    )
    device: str | None = Field(None, description="torch device; default cuda if available, else cpu")
    min_pixels: int = Field(4 * 28 * 28, gt=0, description="Qwen2-VL image budget, px (Qwen2-VL default)")
    max_pixels: int = Field(1280 * 28 * 28, gt=0, description="Qwen2-VL image budget, px (Qwen2-VL-7B model card)")
    max_tiles: int = Field(6, ge=1, description="InternVL2 dynamic-resolution tiles of 448 px")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM only")
    max_model_len: int = Field(8192, ge=256, description="vLLM only: context length")


def vllm_available() -> bool:
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_engine_args(cfg: MLLMConfig) -> dict:
    """Keyword arguments of ``vllm.LLM`` for ``cfg`` (vLLM 0.33).

    Qwen2-VL: ``mm_processor_kwargs`` ``min_pixels``/``max_pixels`` (``Qwen2VLProcessor``'s image budget).
    InternVL2: ``cfg.model_path`` is transformers' native InternVL checkpoint (mella.models.hub converts InternVL2-8B
    as published), which vLLM serves as ``InternS1ForConditionalGeneration`` through transformers'
    ``InternVLProcessor`` (vLLM ``model_executor/models/interns1.py``): no remote code; the tiling budget is the
    GotOcr2 image processor's ``max_patches`` (InternVL2's ``max_num``); the video modality is switched off
    (InternVL2 has no video token; the converted tokenizer names ``<IMG_CONTEXT>`` for it).
    """
    args = {
        "model": cfg.model_path,
        "dtype": cfg.dtype,
        "limit_mm_per_prompt": {"image": 1},
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
    }
    if cfg.family == "qwen2-vl":
        args["mm_processor_kwargs"] = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    else:
        args["mm_processor_kwargs"] = {"max_patches": cfg.max_tiles}
        args["limit_mm_per_prompt"]["video"] = 0
    return args


def vllm_prompt(bb, prompt: str, with_image: bool) -> str:
    """The text prompt vLLM gets for one item: the backbone's chat template on one user turn, the image as the
    placeholder vLLM's processor replaces (Qwen2-VL ``<|vision_start|><|image_pad|><|vision_end|>``; InternVL2
    ``<IMG_CONTEXT>``, ``InternS1ForConditionalGeneration.get_placeholder_str``), unexpanded. No BOS in the text:
    vLLM tokenizes the prompt with the tokenizer's special tokens (InternVL2's ``<s>``), as :meth:`Backbone.text_ids`.

    ``bb``: a :class:`mella.models.backbones.Backbone`. Raises ``ValueError`` when ``prompt`` itself holds the image
    placeholder (vLLM would count one image too many).
    """
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
    text = bb.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], chat_template=bb.template, add_generation_prompt=True, tokenize=False
    )
    if text.count(bb.placeholder) != int(with_image):
        raise ValueError(
            f"expected {int(with_image)} {bb.placeholder} in the prompt, found {text.count(bb.placeholder)}"
        )
    return text


def vllm_requests(bb, items: list[tuple[bytes | None, str]]) -> list[dict]:
    """vLLM prompt dicts for ``(image bytes | None, prompt)`` items: ``{"prompt": str}`` (:func:`vllm_prompt`) plus
    ``{"multi_modal_data": {"image": PIL.Image}}`` (RGB) when the item has an image.

    Raises ``PIL.UnidentifiedImageError``/``OSError`` for undecodable image bytes, ``ValueError`` as :func:`vllm_prompt`.
    """
    from mella.models.backbones import decode_image

    reqs = []
    for img, prompt in items:
        req = {"prompt": vllm_prompt(bb, prompt, img is not None)}
        if img is not None:
            req["multi_modal_data"] = {"image": decode_image(img)}
        reqs.append(req)
    return reqs


def log_batch(stats_dir: str | None, stage: str, rows: int, seconds: float, **extra) -> None:
    """Append one JSON record per processed batch to ``stats_dir/<stage>-<uuid>.json`` (no-op when None).

    Fields: ``stage``, ``rows`` (batch size), ``seconds`` (wall time of the model call), ``pid`` (actor),
    ``max_rss_mb`` (peak resident memory of the actor process so far, MiB).
    Used for throughput measurement on real clusters and by the tests to check batching.
    """
    if not stats_dir:
        return
    os.makedirs(stats_dir, exist_ok=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    rec = {
        "stage": stage,
        "rows": rows,
        "seconds": round(seconds, 4),
        "pid": os.getpid(),
        "max_rss_mb": round(rss, 1),
        **extra,
    }
    path = os.path.join(stats_dir, f"{stage}-{uuid.uuid4().hex}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(rec, f)
    os.replace(path + ".tmp", path)


class MLLM:
    """A loaded MLLM. ``generate(items)`` answers a list of ``(image bytes | None, prompt)`` pairs.

    Raises (at construction): ``ValueError`` for an unknown family; ``ImportError`` when
    ``backend="vllm"`` and vLLM is not installed; transformers' ``OSError`` for a missing checkpoint.
    """

    def __init__(self, cfg: MLLMConfig) -> None:
        import torch

        from mella.models.backbones import END_OF_TURN, load_backbone, load_model

        self.cfg = cfg
        self.bb = load_backbone(
            cfg.family, cfg.model_path, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, max_tiles=cfg.max_tiles
        )
        self.tok = self.bb.tokenizer
        eos = {self.tok.eos_token_id, self.tok.convert_tokens_to_ids(END_OF_TURN)}
        self.eos_ids = sorted(i for i in eos if i is not None and i != self.tok.unk_token_id)
        self.control_ids = sorted(i for i, t in self.tok.added_tokens_decoder.items() if t.special and i not in eos)
        self.name = f"{cfg.family}:{os.path.basename(os.path.normpath(cfg.model_path))}"
        use_vllm = cfg.backend == "vllm" or (cfg.backend == "auto" and vllm_available())
        if use_vllm:
            self._init_vllm()
        else:
            self.backend = "transformers"
            self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            dtype = {
                "auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                "float32": torch.float32,
                "bfloat16": torch.bfloat16,
                "float16": torch.float16,
            }[cfg.dtype]
            self.model = load_model(cfg.family, cfg.model_path, dtype).to(self.device).eval()

    # --------------------------------------------------------------------------------- prompts
    def _text_ids(self, prompt: str) -> list[int]:
        text = self.tok.apply_chat_template(
            [{"role": "user", "content": prompt}],
            chat_template=self.bb.template,
            add_generation_prompt=True,
            tokenize=False,
        )
        return self.bb.text_ids(text)

    def _encode(self, image: bytes | None, prompt: str) -> tuple[list[int], dict]:
        from mella.models.backbones import decode_image

        if image is None:
            return self._text_ids(prompt), {}
        return self.bb.encode(decode_image(image), prompt)

    # ------------------------------------------------------------------------------ generation
    def generate(self, items: list[tuple[bytes | None, str]], gen: GenerationConfig) -> list[str]:
        """Answers (stripped strings, special tokens removed), one per item, in order; one model call.

        Raises ``PIL.UnidentifiedImageError``/``OSError`` for undecodable image bytes.
        """
        import torch

        if not items:
            return []
        if self.backend == "vllm":
            return self._generate_vllm(items, gen)
        encoded = [self._encode(img, prompt) for img, prompt in items]
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, (ids, _) in enumerate(encoded):  # left padding
            input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        inputs = {"input_ids": input_ids, "attention_mask": mask}
        with_image = [f for _, f in encoded if f]
        if with_image:
            inputs["pixel_values"] = torch.cat([torch.from_numpy(f["pixel_values"]) for f in with_image])
            if self.cfg.family == "qwen2-vl":
                inputs["image_grid_thw"] = torch.cat([torch.from_numpy(f["image_grid_thw"]) for f in with_image])
        if self.cfg.family == "qwen2-vl":
            image_id = self.tok.convert_tokens_to_ids(self.bb.placeholder)
            inputs["mm_token_type_ids"] = (input_ids == image_id).int()
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        kwargs = dict(
            max_new_tokens=gen.max_new_tokens,
            min_new_tokens=gen.min_new_tokens,
            do_sample=gen.do_sample,
            repetition_penalty=gen.repetition_penalty,
            num_beams=gen.num_beams,
            pad_token_id=pad,
            eos_token_id=self.eos_ids,
        )
        if gen.suppress_special_tokens and self.control_ids:
            kwargs["suppress_tokens"] = self.control_ids
        if gen.do_sample:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        return [t.strip() for t in self.tok.batch_decode(out[:, width:], skip_special_tokens=True)]

    # ------------------------------------------------------------------------------------ vLLM
    def _init_vllm(self) -> None:  # pragma: no cover - needs vLLM + CUDA (GPU nodes)
        from vllm import LLM

        self.backend = "vllm"
        self.llm = LLM(**vllm_engine_args(self.cfg))

    def _generate_vllm(self, items, gen: GenerationConfig) -> list[str]:  # pragma: no cover - GPU nodes
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=gen.max_new_tokens,
            min_tokens=gen.min_new_tokens,
            temperature=gen.temperature if gen.do_sample else 0.0,
            top_p=gen.top_p if gen.do_sample else 1.0,
            repetition_penalty=gen.repetition_penalty,
            stop_token_ids=self.eos_ids,
        )
        outs = self.llm.generate(vllm_requests(self.bb, items), params, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]


def timed(fn, *args, **kwargs):
    """``(result, seconds)`` of ``fn(*args, **kwargs)`` (wall clock)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
