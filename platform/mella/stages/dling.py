"""D_ling plan on Ray Data (paper 3.1.2, Figure 3): route → categorise → caption → translate → qe.

* **Routing**: with D_ling enabled the ``alt_text`` (empty, filename-like, boilerplate) and ``langid``
  (not in the page's language) stages do not reject; they set ``d_ling_reason`` and the image goes on
  through the image filters. :func:`route_to_dling` selects the rows that made it (active, with image
  bytes); they keep their page ``lang``; the translate stage then writes one row per target language.
* **Categorise** runs on D_know rows too (:func:`add_categorise`).
* Model stages run in fixed-size actor pools (NeMo Curator practice: elastic pools ramp slowly on
  GPUs), each declaring ``num_gpus`` per actor (fractional allowed) and a ``batch_size``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mella.resources import StageResources
from mella.schema import REJECT_SCHEMA, conform
from mella.stages.enrich.caption import CaptionConfig, CaptionStage
from mella.stages.enrich.categorise import CategoriseConfig, EfficientNetCategoriser, MLLMCategoriser
from mella.stages.enrich.qe import QEConfig, QEStage
from mella.stages.enrich.translate import TranslateConfig, TranslateStage



class DLingConfig(BaseModel):
    """Configuration of the D_ling stages (one block per stage)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    categorise: CategoriseConfig = Field(default_factory=CategoriseConfig)
    caption: CaptionConfig | None = Field(None, description="required when enabled")
    translate: TranslateConfig = Field(default_factory=TranslateConfig)
    qe: QEConfig = Field(default_factory=QEConfig)
    stats_dir: str | None = Field(None, description="per-batch timing records (JSON) for throughput measurement")

    @model_validator(mode="after")
    def _caption_model_given(self) -> "DLingConfig":
        if self.enabled and self.caption is None:
            raise ValueError("d_ling.enabled needs d_ling.caption.mllm (family, model_path): "
                             "--caption-model PATH or d_ling.caption.mllm.model_path=PATH")
        return self


def route_to_dling(batch: pa.Table) -> pa.Table:
    """The D_ling candidates of ``batch`` (REJECT_SCHEMA): active rows with ``d_ling_reason`` and image bytes."""
    batch = conform(batch, REJECT_SCHEMA)
    mask = pc.and_(pc.and_(pc.is_null(batch["reason"]), pc.is_valid(batch["d_ling_reason"])), pc.is_valid(batch["image"]))
    return batch.filter(pc.fill_null(mask, False))


def _pool(c) -> dict:
    """map_batches arguments of a model stage's config block: a fixed-size pool (``num_actors``)."""
    return StageResources(num_cpus=c.num_cpus, num_gpus=c.num_gpus, pool_size=c.num_actors).map_batches_args()


def add_categorise(ds: ray.data.Dataset, cfg: DLingConfig) -> ray.data.Dataset:
    """``ds`` (REJECT_SCHEMA batches) with ``category``/``category_major`` set on active rows."""
    c = cfg.categorise
    cls = MLLMCategoriser if c.backend == "mllm" else EfficientNetCategoriser
    return ds.map_batches(cls, fn_constructor_kwargs={"cfg": c, "stats_dir": cfg.stats_dir}, batch_size=c.batch_size,
                          batch_format="pyarrow", **_pool(c))


def add_dling_stages(ds: ray.data.Dataset, cfg: DLingConfig, categorise: bool = True,
                     caption_cache: str | None = None) -> ray.data.Dataset:
    """Append (categorise →) caption → translate → qe to ``ds`` (routed D_ling candidates, REJECT_SCHEMA).

    ``caption_cache``: directory of the caption cache (:class:`mella.stages.enrich.caption.CaptionStage`).

    The result holds one row per (image, target language) plus the rejects of these stages.
    Raises ``ValueError`` when ``cfg.caption`` is missing.
    """
    if cfg.caption is None:
        raise ValueError("d_ling.caption (mllm.family, mllm.model_path) is required for D_ling")
    if categorise:
        ds = add_categorise(ds, cfg)
    cap, tr, qe = cfg.caption, cfg.translate, cfg.qe
    ds = ds.map_batches(CaptionStage, fn_constructor_kwargs={"cfg": cap, "stats_dir": cfg.stats_dir, "cache_dir": caption_cache},
                        batch_size=cap.batch_size, batch_format="pyarrow", **_pool(cap))
    ds = ds.map_batches(TranslateStage, fn_constructor_kwargs={"cfg": tr, "stats_dir": cfg.stats_dir},
                        batch_size=tr.batch_size, batch_format="pyarrow", **_pool(tr))
    if qe.model_path:
        ds = ds.map_batches(QEStage, fn_constructor_kwargs={"cfg": qe, "stats_dir": cfg.stats_dir},
                            batch_size=qe.batch_size, batch_format="pyarrow", **_pool(qe))
    return ds
