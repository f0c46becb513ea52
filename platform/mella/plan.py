"""build_corpus's plan as data: ``build_plan(cfg)`` returns the list of steps the executor runs.

The list is read in order (paper 3.1 and appendix B.2 → module):

=====================  ========================================================================
source                 :class:`~mella.stages.io.extract.ExtractStage` (WARC records → candidates)
per work unit          alt_text → langid → ``ImageStages`` (fetch → decode → resolution, one
                       actor pool) → ``ModelStages`` (moderation, CNN embedding, categorise:
                       one actor pool) → user stages; committed unit by unit
global                 exact_dedup → phash_dedup → semantic_dedup (:class:`DedupStage`: decisions
                       over all units, then applied in the final pass with the writer)
D_ling                 caption → translate → qe (stages with ``d_ling = True``), on the images
                       routed to D_ling that survived everything above
=====================  ========================================================================

The funnel's stage order and the schema's stage list are :func:`stage_names` of this plan. A user's
stage is inserted with ``--stage pkg.module:Class[@after]`` / ``stages.extra`` (:func:`user_stage`).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys

from mella.config import BuildConfig
from mella.stages.base import DedupStage, Fused, Stage
from mella.stages.dedup.exact import ExactDedupStage
from mella.stages.dedup.phash import PhashDedupStage
from mella.stages.dedup.semantic import SemanticDedupStage
from mella.stages.enrich.caption import CaptionStage
from mella.stages.enrich.categorise import EfficientNetCategoriser, MLLMCategoriser
from mella.stages.enrich.embed import EmbedStage
from mella.stages.enrich.qe import QEStage
from mella.stages.enrich.translate import TranslateStage
from mella.stages.filters.alt_text import AltTextStage
from mella.stages.filters.decode import DecodeStage, ResolutionStage
from mella.stages.filters.langid import LangIDStage
from mella.stages.filters.moderation import APIModerationStage, NSFWStage
from mella.stages.io.extract import ExtractStage
from mella.stages.io.fetch import ImageFetchStage
from mella.warc import expand_warc_paths

Step = Stage | Fused

#: The crawl runs before the plan (Ray tasks writing WARC shards); the funnel lists it first.
CRAWL = "crawl"


class PlanError(ValueError):
    """A plan that cannot run: an unknown stage to insert after, a class that is not a Stage, ..."""


def build_plan(cfg: BuildConfig) -> list[Step]:
    """The steps of one build, in order (module docstring). Constructors only keep configuration;
    models load in each stage's ``setup`` on the workers.

    Raises:
        PlanError: a ``stages.extra`` entry cannot be imported or placed.
    """
    f, d, out = cfg.filters, cfg.d_ling, str(cfg.output)
    route = d.enabled
    warc_dir = os.path.join(out, "warc")
    pool = cfg.ray.image_pool
    plan: list[Step] = [
        ExtractStage(cfg.langs, cfg.langid, cfg.crawl.ai_opt_out_directives, cfg.crawl.user_agent),
        AltTextStage(route_to_d_ling=route, max_chars=f.max_alt_chars),
        LangIDStage(cfg.langid, route_to_d_ling=route),
        Fused([
            ImageFetchStage(cfg.crawl, None if cfg.offline else warc_dir,
                            expand_warc_paths(cfg.warc) if cfg.warc else [], offline=cfg.offline,
                            concurrency=pool.concurrency, index_dir=warc_dir),
            DecodeStage(f), ResolutionStage(f),
        ], name="ImageStages", resources=pool.stage_resources(), batch_size=pool.batch_size),
    ]
    models: list[Stage] = []
    if f.moderation.enabled:
        models.append(NSFWStage(f.moderation))
        if f.moderation.api.enabled:
            models.append(APIModerationStage(f.moderation))
    if f.semantic.enabled:
        models.append(EmbedStage(f.semantic))
    if d.enabled or d.categorise.enabled:  # categories without D_ling: the CPU EfficientNet by default
        c = d.categorise
        models.append((MLLMCategoriser if c.backend == "mllm" else EfficientNetCategoriser)(c, d.stats_dir))
    if models:
        plan.append(Fused(models, name="ModelStages"))
    plan.append(ExactDedupStage(f.exact_dedup_key, with_d_ling=d.enabled, max_pairs_per_image=f.max_pairs_per_image))
    if f.phash.enabled:
        plan.append(PhashDedupStage(f.phash, f.exact_dedup_key))
    if f.semantic.enabled:
        plan.append(SemanticDedupStage(f.semantic, f.exact_dedup_key))
    if d.enabled:
        # captions survive a killed run: keyed by the caption configuration (model, generation parameters)
        key = hashlib.sha1(d.caption.model_dump_json().encode()).hexdigest()[:16]
        plan.append(CaptionStage(d.caption, d.stats_dir, os.path.join(out, "_work", "caption_cache", key)))
        plan.append(TranslateStage(d.translate, d.stats_dir))
        plan.append(QEStage(d.qe, d.stats_dir))  # without qe.model_path it passes rows through, qe_score null
    for spec in cfg.stages.extra:
        plan = insert_stage(plan, *user_stage(spec))
    check_plan(plan)
    return plan


def stage_names(plan: list[Step]) -> list[str]:
    """Every stage name in plan order, fused members expanded (the funnel's order after ``crawl``)."""
    names: list[str] = []
    for step in plan:
        for s in (step.stages if isinstance(step, Fused) else [step]):
            if s.name not in names:
                names.append(s.name)
    return names


def phases(plan: list[Step]) -> tuple[ExtractStage, list[Step], list[Step], list[Step]]:
    """``(source, per-unit steps, global/final steps, D_ling steps)`` of a checked plan."""
    source, rest = plan[0], plan[1:]
    first_global = next((i for i, s in enumerate(rest) if isinstance(s, DedupStage)), len(rest))
    first_ling = next((i for i, s in enumerate(rest) if getattr(s, "d_ling", False)), len(rest))
    return source, rest[:first_global], rest[first_global:first_ling], rest[first_ling:]


def check_plan(plan: list[Step]) -> None:
    """Raise :class:`PlanError` unless the plan is source, per-unit steps, global steps, D_ling steps."""
    if not plan or not isinstance(plan[0], ExtractStage):
        raise PlanError("a plan starts with the extract stage")
    seen_global = seen_ling = False
    for step in plan[1:]:
        members = step.stages if isinstance(step, Fused) else [step]
        for s in members:
            if not isinstance(s, Stage):
                raise PlanError(f"{s!r} is not a mella.stages.base.Stage")
        if any(isinstance(s, DedupStage) for s in members):
            if isinstance(step, Fused) or seen_ling:
                raise PlanError(f"dedup stage {step!r} must stand alone, before the D_ling stages")
            seen_global = True
        elif any(s.d_ling for s in members):
            seen_ling = True
        elif seen_ling:
            raise PlanError(f"{step!r} comes after a D_ling stage but is not one (set d_ling = True)")
    del seen_global


def user_stage(spec: str | dict) -> tuple[Stage, str | None]:
    """A user's stage from ``'pkg.module:Class[@after]'`` or ``{class, after, args}``: ``(instance, after)``.

    The module is imported in the driver (the current directory is on ``sys.path``, as for
    ``python -m``) and registered with cloudpickle *by value*, so Ray workers run it without the
    module on their path.

    Raises:
        PlanError: malformed spec, module or class not found, or not a Stage subclass.
    """
    if isinstance(spec, str):
        target, _, after = spec.partition("@")
        args: dict = {}
    else:
        target, after, args = spec.get("class", ""), spec.get("after") or "", spec.get("args") or {}
    mod_name, _, cls_name = target.partition(":")
    if not mod_name or not cls_name:
        raise PlanError(f"stage {target!r} is not 'package.module:Class'")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise PlanError(f"stage {target!r}: cannot import {mod_name!r} ({e})") from None
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise PlanError(f"stage {target!r}: {cls_name!r} is not a mella.stages.base.Stage subclass in {mod_name}")
    if not module.__name__.startswith("mella."):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    try:
        return cls(**args), (after or None)
    except (TypeError, ValueError) as e:
        raise PlanError(f"stage {target!r}: {e}") from None


def insert_stage(plan: list[Step], stage: Stage, after: str | None) -> list[Step]:
    """``plan`` with ``stage`` placed after the step holding stage ``after`` (default: the last per-unit step).

    Raises:
        PlanError: ``after`` names no stage of the plan.
    """
    if after is None:
        _, units, _, _ = phases(plan)
        return plan[:1 + len(units)] + [stage] + plan[1 + len(units):]
    for i, step in enumerate(plan):
        members = step.stages if isinstance(step, Fused) else [step]
        if any(s.name == after for s in members):
            return plan[:i + 1] + [stage] + plan[i + 1:]
    raise PlanError(f"cannot insert {stage.name!r} after {after!r}: stages are {stage_names(plan)}")


def _where(num_gpus: float) -> str:
    return f"GPU ({num_gpus:g}/actor)" if num_gpus > 0 else "CPU"


def model_placement(cfg: BuildConfig) -> str:
    """One line: each model stage of ``cfg`` and where it runs (``CPU`` or ``GPU (n/actor)``, the pool block's
    ``num_gpus``; an actor given a GPU runs its model there when CUDA is present: torch ``cuda``, onnxruntime's
    ``CUDAExecutionProvider``). NSFW asks onnxruntime on this machine whether its CUDA provider exists."""
    f, d = cfg.filters, cfg.d_ling
    parts = []
    if f.moderation.enabled:
        where = _where(f.moderation.num_gpus)
        if f.moderation.num_gpus > 0:
            import onnxruntime as ort  # noqa: PLC0415

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                where = "CPU (onnxruntime here has no CUDAExecutionProvider: pip install '.[gpu]')"
        parts.append(f"nsfw {where}")
    if f.semantic.enabled:
        parts.append(f"embed {_where(f.semantic.num_gpus)}")
    if d.enabled or d.categorise.enabled:
        c = d.categorise
        name = c.mllm.family if c.backend == "mllm" and c.mllm else "efficientnet-lite0"
        parts.append(f"categorise[{name}] {_where(c.num_gpus)}")
    if d.enabled:
        parts.append(f"caption[{d.caption.mllm.family}] {_where(d.caption.num_gpus)}")
        t = d.translate
        parts.append(f"translate[{t.backend}] " + (_where(t.num_gpus) if t.backend in ("seq2seq", "mllm") else "API"))
        parts.append(f"qe {_where(d.qe.num_gpus)}" if d.qe.model_path else "qe off (no qe.model_path)")
    return ", ".join(parts) or "none"
