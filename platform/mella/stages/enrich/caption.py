"""caption: an English description of each D_ling image by an MLLM (paper 3.1.2 "Text generation for
linguistic capability" and appendix B.3: domain-specific prompt templates, Figure 7).

The prompt is chosen by the image's category: Figure 7's core aspects (main subject; activity, state,
time and space; other elements and their spatial relations) followed by the aspects of the image's
major category and fine category from ``data/taxonomy.yaml`` (people: clothing, gestures...; nature:
species, season...; places & culture: architecture, signs, heritage...; information & technology:
layout, legible text, purpose...). Images categorised ``unknown`` get the core aspects plus Figure 7's
cultural-features aspect. Unlike Figure 7 (which asks for Chinese), the output is English, the source
language of the translation step.

:class:`CaptionStage` is a D_ling stage of the plan (:func:`mella.plan.build_plan`, after the global
dedup): it runs in an actor pool, loads the MLLM once per actor in ``setup`` and captions a batch per
``generate``; its ``num_gpus`` per actor (fractional allowed), pool size and batch size are declared
in :class:`CaptionConfig` (``d_ling.caption.*``). Rejects (stage ``caption``): ``undecodable``,
``empty_caption``.

Captions are the expensive part of a build (GPU hours), so with a ``cache_dir`` every batch's captions
are also written there (``part-<uuid>.parquet``: ``key``, ``caption_en``; key = sha256 of the image
bytes' sha256 and the prompt) as soon as they exist, and an actor starting up reads them back: a job
killed during the D_ling phase and rerun captions only what it had not captioned yet. The build job
keys the directory by the caption configuration (model, generation parameters), so changing it starts
a fresh cache. The cache is loaded whole into each actor (≈ caption length per image).
"""

from __future__ import annotations

import glob
import hashlib
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from PIL.Image import DecompressionBombError, UnidentifiedImageError
from pydantic import Field

from mella.languages import load_languages
from mella.models.mllm import MLLM, GenerationConfig, MLLMConfig, log_batch, timed
from mella.resources import PoolConfig
from mella.stages.base import Stage
from mella.taxonomy import Taxonomy, load_taxonomy

#: Figure 7 items 1–3, English output.
CORE_ASPECTS = (
    "The main subject of the image, such as people, specific objects, or key locations or scenes.",
    "The activity the subject is engaged in, its characteristics and condition, and how it is presented in time and space.",
    "The other elements in the image, and their spatial relationships and interactions with the main subject.",
)
#: Figure 7 item 4, for images without a category.
CULTURE_ASPECT = (
    "Relevant cultural features of the country where the image was published, such as traditional "
    "clothing, language, festivals or customs, when they are visible."
)
PREAMBLE = (
    "Please carefully observe this image, which was published on a {language}-language website. "
    "Write a detailed and precise description of it in English. Your description should cover:"
)
CLOSING = (
    "Write fluent English prose of one to three paragraphs, without headings or lists. Describe only what "
    "can be seen or reasonably inferred; do not invent names, text or facts, and say when something is uncertain."
)


class CaptionConfig(PoolConfig):
    """Caption stage: the MLLM, its generation parameters and its pool block."""

    mllm: MLLMConfig
    generation: GenerationConfig = Field(default_factory=lambda: GenerationConfig(max_new_tokens=512))
    batch_size: int = Field(8, ge=1, description="images per Ray Data batch and per generate() call")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; 1 for a 7-8B model in bf16, 0.5 to pack two")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor")


def caption_prompt(category: str | None, lang: str | None, tax: Taxonomy | None = None) -> str:
    """The domain-specific caption prompt for an image of ``category`` found on a ``lang`` page."""
    tax = tax or load_taxonomy()
    langs = load_languages()
    language = langs[lang].name if lang in langs else "non-English"
    aspects = list(CORE_ASPECTS)
    fine = tax.fine.get(category or "")
    if fine is None:
        aspects.append(CULTURE_ASPECT)
    else:
        aspects += list(tax.majors[fine.major]["caption_aspects"]) + list(fine.caption_aspects)
    body = "\n".join(f"{i}. {a}" for i, a in enumerate(aspects, 1))
    return f"{PREAMBLE.format(language=language)}\n{body}\n{CLOSING}"


class CaptionStage(Stage):
    """Ray Data callable: sets ``caption_en`` for each active row (see module doc)."""

    name = "caption"
    reads = ("image", "category", "lang", "sha256")
    writes = ("caption_en",)
    rejects = True
    d_ling = True

    def __init__(self, cfg: CaptionConfig, stats_dir: str | None = None, cache_dir: str | None = None) -> None:
        self.cfg, self.stats_dir, self.cache_dir = cfg, stats_dir, cache_dir
        self.resources, self.batch_size = cfg.stage_resources(), cfg.batch_size

    def setup(self) -> None:
        self.tax = load_taxonomy()
        self.mllm = MLLM(self.cfg.mllm)
        self.cache: dict[str, str] = {}
        if self.cache_dir:
            os.makedirs(self.cache_dir, exist_ok=True)
            for p in sorted(glob.glob(os.path.join(self.cache_dir, "part-*.parquet"))):
                t = pq.read_table(p)
                self.cache.update(zip(t["key"].to_pylist(), t["caption_en"].to_pylist()))
        self.cache_hits = 0

    def _key(self, r: dict) -> str:
        prompt = caption_prompt(r.get("category"), r.get("lang"), self.tax)
        digest = r.get("sha256") or hashlib.sha256(r.get("image") or b"").hexdigest()
        return hashlib.sha256(f"{digest}\x1f{prompt}".encode()).hexdigest()

    def _save(self, new: dict[str, str]) -> None:
        from mella.io import write_parquet_atomic

        if self.cache_dir and new:
            table = pa.table({"key": list(new), "caption_en": list(new.values())})
            write_parquet_atomic(table, os.path.join(self.cache_dir, f"part-{uuid.uuid4().hex}.parquet"))
            self.cache.update(new)

    def _generate(self, rows: list[dict]) -> list[str | None]:
        items = [(r["image"], caption_prompt(r.get("category"), r.get("lang"), self.tax)) for r in rows]
        try:
            return self.mllm.generate(items, self.cfg.generation)
        except (OSError, UnidentifiedImageError, DecompressionBombError):
            if len(rows) == 1:
                return [None]
            return [self._generate([r])[0] for r in rows]  # find the bad image, keep the rest

    def process(self, rows: list[dict]) -> None:
        todo = []
        for r in rows:
            cached = self.cache.get(self._key(r)) if self.cache_dir else None
            if cached:
                r["caption_en"] = cached
                self.cache_hits += 1
            else:
                todo.append(r)
        for i in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[i : i + self.cfg.batch_size]
            captions, secs = timed(self._generate, chunk)
            log_batch(self.stats_dir, self.name, len(chunk), secs, backend=self.mllm.name)
            if self.cache_dir:
                self._save({self._key(r): c.strip() for r, c in zip(chunk, captions) if c and c.strip()})
            for r, c in zip(chunk, captions):
                if c is None:
                    self.reject(r, "undecodable")
                elif not c.strip():
                    self.reject(r, "empty_caption", self.mllm.name)
                else:
                    r["caption_en"] = c.strip()
