"""The base MLLM with per-language PEFT LoRA adapters, and batched chat generation.

One :class:`VLMEngine` holds one base model (loaded once) and any number of LoRA adapters loaded into
it by name (PEFT multi-adapter: ``load_adapter`` / ``set_adapter`` / ``delete_adapter``); the base model
alone runs under ``disable_adapter()``. PEFT's active adapter is state shared by every caller, so
``set_adapter`` + ``generate`` (and loading/deleting) run under one lock (STACK.md: Serve runs sync
work in a thread pool). Used by the Ray Serve deployment (mella.serving.app) and by Ray Data batch
inference (mella.evaluation).

Prompts use the backbone's own chat template and image handling from :mod:`mella.models.backbones`
(the same code that built the training samples), so serving sees exactly the training format:
Qwen2-VL's template with one ``<|image_pad|>`` per image, expanded to
``grid_thw.prod() // merge_size**2`` tokens; ``mm_token_type_ids`` (1 on image tokens) as transformers
5 requires. Batches are left-padded; decoding is greedy unless ``temperature > 0``.

Failure isolation: :meth:`VLMEngine.encode` validates one request completely (sampling numbers, text, image
size against the backbone, image features, token budget) and raises only :class:`RequestError`; it takes no
lock (the tokenizer is called with fixed settings, so it mutates no shared state), so the Serve deployment
runs it per request in a thread before batching. :meth:`VLMEngine.generate_encoded` retries a batch that raises
one request at a time, so only a request that fails alone gets :class:`GenerationFailed`.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mella.models.backbones import decode_image, load_backbone, load_model
from mella.serving.protocol import GenerationFailed, GenRequest, GenResult, RequestError, TextRules, check_sampling

log = logging.getLogger(__name__)


@dataclass
class _Encoded:
    """One validated request: prompt token ids (image tokens expanded), image features, the request."""

    ids: list[int]
    features: list[dict[str, np.ndarray]] = field(default_factory=list)
    req: GenRequest | None = None


class VLMEngine:
    """Base model + named LoRA adapters on one device.

    Args:
        backbone: ``qwen2-vl`` | ``internvl2`` (mella.models.backbones).
        model_path: local HF checkpoint directory of the base model.
        device: ``cpu`` / ``cuda`` / ``cuda:N``; dtype is bfloat16 on CUDA, float32 on CPU unless given.
        min_pixels, max_pixels: Qwen2-VL image budget (pixels; visual tokens = pixels / 28**2).
        max_tiles: InternVL2 dynamic tiles.
        max_prompt_tokens: longer prompts (image tokens included) raise :class:`RequestError`; longer texts than
            ``max_prompt_tokens`` × the longest vocabulary entry are refused before tokenising (:class:`TextRules`).
    """

    def __init__(
        self,
        backbone: str,
        model_path: str | Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        min_pixels: int = 4 * 28 * 28,
        max_pixels: int = 1024 * 28 * 28,
        max_tiles: int = 6,
        max_prompt_tokens: int = 8192,
    ):
        self.bb = load_backbone(
            backbone, str(model_path), min_pixels=min_pixels, max_pixels=max_pixels, max_tiles=max_tiles
        )
        dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        self.model: Any = load_model(backbone, str(model_path), dtype).to(device).eval()
        self.device = device
        self.max_prompt_tokens = max_prompt_tokens
        tok = self.bb.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.stop_ids = sorted({tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id} - {None})
        self.image_id = tok.convert_tokens_to_ids(self.bb.placeholder)
        self.rules = TextRules.from_tokenizer(tok, max_prompt_tokens, extra=[self.bb.placeholder])
        self.lock = threading.Lock()
        self.loaded: dict[str, Path] = {}
        self.temporary_loads = 0  # adapters loaded just for one batch (evicted between lookup and use)

    # ------------------------------------------------------------------------------------- adapters
    def _load(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, is_trainable=False)
        self.model.eval()
        self.loaded[name] = Path(path)

    def _unload(self, name: str) -> None:
        if self.loaded.pop(name, None) is None:
            return
        if self.loaded:
            self.model.delete_adapter(name)
        else:  # PEFT cannot delete its last adapter cleanly (disable_adapter() then fails): unwrap instead
            self.model = self.model.unload()

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load the PEFT adapter directory ``path`` under ``name`` (no-op when already loaded)."""
        with self.lock:
            if name not in self.loaded:
                self._load(name, Path(path))

    def unload_adapter(self, name: str) -> None:
        """Delete adapter ``name`` from the model (no-op when not loaded)."""
        with self.lock:
            self._unload(name)

    # ------------------------------------------------------------------------------------- encoding
    def encode(self, req: GenRequest) -> _Encoded:
        """Validate and encode one request: everything that can fail because of the request fails here, before
        it joins a batch. Raises :class:`RequestError` (never anything else for a request's content).

        Order (cheapest first): sampling numbers (:func:`check_sampling`), text (:class:`TextRules`: character
        budget, lone surrogates, every special token of the tokenizer), chat template + tokenising, image size
        against the backbone (``check_image``, e.g. Qwen2-VL's aspect ratio ≤ 200), image features, token budget.
        """
        check_sampling(req)
        texts = [(None, v) for m in req.messages for kind, v in m["parts"] if kind != "image"]
        for _, v in texts:
            if not isinstance(v, str):
                raise RequestError(f"text part must be a string, got {type(v).__name__}")
        self.rules.check(texts)
        msgs, images = [], []
        for m in req.messages:
            content = []
            for kind, value in m["parts"]:
                if kind == "image":
                    images.append(value)
                    content.append({"type": "image"})
                else:
                    content.append({"type": "text", "text": value})
            msgs.append({"role": m["role"], "content": content})
        text = self.bb.tokenizer.apply_chat_template(
            msgs, chat_template=self.bb.template, add_generation_prompt=True, tokenize=False
        )
        ids = self.bb.text_ids(text)
        slots = [i for i, t in enumerate(ids) if t == self.image_id]
        if len(slots) != len(images):
            raise RequestError(f"{len(images)} image(s) but {len(slots)} image placeholders in the prompt")
        out = _Encoded([], req=req)
        start = 0
        for slot, data in zip(slots, images):
            out.ids += ids[start:slot] + self._image_tokens(data, out.features)
            start = slot + 1
        out.ids += ids[start:]
        if len(out.ids) > self.max_prompt_tokens:
            raise RequestError(
                f"prompt has {len(out.ids)} tokens, more than max_prompt_tokens={self.max_prompt_tokens}",
                "prompt_too_long",
                "messages",
            )
        return out

    def _image_tokens(self, data: bytes, features: list) -> list[int]:
        try:
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
        except Exception as exc:
            raise RequestError(f"image cannot be decoded: {exc}", "invalid_image") from exc
        try:
            self.bb.check_image(width, height)
        except ValueError as exc:
            raise RequestError(
                f"image of {width}x{height} px cannot be used by {self.bb.name}: {exc}", "invalid_image"
            ) from exc
        try:
            img = decode_image(data)
            feats, tokens = self.bb.image_features(img)
        except Exception as exc:
            raise RequestError(f"image cannot be processed: {type(exc).__name__}: {exc}", "invalid_image") from exc
        features.append(feats)
        return tokens

    def _collate(self, batch: list[_Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e.ids) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):  # left padding: generation continues every row at the same position
            ids[i, width - len(e.ids) :] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, width - len(e.ids) :] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        feats = [f for e in batch for f in e.features]
        if feats:
            for key in self.bb.feature_names:
                out[key] = torch.from_numpy(np.concatenate([f[key] for f in feats]))
            if "pixel_values" in out:
                out["pixel_values"] = out["pixel_values"].to(self.model.dtype)
        if self.bb.name == "qwen2-vl":
            out["mm_token_type_ids"] = (ids == self.image_id).int()
        return {k: v.to(self.device) for k, v in out.items()}

    # ----------------------------------------------------------------------------------- generation
    def generate(
        self, requests: list[GenRequest], adapters: list[str | None] | None = None, paths: dict[str, Path] | None = None
    ) -> list[GenResult | RequestError | GenerationFailed]:
        """Generate for ``requests``; ``adapters[i]`` names request i's adapter (None = base model).

        Each request is validated and encoded on its own (:meth:`encode`); a request that fails comes back as
        its :class:`RequestError` and the others still run (:meth:`generate_encoded`).
        """
        items: list[_Encoded | RequestError] = []
        for r in requests:
            try:
                items.append(self.encode(r))
            except RequestError as exc:
                items.append(exc)
        return self.generate_encoded(items, adapters, paths)

    def generate_encoded(
        self,
        items: list[_Encoded | RequestError],
        adapters: list[str | None] | None = None,
        paths: dict[str, Path] | None = None,
    ) -> list[GenResult | RequestError | GenerationFailed]:
        """Generate for already encoded requests (a :class:`RequestError` item is passed through).

        One ``generate`` call per distinct sampling setting serves every adapter of the batch at once
        (PEFT mixed-adapter batches: ``adapter_names=[...]``, ``"__base__"`` for the base model), so a
        batch mixing languages costs about what a single-language batch costs. If that call raises, its
        requests are retried one by one, so only the request that still fails alone gets a
        :class:`GenerationFailed` (a server fault: validation should have caught a request's fault).

        An adapter that is not loaded (LRU eviction between lookup and use) is loaded from ``paths[name]``
        for this call and deleted after; ``KeyError`` if no path.
        """
        adapters = adapters or [None] * len(items)
        if len(adapters) != len(items):
            raise ValueError(f"{len(items)} requests but {len(adapters)} adapter names")
        results: list[GenResult | RequestError | GenerationFailed | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for i, e in enumerate(items):
            if isinstance(e, RequestError):
                results[i] = e
                continue
            r = e.req
            sampled = r.temperature > 0
            key = (r.max_tokens, r.temperature, r.top_p if sampled else 1.0, r.seed if sampled else None)
            groups.setdefault(key, []).append(i)
        with self.lock:
            todo = [i for idx in groups.values() for i in idx]
            missing = sorted({adapters[i] for i in todo if adapters[i] is not None and adapters[i] not in self.loaded})
            for name in missing:
                if not paths or name not in paths:
                    raise KeyError(f"adapter {name!r} is not loaded and no path was given")
                self._load(name, Path(paths[name]))
                self.temporary_loads += 1
            try:
                for key, idx in groups.items():
                    for i, res in zip(
                        idx, self._generate_isolated([items[i] for i in idx], [adapters[i] for i in idx], *key)
                    ):
                        results[i] = res
            finally:
                for name in missing:
                    self._unload(name)
        return results  # type: ignore[return-value]

    def _generate_isolated(self, batch: list[_Encoded], adapters: list[str | None], *sampling) -> list:
        try:
            return self._generate_locked(batch, adapters, *sampling)
        except Exception as exc:
            if len(batch) == 1:
                log.exception("generation failed for one request")
                return [GenerationFailed(f"{type(exc).__name__}: {exc}")]
            log.warning(
                "batched generate of %d requests raised %s: %s; retrying them one by one",
                len(batch),
                type(exc).__name__,
                exc,
            )
        return [self._generate_isolated([e], [a], *sampling)[0] for e, a in zip(batch, adapters)]

    def _generate_locked(
        self,
        batch: list[_Encoded],
        adapters: list[str | None],
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> list[GenResult]:
        inputs = self._collate(batch)
        kwargs: dict[str, Any] = dict(max_new_tokens=max_tokens, eos_token_id=self.stop_ids, pad_token_id=self.pad_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            if seed is not None:
                torch.manual_seed(seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.loaded:  # a PeftModel: route each row to its adapter (or to the base weights)
            kwargs["adapter_names"] = [a if a is not None else "__base__" for a in adapters]
        with torch.inference_mode():
            out = self.model.generate(**inputs, **kwargs)
        new = out[:, inputs["input_ids"].shape[1] :].tolist()
        results = []
        for e, toks in zip(batch, new):
            stop = next((j for j, t in enumerate(toks) if t in self.stop_ids), None)
            kept = toks if stop is None else toks[:stop]
            text = self.bb.tokenizer.decode(kept, skip_special_tokens=True)
            finish = "stop" if stop is not None or len(toks) < max_tokens else "length"
            results.append(GenResult(text, len(e.ids), len(kept) + (stop is not None), finish))
        return results
