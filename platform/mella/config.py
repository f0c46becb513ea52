"""The validated configuration of ``jobs/build_corpus.py`` (pydantic), loadable from YAML and
overridable from the command line (``key=value`` with dotted keys, e.g. ``crawl.max_depth=3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator

from mella.languages import ENV_VAR, default_targets, load_languages
from mella.net import CrawlConfig  # config beside its code (HTTP fetching); composed into BuildConfig here
from mella.resources import PoolConfig, StageResources, Strict
from mella.stages.dedup.exact import ExactKey
from mella.stages.dedup.phash import PhashConfig
from mella.stages.dedup.semantic import SemanticDedupConfig
from mella.stages.enrich.caption import CaptionConfig
from mella.stages.enrich.categorise import CategoriseConfig
from mella.stages.enrich.qe import QEConfig
from mella.stages.enrich.translate import TranslateConfig
from mella.stages.filters.decode import DecodeConfig
from mella.stages.filters.langid import LangIDConfig
from mella.stages.filters.moderation import ModerationConfig


class FilterConfig(DecodeConfig):
    """Image filters (paper appendix B.2): the decode/resolution fields, then the other filters' settings."""

    max_alt_chars: int = Field(1000, ge=1, description="longer alt-texts are rejected (alt_too_long), characters")
    max_pairs_per_image: int = Field(
        3,
        ge=1,
        description="at most this many rows per distinct picture (pixel_sha256) and language; the "
        "others are rejected too_many_captions (exact_dedup stage)",
    )
    exact_dedup_key: ExactKey = Field(
        "image_text", description="exact-duplicate key: same pixels and alt-text (pairs), or same pixels (images)"
    )
    phash: PhashConfig = Field(default_factory=PhashConfig)
    semantic: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    moderation: ModerationConfig = Field(default_factory=ModerationConfig)


class DLingConfig(Strict):
    """The D_ling stages (paper 3.1.2), one block per stage."""

    enabled: bool = False
    categorise: CategoriseConfig = Field(default_factory=CategoriseConfig)
    caption: CaptionConfig | None = Field(None, description="required when enabled")
    translate: TranslateConfig = Field(default_factory=TranslateConfig)
    qe: QEConfig = Field(default_factory=QEConfig)
    stats_dir: str | None = Field(None, description="per-batch timing records (JSON) for throughput measurement")

    @model_validator(mode="after")
    def _caption_model_given(self) -> DLingConfig:
        if self.enabled and self.caption is None:
            raise ValueError(
                "d_ling.enabled needs d_ling.caption.mllm (family, model_path): "
                "--caption-model PATH or d_ling.caption.mllm.model_path=PATH"
            )
        return self


class ImagePoolConfig(Strict):
    """The image pool (fetch → decode → resolution in one actor pool): its resources and batch size."""

    pool_size: int = Field(2, ge=1, description="actors (the minimum when elastic)")
    max_pool_size: int | None = Field(None, ge=1, description="elastic upper bound; None: fixed size")
    num_cpus: float = Field(0.25, gt=0, description="logical CPUs per actor (1 on cluster CPU nodes)")
    concurrency: int = Field(32, ge=1, description="simultaneous image requests per actor")
    batch_size: int = Field(64, ge=1, description="rows per Ray Data batch")
    batches_per_actor: int = Field(
        2,
        ge=1,
        description="batches an actor runs at once, one thread each: one batch's downloads are awaited "
        "while another's images decode (Pillow and hashlib release the GIL); 1: fetch, then decode",
    )

    def stage_resources(self) -> StageResources:
        return StageResources(
            num_cpus=self.num_cpus,
            pool_size=self.pool_size,
            max_pool_size=self.max_pool_size,
            batches_per_actor=self.batches_per_actor,
        )


class RayConfig(Strict):
    """How the plan runs on Ray (the stages' own resources live in their config blocks)."""

    image_pool: ImagePoolConfig = Field(default_factory=ImagePoolConfig)
    files_per_group: int = Field(8, ge=1, description="input WARC shards per committed work unit")
    records_per_slice: int = Field(
        16,
        ge=1,
        description="WARC response records per extract task: a unit's rows reach the image pool as one "
        "block per slice, spread over its actors, so a slow host holds back one slice's batch, not the unit",
    )
    num_cpus: int | None = Field(None, description="local Ray only: CPUs to use (default: all)")


class StagesConfig(Strict):
    """Stages added to the plan without forking (see README "Add a stage")."""

    plan: list[str | dict[str, Any]] | None = Field(
        None,
        description="the whole plan in run order: built-in stage names (mella.plan.DEFAULT_PLAN, the default) "
        "and user stages ('pkg.module:Class key=value' or {class: ..., args: {...}}) where they run",
    )
    extra: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="'pkg.module:Class[@after_stage] [key=value ...]' or {class: ..., after: ..., args: {...}}; "
        "after defaults to the last per-unit stage",
    )


class BuildConfig(Strict):
    """Everything ``build_corpus`` needs. ``seeds`` xor ``warc`` chooses the input."""

    output: Path
    seeds: Path | None = None
    warc: list[str] = Field(default_factory=list)
    offline: bool = False
    langs: list[str] = Field(
        default_factory=default_targets, description="target languages; default: languages.yaml's `default: true` ones"
    )
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    langid: LangIDConfig = Field(default_factory=LangIDConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    stages: StagesConfig = Field(default_factory=StagesConfig)
    d_ling: DLingConfig = Field(default_factory=DLingConfig)

    @field_validator("langs")
    @classmethod
    def _known_langs(cls, v: list[str]) -> list[str]:
        known = load_languages()
        bad = [x for x in v if x not in known]
        if bad:
            raise ValueError(
                f"unknown language(s) {bad} (known: {sorted(known)}); add one in a file named by ${ENV_VAR}"
                " (README: Add a language)"
            )
        return v


def pool_blocks(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """Dotted paths of every model-stage pool block (:class:`PoolConfig`) in :class:`BuildConfig`,
    e.g. ``filters.moderation``, ``d_ling.caption`` — what ``--num-gpus`` sets, read from the classes."""
    model = model or BuildConfig
    out: list[str] = []
    for name, field in model.model_fields.items():
        for t in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(t, type) and issubclass(t, BaseModel):
                path = f"{prefix}{name}"
                if issubclass(t, PoolConfig):
                    out.append(path)
                out.extend(pool_blocks(t, path + "."))
                break
    return out


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
