"""SFT samples (paper 3.3, eq. 6): (image, prompt from the pool) → answer in the target language.

A sample is ``input_ids = prompt part (system, user turn with the expanded image tokens, assistant
header) + answer part (answer text + <|im_end|>)`` and ``labels = -100`` on the prompt part and the
answer ids on the answer part, so the loss is the cross-entropy of eq. 6 over the answer tokens only.

Truncation to ``max_seq_length`` never cuts image tokens (that would desynchronise them from the
pixel features): the answer is shortened instead (status ``answer_truncated``; the end-of-turn token
is then dropped too, so the model is not taught to stop mid-sentence); when fewer than
``MIN_ANSWER_TOKENS`` answer tokens would remain, the sample is dropped (``prompt_too_long``).
Other drop reasons: ``image_decode`` (bytes Pillow cannot open), ``empty_answer``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mella.models.backbones import Backbone, decode_image, load_backbone
from mella.train.prompts import prompts_for

MIN_ANSWER_TOKENS = 4
#: Which column holds the target text of each source (RECORD_SCHEMA): D_know → alt-text, D_ling → text.
ANSWER_COLUMN = {"d_know": "alt_text", "d_ling": "text"}
DROP_REASONS = ("image_decode", "empty_answer", "prompt_too_long")


@dataclass
class Sample:
    """One training example. ``input_ids``/``labels``: int64 ``[L]``; ``features``: backbone image arrays."""

    input_ids: np.ndarray
    labels: np.ndarray
    features: dict[str, np.ndarray]
    status: str  # "ok" or "answer_truncated"


def build_sample(bb: Backbone, image: bytes, prompt: str, answer: str | None, max_seq_length: int) -> Sample | str:
    """Build one sample, or return the drop reason (one of ``DROP_REASONS``)."""
    answer = (answer or "").strip()
    if not answer:
        return "empty_answer"
    try:
        img = decode_image(image)
    except Exception:
        return "image_decode"
    prompt_ids, features = bb.encode(img, prompt)
    answer_ids = bb.answer_ids(answer)
    status = "ok"
    budget = max_seq_length - len(prompt_ids)
    if len(answer_ids) > budget:
        if budget < MIN_ANSWER_TOKENS:
            return "prompt_too_long"
        answer_ids, status = answer_ids[:budget], "answer_truncated"
    ids = np.asarray(prompt_ids + answer_ids, dtype=np.int64)
    labels = np.concatenate([np.full(len(prompt_ids), -100, dtype=np.int64), np.asarray(answer_ids, dtype=np.int64)])
    return Sample(ids, labels, features, status)


@lru_cache(maxsize=4)
def _cached_backbone(name: str, model: str, min_pixels: int, max_pixels: int, max_tiles: int) -> Backbone:
    return load_backbone(name, model, min_pixels=min_pixels, max_pixels=max_pixels, max_tiles=max_tiles)


class SampleBuilder:
    """Ray Data batch function: rows (``image``, ``answer``, ``source``, ``sha256``) → token/feature rows.

    Dropped rows leave the batch; every outcome is counted in ``counts`` (``source/status``) and, when
    ``counter`` names a Ray actor with an ``add`` method, sent there as ``{source:sha256: status}``
    (the driver reads the totals after training).
    Output columns: ``input_ids``, ``labels`` (int64 ragged), ``n_tokens``, ``source``, ``status`` and the
    backbone's feature columns (``pixel_values`` [+ ``image_grid_thw``]).
    """

    def __init__(
        self,
        backbone: str,
        model: str,
        lang: str,
        max_seq_length: int,
        seed: int,
        min_pixels: int,
        max_pixels: int,
        max_tiles: int,
        counter: str | None = None,
    ):
        self.bb = _cached_backbone(backbone, str(model), min_pixels, max_pixels, max_tiles)
        self.prompts = prompts_for(lang)
        self.max_seq_length, self.seed, self.counter = max_seq_length, seed, counter
        self.counts: Counter = Counter()
        self.feature_names = self.bb.feature_names

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "n_tokens": [], "source": [], "status": []}
        out.update({k: [] for k in self.feature_names})
        counts: Counter = Counter()
        outcomes: dict[str, str] = {}
        for image, answer, source, sha in zip(batch["image"], batch["answer"], batch["source"], batch["sha256"]):
            prompt = self.prompts.draw(f"{source}:{sha}", self.seed)
            s = build_sample(self.bb, image, prompt, answer, self.max_seq_length)
            status = f"dropped/{s}" if isinstance(s, str) else s.status
            counts[f"{source}/{status}"] += 1
            outcomes[f"{source}:{sha}"] = status
            if isinstance(s, str):
                continue
            for k, v in s.features.items():
                out[k].append(v)
            out["input_ids"].append(s.input_ids)
            out["labels"].append(s.labels)
            out["n_tokens"].append(len(s.input_ids))
            out["source"].append(source)
            out["status"].append(s.status)
        self.counts.update(counts)
        if self.counter:
            import ray

            ray.get_actor(self.counter).add.remote(outcomes)
        return out


@lru_cache(maxsize=4)
def _builder(**kwargs) -> SampleBuilder:
    return SampleBuilder(**kwargs)


def build_batch(batch: dict[str, Any], **kwargs) -> dict[str, list]:
    """Task-based Ray Data entry point: ``SampleBuilder(**kwargs)(batch)`` with the builder cached per process."""
    return _builder(**kwargs)(batch)
