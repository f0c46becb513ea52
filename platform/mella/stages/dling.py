"""D_ling plan on Ray Data (paper 3.1.2, Figure 3): route → categorise → caption → translate → qe.

* **Routing** (:func:`route_to_dling`): an image goes to D_ling when its alt-text was rejected at
  ``alt_text`` (empty, filename-like, boilerplate) or ``langid`` (not in the page's language) but the
  image itself passed the image filters (it still has its bytes and a ``pixel_sha256``). Its reject is
  cleared, and it keeps its page ``lang``; the translate stage then writes one row per target language.
* **Categorise** runs on D_know rows too (:func:`add_categorise`).
* Model stages run in fixed-size actor pools (NeMo Curator practice: elastic pools ramp slowly on
  GPUs), each declaring ``num_gpus`` per actor (fractional allowed) and a ``batch_size``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import BaseModel, ConfigDict, Field

from mella.schema import REJECT_SCHEMA, conform
from mella.stages.caption import CaptionConfig, CaptionStage
from mella.stages.categorise import CategoriseConfig, EfficientNetCategoriser, MLLMCategoriser
from mella.stages.qe import QEConfig, QEStage
from mella.stages.translate import TranslateConfig, TranslateStage

#: Reject stages whose images are routed to captioning (the alt-text was unusable, the image was not).
ROUTE_STAGES = ("alt_text", "langid")


class DLingConfig(BaseModel):
    """Configuration of the D_ling stages (one block per stage)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    categorise: CategoriseConfig = Field(default_factory=CategoriseConfig)
    caption: CaptionConfig | None = Field(None, description="required when enabled")
    translate: TranslateConfig = Field(default_factory=TranslateConfig)
    qe: QEConfig = Field(default_factory=QEConfig)
    stats_dir: str | None = Field(None, description="per-batch timing records (JSON) for throughput measurement")


def route_to_dling(batch: pa.Table, stages: tuple[str, ...] = ROUTE_STAGES) -> pa.Table:
    """Rows rejected at one of ``stages`` that still hold image bytes, with the reject cleared (REJECT_SCHEMA).

    Upstream stages must keep the image bytes of rows they reject for these reasons (the generic
    :func:`mella.stages.base.reject` frees them); rows without bytes cannot be captioned and are left out.
    """
    batch = conform(batch, REJECT_SCHEMA)
    mask = pc.and_(pc.is_in(batch["stage"], pa.array(list(stages))), pc.is_valid(batch["image"]))
    picked = batch.filter(pc.fill_null(mask, False))
    n = picked.num_rows
    for col in ("stage", "reason", "detail"):
        picked = picked.set_column(picked.schema.get_field_index(col), col, pa.nulls(n, pa.string()))
    return picked


def _pool(size: int) -> ray.data.ActorPoolStrategy:
    return ray.data.ActorPoolStrategy(size=size)


def add_categorise(ds: ray.data.Dataset, cfg: DLingConfig) -> ray.data.Dataset:
    """``ds`` (REJECT_SCHEMA batches) with ``category``/``category_major`` set on active rows."""
    c = cfg.categorise
    cls = MLLMCategoriser if c.backend == "mllm" else EfficientNetCategoriser
    return ds.map_batches(cls, fn_constructor_kwargs={"cfg": c, "stats_dir": cfg.stats_dir}, compute=_pool(c.num_actors),
                          batch_size=c.batch_size, batch_format="pyarrow", num_gpus=c.num_gpus, num_cpus=c.num_cpus)


def add_dling_stages(ds: ray.data.Dataset, cfg: DLingConfig, categorise: bool = True) -> ray.data.Dataset:
    """Append (categorise →) caption → translate → qe to ``ds`` (routed D_ling candidates, REJECT_SCHEMA).

    The result holds one row per (image, target language) plus the rejects of these stages.
    Raises ``ValueError`` when ``cfg.caption`` is missing.
    """
    if cfg.caption is None:
        raise ValueError("d_ling.caption (mllm.family, mllm.model_path) is required for D_ling")
    if categorise:
        ds = add_categorise(ds, cfg)
    cap, tr, qe = cfg.caption, cfg.translate, cfg.qe
    ds = ds.map_batches(CaptionStage, fn_constructor_kwargs={"cfg": cap, "stats_dir": cfg.stats_dir},
                        compute=_pool(cap.num_actors), batch_size=cap.batch_size, batch_format="pyarrow",
                        num_gpus=cap.num_gpus, num_cpus=cap.num_cpus)
    ds = ds.map_batches(TranslateStage, fn_constructor_kwargs={"cfg": tr, "stats_dir": cfg.stats_dir},
                        compute=_pool(tr.num_actors), batch_size=tr.batch_size, batch_format="pyarrow",
                        num_gpus=tr.num_gpus, num_cpus=tr.num_cpus)
    if qe.model_path:
        ds = ds.map_batches(QEStage, fn_constructor_kwargs={"cfg": qe, "stats_dir": cfg.stats_dir},
                            compute=_pool(qe.num_actors), batch_size=qe.batch_size, batch_format="pyarrow",
                            num_gpus=qe.num_gpus, num_cpus=qe.num_cpus)
    return ds
