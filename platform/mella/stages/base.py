"""The stage contract: every step of build_corpus is a :class:`Stage` (after NeMo Curator's
``ProcessingStage`` and datatrove's filters).

A stage declares, next to its code:

- ``name`` — what the funnel and the reject rows call it (``stage`` column);
- ``resources`` — a :class:`~mella.resources.StageResources` (CPUs, GPUs, memory, Ray tasks or a
  fixed/elastic actor pool) and ``batch_size`` (rows per Ray Data batch; None: whole blocks);
- ``reads`` / ``writes`` — the record columns (:mod:`mella.schema`) it reads and fills; a stage that
  does not read ``image`` or ``embedding`` never gets those bytes as Python objects;
- ``setup()`` / ``teardown()`` — load / release models, sessions, files (once per actor, or per
  task batch for Ray tasks); constructors only keep configuration, so a stage pickles small;
- the work, in one of three forms:

  * :class:`Filter` — ``filter(row) -> reason | (reason, detail) | None``: the base class rejects,
    or routes to D_ling when the filter judges the alt-text and D_ling is on;
  * :class:`Stage` (enricher) — ``process(rows)``: fill columns of the active rows in place, call
    :meth:`Stage.reject` on the rows it drops; may return a new row list (one row → several);
  * :class:`DedupStage` (global) — ``find(parts, ...)`` writes decisions over *all* work-unit parts
    to a Parquet file; the executor applies them (:func:`mella.executor.apply_decisions`), never the stage.

Rows are dicts with ``REJECT_SCHEMA`` keys. A row whose ``reason`` is set was rejected upstream:
later stages never see it, it keeps its place in the stream and the writer routes it to
``rejects/``. Rejected rows lose their image bytes and embedding at once. The executor
(:mod:`mella.executor`) runs a plan of stages (:mod:`mella.plan`) on Ray Data, several of them
fused into one actor pool where that saves copies (:class:`Fused`).
"""

from __future__ import annotations

from typing import ClassVar

from mella.executor import TaskRunner, apply_decisions
from mella.resources import StageResources
from mella.schema import HEAVY_COLUMNS, REJECT_SCHEMA, conform

#: Ray tasks at half a CPU: the default for pure-Python stages (Ray Data fits two per core).
LIGHT = StageResources(num_cpus=0.5)


def reject(row: dict, stage: str, reason: str, detail: str = "") -> None:
    """Mark ``row`` as dropped by ``stage`` for ``reason`` (detail cut to 500 chars); frees its image and embedding."""
    row["stage"] = stage
    row["reason"] = reason
    row["detail"] = (detail or "")[:500]
    row["image"] = None
    row["embedding"] = None


class Stage:
    """An enricher, and the base of every stage (see the module docstring for the contract).

    Subclasses set ``name``, ``reads``/``writes``, and implement :meth:`process`; ``resources``
    and ``batch_size`` may be class attributes or set per instance from the stage's config.
    ``rejects`` says whether the stage can drop rows (the funnel lists such stages even when
    they dropped nothing).
    """

    name: ClassVar[str] = "stage"
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[str, ...]] = ()
    rejects: ClassVar[bool] = False
    #: a D_ling stage (caption → translate → qe) runs on the images routed to D_ling, after the global dedup
    d_ling: ClassVar[bool] = False
    resources: StageResources = LIGHT
    batch_size: int | None = None

    @property
    def members(self) -> list[Stage]:
        """The stages this plan step runs: ``[self]`` (a :class:`Fused` step lists its own)."""
        return [self]

    @property
    def operator_name(self) -> str:
        """The Ray Data operator name of this step (the class name: ``AltTextStage``)."""
        return type(self).__name__

    @property
    def reads_image(self) -> bool:
        """Whether the stage needs the heavy columns (``image``, ``embedding``) as Python objects."""
        return any(c in HEAVY_COLUMNS for c in self.reads)

    def setup(self) -> None:
        """Load what the stage needs (models, sessions); called once per actor, or per batch for Ray tasks."""

    def teardown(self) -> None:
        """Release what :meth:`setup` acquired (close files, sessions)."""

    def process(self, rows: list[dict]) -> list[dict] | None:  # pragma: no cover - abstract
        """Work on the active rows in place; return None, or a new list of rows that replaces them."""
        raise NotImplementedError

    def helper_cpu_s(self) -> float:
        """CPU seconds spent so far in threads the stage runs itself (an event loop), which the executor cannot
        see from the thread calling :meth:`process`; added to the stage's ``cpu_s`` counter when its pool runs several
        batches at once (otherwise the process CPU clock already counts them). 0 for most stages."""
        return 0.0

    def reject(self, row: dict, reason: str, detail: str = "") -> None:
        """Drop ``row`` under this stage's name (see :func:`reject`)."""
        reject(row, self.name, reason, detail)

    def __call__(self, batch):
        """Run this stage alone on one Arrow batch (REJECT_SCHEMA columns) outside Ray — tools, tests,
        notebooks; :meth:`setup` runs on first use. Returns the batch with the stage applied."""
        if not getattr(self, "_set_up", False):
            self.setup()
            self._set_up = True
        return TaskRunner.run(TaskRunner([self]), batch)

    def __enter__(self) -> Stage:
        """``with Stage(cfg) as s:`` — setup and teardown around use outside Ray (tools, tests)."""
        self.setup()
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Filter(Stage):
    """A pure filter (datatrove's ``BaseFilter``): implement :meth:`filter`; the base class drops the row.

    ``routable`` filters judge the alt-text (``alt_text``, ``langid``): with ``route_to_d_ling`` a row
    they would drop stays active with ``d_ling_reason = "<stage>:<reason>"`` — its image can still
    be captioned (paper 3.1.2) — and rows already routed are not judged again.
    """

    rejects: ClassVar[bool] = True
    routable: ClassVar[bool] = False
    route_to_d_ling: bool = False

    def filter(self, row: dict) -> str | tuple[str, str] | None:  # pragma: no cover - abstract
        """``None`` to keep the row, else the reason code (or ``(reason, detail)``) to drop it."""
        raise NotImplementedError

    def process(self, rows: list[dict]) -> None:
        route = self.routable and self.route_to_d_ling
        for r in rows:
            if self.routable and r.get("d_ling_reason"):
                continue
            verdict = self.filter(r)
            if verdict is None:
                continue
            reason, detail = (verdict, "") if isinstance(verdict, str) else verdict
            if route:
                r["d_ling_reason"] = f"{self.name}:{reason}"
            else:
                self.reject(r, reason, detail)


class DedupStage(Stage):
    """A global dedup stage: it finds decisions over every work unit's rows; the executor applies them.

    :meth:`find` runs in the driver between the per-unit phase and the write phase; it may start
    Ray work, and writes its decisions to ``decisions`` (a Parquet file under the job's work
    directory; the driver keeps only paths). ``upstream`` maps each earlier dedup stage's name to
    its decisions file (pHash needs exact dedup's survivors, CNN dedup the pHash drops). A dedup
    stage never rejects rows itself: the write phase applies every stage's decisions part by part
    (:func:`mella.executor.apply_decisions`), and so does calling the stage on a batch (tools, tests).
    """

    rejects: ClassVar[bool] = True
    decisions: str | None = None

    def process(self, rows: list[dict]) -> None:
        raise TypeError(
            f"{self.name} is a global dedup stage: its decisions are applied by "
            "mella.executor.apply_decisions, not row by row"
        )

    def __call__(self, batch):
        """``batch`` (REJECT_SCHEMA) with this stage's decisions applied (:func:`mella.executor.apply_decisions`)."""
        return apply_decisions(conform(batch, REJECT_SCHEMA), [self])[0]

    def find(self, parts: list[str], decisions: str, upstream: dict[str, str]) -> None:  # pragma: no cover
        """Write the decisions over ``parts`` (unit Parquet files, REJECT_SCHEMA) to ``decisions``."""
        raise NotImplementedError


class Fused:
    """Stages run one after another inside one Ray Data operator (one actor pool or task).

    ``Fused([NSFWStage(m), EmbedStage(e)], name="ModelStages")`` saves an object-store copy of every
    image between the stages and one pool's resources per stage — on a 2-CPU laptop, three 1-CPU
    pools next to the image pool cannot all be scheduled, one can. Rows are converted from Arrow
    once per batch, not once per stage. Unless given, the operator asks for the largest
    CPUs/GPUs/memory/pool any member declares, and batches of the smallest declared ``batch_size``.
    """

    def __init__(
        self,
        stages: list[Stage],
        name: str | None = None,
        resources: StageResources | None = None,
        batch_size: int | None = None,
    ) -> None:
        if not stages:
            raise ValueError("Fused needs at least one stage")
        self.stages = list(stages)
        self.name = name or "+".join(s.name for s in stages)
        self._resources, self._batch_size = resources, batch_size

    @property
    def resources(self) -> StageResources:
        """``resources`` given to the constructor, else the largest of the members' declarations."""
        if self._resources is not None:
            return self._resources
        rs = [s.resources for s in self.stages]
        pools = [r.pool_size for r in rs if r.pool_size is not None]
        maxes = [r.max_pool_size for r in rs if r.max_pool_size is not None]
        mem = [r.memory for r in rs if r.memory]
        pool = max(pools) if pools else None
        return StageResources(
            num_cpus=max(r.num_cpus for r in rs),
            num_gpus=max(r.num_gpus for r in rs),
            memory=max(mem) if mem else None,
            pool_size=pool,
            max_pool_size=max(max(maxes), pool) if maxes and pool else None,
        )

    @property
    def batch_size(self) -> int | None:
        """``batch_size`` given to the constructor, else the smallest the members declare."""
        if self._batch_size is not None:
            return self._batch_size
        sizes = [s.batch_size for s in self.stages if s.batch_size]
        return min(sizes) if sizes else None

    @property
    def members(self) -> list[Stage]:
        """The fused stages, in the order they run."""
        return self.stages

    @property
    def operator_name(self) -> str:
        """The Ray Data operator (and actor class) name: the group's name (``ImageStages``)."""
        return self.name

    def __repr__(self) -> str:
        return f"Fused({self.name}: {', '.join(s.name for s in self.stages)})"


#: One step of a plan: a stage, or stages fused into one Ray Data operator.
Step = Stage | Fused
