"""Stage resources, declared once per stage: what Ray schedules a stage with, and how it survives node loss.

Issue 7 and DESIGN.md (after NeMo Curator's stage resources): a pipeline stage declares its CPUs,
GPUs and memory where it is added to the plan, so the Ray autoscaler can size each node type for
it. Model (GPU) stages run in fixed-size actor pools by default, because an elastic pool starts its
actors one at a time and a model actor takes long to load; CPU stages may use an elastic pool
(``pool_size..max_pool_size``) that grows onto nodes joining mid-job.

:meth:`StageResources.map_batches_args` turns a declaration into keyword arguments of
``ray.data.Dataset.map_batches``: ``num_cpus``, ``num_gpus``, ``memory`` and, for a pool,
``compute=ray.data.ActorPoolStrategy(min_size=..., max_size=...)``.

Node loss is handled by Ray Data's defaults, which the stages rely on and tests/test_elastic.py
checks on a multi-node cluster: tasks are retried without limit (``max_retries=-1``,
``ray.data._internal.remote_fn``); pool actors are recreated on another node (``max_restarts=-1``)
and their unfinished batches resubmitted (``max_task_retries=-1``,
``ActorPoolMapOperator._apply_default_remote_args``); blocks lost with a node's object store are
rebuilt by re-running the task or actor task that made them (Ray Core lineage reconstruction).
They are not passed here: Ray 2.60 deprecates extra ``ray_remote_args`` such as ``max_restarts``
in ``map_batches`` (removed in 2.64).

A recreated actor runs its constructor again with the same arguments. Ray Data passes them inside
the serialized UDF, an object owned by the driver, so they survive the loss of a worker node (not
of the head; Ray Core keeps no lineage for actor-constructor arguments, ray-project/ray#53727).
Keep constructor arguments small: configs and paths, never data. A retried task must not add
output: :func:`mella.pipeline.batch_name` names output files by content.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Base of every configuration block: unknown keys are an error (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid")


class StageResources(BaseModel):
    """What one Ray Data stage asks Ray for, per task or per actor.

    Args:
        num_cpus: logical CPUs (fractions allowed; an I/O-bound stage can take 0.25).
        num_gpus: GPUs (fractions pack several actors on one GPU); a model stage sets it > 0.
        memory: bytes of heap reserved for scheduling (Ray's ``memory`` resource); None reserves none.
        pool_size: None runs the stage as stateless Ray tasks; N runs it in an actor pool of N
            actors (a callable class that loads its model once in ``__init__``).
        max_pool_size: makes the pool elastic: Ray Data scales it between ``pool_size`` and this
            with the backlog. None keeps it fixed (the default, as GPU pools should be).
        batches_per_actor: batches one pool actor runs at once, each in its own thread (Ray Data's
            ``ActorPoolStrategy(max_concurrent_calls_per_actor=N, enable_true_multi_threading=True)``).
            For a stage that waits on I/O and then computes in code that releases the GIL (Pillow,
            hashlib, zlib): one batch's downloads are awaited while another's images decode, so the
            actor's core stays busy. The stage must be thread-safe. 1 (the default): one at a time.

    Raises:
        pydantic.ValidationError: ``max_pool_size`` without ``pool_size``, or smaller than it;
            ``batches_per_actor`` > 1 without ``pool_size``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: int | None = Field(None, ge=0, description="bytes reserved per task/actor for scheduling")
    pool_size: int | None = Field(None, ge=1, description="actors in the pool; None: Ray tasks")
    max_pool_size: int | None = Field(None, ge=1, description="elastic pool upper bound; None: fixed size")
    batches_per_actor: int = Field(1, ge=1, description="batches a pool actor runs at once, one thread each")

    @model_validator(mode="after")
    def _check_pool(self) -> StageResources:
        if self.max_pool_size is not None:
            if self.pool_size is None:
                raise ValueError("max_pool_size needs pool_size (an elastic pool is an actor pool)")
            if self.max_pool_size < self.pool_size:
                raise ValueError(f"max_pool_size {self.max_pool_size} < pool_size {self.pool_size}")
        if self.batches_per_actor > 1 and self.pool_size is None:
            raise ValueError("batches_per_actor > 1 needs pool_size (threads of a pool actor)")
        return self

    def map_batches_args(self) -> dict[str, Any]:
        """Keyword arguments for ``Dataset.map_batches``: resources, and ``compute`` for a pool."""
        import ray

        args: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if self.memory:
            args["memory"] = self.memory
        if self.pool_size is not None:
            threads = (
                {"max_concurrent_calls_per_actor": self.batches_per_actor, "enable_true_multi_threading": True}
                if self.batches_per_actor > 1
                else {}
            )
            args["compute"] = ray.data.ActorPoolStrategy(
                min_size=self.pool_size, max_size=self.max_pool_size or self.pool_size, **threads
            )
        return args


class PoolConfig(Strict):
    """The resources block every model-backed stage's config shares (one name per concept).

    ``pool_size`` actors (fixed size, as GPU pools should be: an elastic pool starts its actors
    one at a time and a model actor loads for long), each with ``num_cpus`` CPUs (also the
    library's thread count) and ``num_gpus`` GPUs; ``batch_size`` rows per forward pass and per Ray
    Data batch (a :class:`~mella.stages.base.Fused` pool takes the smallest of its members'). Subclasses
    change the defaults.
    """

    batch_size: int = Field(
        32,
        ge=1,
        description="rows per forward pass and per Ray Data batch (a fused pool takes the smallest of its stages')",
    )
    pool_size: int = Field(1, ge=1, description="actors in the stage's pool (fixed size)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor: 0 on CPU nodes, fractional or 1 on GPU nodes")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor (also the library's thread count)")

    def stage_resources(self) -> StageResources:
        """The :class:`StageResources` of this block (a fixed-size actor pool)."""
        return StageResources(num_cpus=self.num_cpus, num_gpus=self.num_gpus, pool_size=self.pool_size)
