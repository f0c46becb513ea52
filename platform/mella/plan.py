"""build_corpus's plan as data: ``build_plan(cfg)`` turns :data:`DEFAULT_PLAN` — one list of stage names, or the
``stages.plan`` list a YAML config gives — into the steps the executor runs. Each stage has one kind
(:mod:`mella.stages.base`), and the kinds come in this order (paper 3.1 and appendix B.2 → module):

=====================  ========================================================================
source                 ``extract`` (:class:`~mella.stages.io.extract.ExtractStage`: WARC records → candidates)
per work unit          row stages and filters: alt_text → langid → the image pool (fetch → decode → resolution)
                       → the model pool (moderation, embed, categorise) → user stages; committed unit by unit
global dedup           exact_dedup → phash_dedup → semantic_dedup (:class:`~mella.stages.base.DedupStage`:
                       decisions over all units as Parquet, applied by the executor in the write phase)
D_ling                 caption → translate → qe (stages with ``d_ling = True``), on the images routed to D_ling
                       that survived everything above
=====================  ========================================================================

In YAML::

    stages:
      plan: [extract, alt_text, langid, fetch, decode, resolution,
             {class: my_filters:AspectRatioFilter, args: {max_ratio: 3}},
             moderation, embed, categorise, exact_dedup, phash_dedup, semantic_dedup]

or, keeping the default order, ``stages.extra: ["my_filters:AspectRatioFilter@resolution max_ratio=3"]`` (the
command line's ``--stage``). The funnel's stage order is :func:`stage_names` of the plan.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys

import yaml

from mella.config import BuildConfig
from mella.stages.base import LIGHT, DedupStage, Filter, Fused, Stage, Step
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

#: The crawl runs before the plan (Ray tasks writing WARC shards); the funnel lists it first.
CRAWL = "crawl"


class PlanError(ValueError):
    """A plan that cannot run: an unknown stage to insert after, a class that is not a Stage, ..."""


#: The default plan: every built-in stage in run order (paper 3.1, appendix B.2-B.3), the one place the order is
#: written. ``stages.plan`` in a YAML config replaces it (reorder, leave out, add ``{class, after, args}``); a stage
#: its own config turns off (``filters.moderation.enabled: false``, D_ling off, ...) is left out when built.
DEFAULT_PLAN: tuple[str, ...] = (
    "extract",
    "alt_text",
    "langid",
    "fetch",
    "decode",
    "resolution",  # the image pool (POOLS["ImageStages"])
    "moderation",
    "moderation_api",
    "embed",
    "categorise",  # the model pool (POOLS["ModelStages"])
    "exact_dedup",
    "phash_dedup",
    "semantic_dedup",  # global: decisions over all work units
    "caption",
    "translate",
    "qe",  # D_ling, on the images routed there
)

#: Stages run fused in one Ray Data operator (one actor pool): consecutive members of a group, and a stage placed
#: between two of them (it joins the pool). The image pool's resources come from ``ray.image_pool``; the model
#: pool asks for the largest of its members' declarations.
POOLS: dict[str, tuple[str, ...]] = {
    "ImageStages": ("fetch", "decode", "resolution"),
    "ModelStages": ("moderation", "moderation_api", "embed", "categorise"),
}


def _fetch(cfg: BuildConfig) -> Stage:
    warc_dir = os.path.join(str(cfg.output), "warc")
    return ImageFetchStage(
        cfg.crawl,
        None if cfg.offline else warc_dir,
        expand_warc_paths(cfg.warc) if cfg.warc else [],
        offline=cfg.offline,
        concurrency=cfg.ray.image_pool.concurrency,
        index_dir=warc_dir,
    )


def _categorise(cfg: BuildConfig) -> Stage | None:
    d, c = cfg.d_ling, cfg.d_ling.categorise
    if not (d.enabled or c.enabled):  # categories without D_ling: the CPU EfficientNet by default
        return None
    return (MLLMCategoriser if c.backend == "mllm" else EfficientNetCategoriser)(c, d.stats_dir)


def _caption(cfg: BuildConfig) -> Stage | None:
    d = cfg.d_ling
    if not d.enabled:
        return None
    # captions survive a killed run: keyed by the caption configuration (model, generation parameters)
    key = hashlib.sha1(d.caption.model_dump_json().encode()).hexdigest()[:16]
    return CaptionStage(d.caption, d.stats_dir, os.path.join(str(cfg.output), "_work", "caption_cache", key))


def _if(enabled, make):
    """A factory that builds ``make(cfg)`` when ``enabled(cfg)``, else leaves the stage out (None)."""
    return lambda cfg: make(cfg) if enabled(cfg) else None


#: Built-in stages by name: ``cfg -> Stage`` (None: turned off by its config). Constructors only keep configuration.
STAGES = {
    "extract": lambda cfg: ExtractStage(cfg.langs, cfg.langid, cfg.crawl.ai_opt_out_directives, cfg.crawl.user_agent),
    "alt_text": lambda cfg: AltTextStage(route_to_d_ling=cfg.d_ling.enabled, max_chars=cfg.filters.max_alt_chars),
    "langid": lambda cfg: LangIDStage(cfg.langid, route_to_d_ling=cfg.d_ling.enabled),
    "fetch": _fetch,
    "decode": lambda cfg: DecodeStage(cfg.filters),
    "resolution": lambda cfg: ResolutionStage(cfg.filters),
    "moderation": _if(lambda cfg: cfg.filters.moderation.enabled, lambda cfg: NSFWStage(cfg.filters.moderation)),
    "moderation_api": _if(
        lambda cfg: cfg.filters.moderation.enabled and cfg.filters.moderation.api.enabled,
        lambda cfg: APIModerationStage(cfg.filters.moderation),
    ),
    "embed": _if(lambda cfg: cfg.filters.semantic.enabled, lambda cfg: EmbedStage(cfg.filters.semantic)),
    "categorise": _categorise,
    "exact_dedup": lambda cfg: ExactDedupStage(
        cfg.filters.exact_dedup_key, with_d_ling=cfg.d_ling.enabled, max_pairs_per_image=cfg.filters.max_pairs_per_image
    ),
    "phash_dedup": _if(
        lambda cfg: cfg.filters.phash.enabled,
        lambda cfg: PhashDedupStage(cfg.filters.phash, cfg.filters.exact_dedup_key),
    ),
    "semantic_dedup": _if(
        lambda cfg: cfg.filters.semantic.enabled,
        lambda cfg: SemanticDedupStage(cfg.filters.semantic, cfg.filters.exact_dedup_key),
    ),
    "caption": _caption,
    "translate": _if(
        lambda cfg: cfg.d_ling.enabled, lambda cfg: TranslateStage(cfg.d_ling.translate, cfg.d_ling.stats_dir)
    ),
    # without qe.model_path it passes rows through, qe_score null
    "qe": _if(lambda cfg: cfg.d_ling.enabled, lambda cfg: QEStage(cfg.d_ling.qe, cfg.d_ling.stats_dir)),
}


def build_plan(cfg: BuildConfig) -> list[Step]:
    """The steps of one build, in order: ``stages.plan`` (default :data:`DEFAULT_PLAN`), each name built from
    :data:`STAGES` and each user entry imported (:func:`user_stage`), ``stages.extra`` inserted after the stage
    each names, then the :data:`POOLS` members fused. Models load in each stage's ``setup`` on the workers.

    Raises:
        PlanError: an unknown stage name, a user stage that cannot be imported or placed, a plan out of order.
    """
    stages: list[Stage] = []
    for entry in cfg.stages.plan if cfg.stages.plan is not None else DEFAULT_PLAN:
        if isinstance(entry, str) and ":" not in entry:
            if entry not in STAGES:
                raise PlanError(f"unknown stage {entry!r} in stages.plan: built-in stages are {list(STAGES)}")
            stage = STAGES[entry](cfg)
            if stage is not None:
                stages.append(stage)
        else:  # a user's stage, in the place the list gives it
            stages.append(_routed(user_stage(entry)[0], cfg))
    for spec in cfg.stages.extra:
        stage, after = user_stage(spec)
        stages = insert_stage(stages, _routed(stage, cfg), after)
    plan = fuse(stages, cfg)
    check_plan(plan)
    return plan


def _routed(stage: Stage, cfg: BuildConfig) -> Stage:
    """A user's :class:`~mella.stages.base.Filter` that judges the alt-text (``routable = True``) routes what it
    rejects to D_ling when D_ling is on, as ``alt_text`` and ``langid`` do."""
    if isinstance(stage, Filter) and stage.routable and "route_to_d_ling" not in vars(stage):
        stage.route_to_d_ling = cfg.d_ling.enabled
    return stage


def fuse(stages: list[Stage], cfg: BuildConfig) -> list[Step]:
    """``stages`` with the members of each :data:`POOLS` group that stand together (a stage placed between two
    members joins them) as one :class:`~mella.stages.base.Fused` step."""
    group_of = {name: g for g, names in POOLS.items() for name in names}
    plan: list[Step] = []
    run: list[Stage] = []
    group = None

    def close() -> None:
        if run:
            plan.append(_pool(group, run, cfg) if group else run[0])

    for i, s in enumerate(stages):
        g = group_of.get(s.name)
        if g is None and group and any(group_of.get(t.name) == group for t in stages[i + 1 : i + 2]):
            g = group  # between two members of the running group: joins it
        if g is not None and g == group:
            run.append(s)
            continue
        close()
        run, group = [s], g
    close()
    return plan


def _pool(group: str, stages: list[Stage], cfg: BuildConfig) -> Fused:
    if group == "ImageStages":
        pool = cfg.ray.image_pool
        return Fused(stages, name=group, resources=pool.stage_resources(), batch_size=pool.batch_size)
    return Fused(stages, name=group)


def stage_names(plan: list[Step]) -> list[str]:
    """Every stage name in plan order, fused members expanded (the funnel's order after ``crawl``)."""
    names: list[str] = []
    for step in plan:
        for s in step.members:
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
    seen_ling = False
    for step in plan[1:]:
        members = getattr(step, "members", [step])
        for s in members:
            if not isinstance(s, Stage):
                raise PlanError(f"{s!r} is not a mella.stages.base.Stage")
        if any(isinstance(s, DedupStage) for s in members):
            if isinstance(step, Fused) or seen_ling:
                raise PlanError(f"dedup stage {step!r} must stand alone, before the D_ling stages")
        elif any(s.d_ling for s in members):
            seen_ling = True
        elif seen_ling:
            raise PlanError(f"{step!r} comes after a D_ling stage but is not one (set d_ling = True)")


def user_stage(spec: str | dict) -> tuple[Stage, str | None]:
    """A user's stage from ``'pkg.module:Class[@after] [key=value ...]'`` or ``{class, after, args}``:
    ``(instance, after)``; the arguments go to the class's constructor.

    The module is imported in the driver (the current directory is on ``sys.path``, as for
    ``python -m``) and registered with cloudpickle *by value*, so Ray workers run it without the
    module on their path.

    Raises:
        PlanError: malformed spec, module or class not found, or not a Stage subclass.
    """
    if isinstance(spec, str):
        head, *pairs = spec.split()
        target, _, after = head.partition("@")
        args: dict = {}
        for pair in pairs:  # 'key=value', the value read as YAML (3 → int, 0.5 → float, true → bool)
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise PlanError(f"stage {head!r}: argument {pair!r} is not key=value")
            args[key] = yaml.safe_load(value)
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
        return plan[: 1 + len(units)] + [stage] + plan[1 + len(units) :]
    for i, step in enumerate(plan):
        members = step.members
        if any(s.name == after for s in members):
            return plan[: i + 1] + [stage] + plan[i + 1 :]
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
            import onnxruntime as ort

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


#: The setting that sizes a pool, named when a plan does not fit the cluster (the model pool's size is the largest
#: ``pool_size`` of its members' config blocks).
POOL_SETTINGS = {
    "ImageStages": "ray.image_pool.pool_size",
    "moderation": "filters.moderation.pool_size",
    "embed": "filters.semantic.pool_size",
    "categorise": "d_ling.categorise.pool_size",
    "caption": "d_ling.caption.pool_size",
    "translate": "d_ling.translate.pool_size",
    "qe": "d_ling.qe.pool_size",
}


def demand(steps: list[Step]) -> tuple[float, float, list[tuple[str, int, float, float]]]:
    """What the steps of one streaming phase hold at once: ``(cpus, gpus, pools)``, where ``pools`` lists
    ``(operator, actors, cpus each, gpus each)``. A fixed pool (or an elastic pool's minimum) holds its actors for
    the whole phase; Ray tasks need room for one task of the largest (the source's read tasks: ``LIGHT``)."""
    pools = [
        (s.operator_name, s.resources.pool_size, s.resources.num_cpus, s.resources.num_gpus)
        for s in steps
        if s.resources.pool_size is not None
    ]
    tasks = [s.resources for s in steps if s.resources.pool_size is None] + [LIGHT]
    cpus = sum(n * c for _, n, c, _ in pools) + max(r.num_cpus for r in tasks)
    gpus = sum(n * g for _, n, _, g in pools) + max(r.num_gpus for r in tasks)
    return cpus, gpus, pools


def check_fits(plan: list[Step], cpus: float, gpus: float) -> None:
    """Raise :class:`PlanError` (one line, naming the pool to shrink) when a phase of ``plan`` needs more CPUs or
    GPUs at once than the cluster has: its pools would take every CPU and its tasks never start — Ray Data waits
    for resources that never free, without a message.

    ``cpus``/``gpus``: the cluster's totals (``ray.cluster_resources()``; on an autoscaling cluster, its maximum).
    """
    _, units, globals_, ling = phases(plan)
    for phase, steps in (
        ("per-unit", units),
        ("write", [s for s in globals_ if not isinstance(s, DedupStage)]),
        ("D_ling", ling),
    ):
        need_c, need_g, pools = demand(steps)
        for kind, need, have, i in (("CPU", need_c, cpus, 2), ("GPU", need_g, gpus, 3)):
            if need <= have + 1e-9:
                continue
            biggest = max(pools, key=lambda p: p[1] * p[i], default=None)
            if biggest is None or biggest[1] * biggest[i] == 0:
                raise PlanError(f"the {phase} phase needs {need:g} {kind}s at once, the cluster has {have:g}")
            name, n, each = biggest[0], biggest[1], biggest[i]
            fit = int((have - (need - n * each)) // each + 1e-9)
            setting = POOL_SETTINGS.get(name) or "/".join(
                POOL_SETTINGS.get(s.name, f"{s.name}.pool_size") for s in _members(plan, name)
            )
            held = ", ".join(f"{p[0]} {p[1]} x {p[i]:g}" for p in pools if p[i])
            advice = f"shrink {setting} to {fit}" if fit >= 1 else f"give the {name} pool fewer {kind}s per actor"
            raise PlanError(
                f"the plan cannot run: the {phase} phase needs {need:g} {kind}s at once ({held}, plus one "
                f"task), the cluster has {have:g}; {advice}, or give Ray more {kind}s"
            )


def _members(plan: list[Step], operator: str) -> list[Stage]:
    return next((s.members for s in plan if s.operator_name == operator), [])
