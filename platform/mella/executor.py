"""The executor: a plan of stages (:mod:`mella.plan`) mapped onto Ray Data.

Each step of the plan — a :class:`~mella.stages.base.Stage` or a :class:`~mella.stages.base.Fused`
group — becomes one ``map_batches`` with the step's declared resources and batch size: Ray tasks
(:class:`TaskRunner`, an object) or an actor pool (:class:`PoolRunner`, a class Ray Data
instantiates once per actor). Both convert a batch from Arrow to rows once, run the step's stages
on the rows still active, and convert back once; columns no stage of the step reads (image bytes,
embeddings) pass through column-wise. Each runner writes its stages' counters — rows in, rejected
(by reason), wall and CPU seconds — to ``stats_dir`` (``stage-*.json``), which
:func:`stage_stats` sums into ``DIR/stage_stats.json``.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mella.io import write_json_atomic
from mella.schema import HEAVY_COLUMNS, REJECT_SCHEMA, conform, to_table

# No import of mella.stages.base here (it imports TaskRunner for ``Stage.__call__``; the reverse would
# be a cycle): steps are used through their contract only (mella.stages.base.Step) — ``members``,
# ``operator_name``, ``resources``, ``batch_size``; stages through ``name``, ``setup``/``process``/``teardown``.


class _Runner:
    """Runs the stages of one step on REJECT_SCHEMA batches (see the module docstring)."""

    def __init__(self, stages: list, stats_dir: str | None = None, concurrent: bool = False) -> None:
        self.stages = stages
        self.stats_dir = stats_dir
        # CPU clock of a stage's counter: the whole process (a model's own threads count too), unless the runner
        # runs several batches at once (a pool's batches_per_actor), where the process clock would also count
        # the other batches: then the calling thread's, plus the threads the stage runs itself (helper_cpu_s)
        self.concurrent = concurrent
        self._clock = time.thread_time if concurrent else time.process_time
        self.heavy = any(s.reads_image for s in stages)
        self._lock = threading.Lock()  # a pool actor may run several batches at once (batches_per_actor)
        self._reset_counts()

    def _reset_counts(self) -> None:
        """Zero the counters and name a new ``stage-<uuid>.json`` for them."""
        self.counts = {
            s.name: {"rows_in": 0, "rejected": Counter(), "wall_s": 0.0, "cpu_s": 0.0, "batches": 0}
            for s in self.stages
        }
        self.stats_file = os.path.join(self.stats_dir, f"stage-{uuid.uuid4().hex}.json") if self.stats_dir else None

    def __getstate__(self) -> dict:  # a TaskRunner is pickled into Ray tasks; a lock is not picklable
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def run(self, batch: pa.Table) -> pa.Table:
        batch = conform(batch, REJECT_SCHEMA)
        light = batch if self.heavy else batch.drop_columns(list(HEAVY_COLUMNS))
        rows = light.to_pylist()
        for s in self.stages:
            active = [r for r in rows if r.get("reason") is None]
            if not active:
                continue
            t0, c0 = time.perf_counter(), self._clock()
            before = {id(r) for r in rows if r.get("reason") is not None}
            out = s.process(active)
            if out is not None:  # one row → several (translate): rejected rows keep their place first
                rows = [r for r in rows if id(r) in before] + out
            wall = time.perf_counter() - t0
            cpu = self._clock() - c0
            new = [r for r in rows if r.get("reason") is not None and id(r) not in before]
            with self._lock:
                c = self.counts[s.name]
                c["rows_in"] += len(active)
                c["batches"] += 1
                c["wall_s"] += wall
                c["cpu_s"] += cpu
                for r in new:
                    self._count_reject(s.name, r)
        out_t = to_table(rows, REJECT_SCHEMA)
        if not self.heavy:  # the heavy columns were never converted: take them from the input, nulled on rejects
            kept = pc.is_null(out_t["reason"])
            for col in HEAVY_COLUMNS:
                i = out_t.schema.get_field_index(col)
                out_t = out_t.set_column(
                    i, col, pc.if_else(kept, batch[col], pa.scalar(None, batch.schema.field(col).type))
                )
        self._write_stats()
        return out_t

    def _count_reject(self, stage: str, row: dict) -> None:
        """Count a row ``stage`` rejected under the stage its ``stage`` column names, when that stage runs later in
        this step: ``DecodeStage`` rejects a header already too small under ``resolution``, so the row counts as
        having entered ``resolution`` and been dropped there — as the funnel counts it. A reject under a name not
        in this step stays with ``stage`` as ``"<name>:<reason>"``."""
        named = row.get("stage")
        if named == stage:
            self.counts[stage]["rejected"][row["reason"]] += 1
        elif named in self.counts:
            self.counts[named]["rows_in"] += 1
            self.counts[named]["rejected"][row["reason"]] += 1
        else:
            self.counts[stage]["rejected"][f"{named}:{row['reason']}"] += 1

    def _write_stats(self) -> None:
        if self.stats_file:
            with self._lock:
                helper = {s.name: s.helper_cpu_s() if self.concurrent else 0.0 for s in self.stages}
                write_json_atomic(
                    {
                        k: {**v, "cpu_s": v["cpu_s"] + helper[k], "rejected": dict(v["rejected"])}
                        for k, v in self.counts.items()
                    },
                    self.stats_file,
                )


class PoolRunner(_Runner):
    """Ray Data callable class for an actor pool: :meth:`Stage.setup` once per actor, teardown when
    Ray Data shuts the actor down gracefully (it deletes the UDF object, ``__del__`` — the only hook
    Ray Data 2.60 offers, ``ActorPoolMapOperator.__ray_shutdown__``; a killed actor has nothing to release)."""

    def __init__(self, stages: list, stats_dir: str | None = None, concurrent: bool = False) -> None:
        super().__init__(stages, stats_dir, concurrent)
        for s in self.stages:
            s.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.run(batch)

    def __del__(self) -> None:
        for s in getattr(self, "stages", []):
            try:
                s.teardown()
            except Exception:
                pass


class TaskRunner(_Runner):
    """Ray Data callable object for Ray tasks: setup, run, teardown around every batch (light stages)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        # each call writes its own counters file: Ray hands every task its own copy of this object, so a file
        # named once in the driver would be overwritten by each task, keeping only the last batch's counts
        self._reset_counts()
        for s in self.stages:
            s.setup()
        try:
            return self.run(batch)
        finally:
            for s in self.stages:
                s.teardown()


def apply(ds, step, stats_dir: str | None = None):
    """``ds.map_batches`` for one plan step (a ``mella.stages.base.Step``) with its declared resources and
    batch size: an actor pool when the step declares ``pool_size``, else Ray tasks."""
    stages = step.members
    args = step.resources.map_batches_args()
    if step.resources.pool_size is not None:
        # a subclass named after the step: what Ray's dashboard and state API show for the pool
        runner = type(step.operator_name, (PoolRunner,), {"__doc__": PoolRunner.__doc__})
        return ds.map_batches(
            runner,
            fn_constructor_kwargs={
                "stages": stages,
                "stats_dir": stats_dir,
                "concurrent": step.resources.batches_per_actor > 1,
            },
            batch_size=step.batch_size,
            batch_format="pyarrow",
            **args,
        )
    fn = TaskRunner(stages, stats_dir)
    fn.__name__ = step.operator_name  # what Ray Data names the operator
    return ds.map_batches(fn, batch_size=step.batch_size, batch_format="pyarrow", **args)


def read_source(batch: pa.Table, source_stage, stats_dir: str) -> Iterator[pa.Table]:
    """Ray Data generator UDF for the plan's source stage: rows ``{path, source, offset, limit}`` (one slice of
    a WARC file, :func:`mella.warc.slice_offsets`) → record batches."""
    for item in batch.to_pylist():
        for rows in source_stage.read(item["path"], item["source"], stats_dir, item["offset"], item["limit"]):
            yield to_table(rows, REJECT_SCHEMA)


def stage_stats(stats_dirs: list[str]) -> dict:
    """Sum the runners' ``stage-*.json`` counters under ``stats_dirs``: ``{stage: {rows_in, rejected,
    wall_s, cpu_s, batches, cpu_ms_per_row}}`` (CPU seconds of the process running the stage)."""
    total: dict[str, dict] = {}
    for d in stats_dirs:
        for p in glob.glob(os.path.join(d, "stage-*.json")):
            with open(p, encoding="utf-8") as f:
                for name, c in json.load(f).items():
                    t = total.setdefault(
                        name, {"rows_in": 0, "rejected": Counter(), "wall_s": 0.0, "cpu_s": 0.0, "batches": 0}
                    )
                    for k in ("rows_in", "wall_s", "cpu_s", "batches"):
                        t[k] += c[k]
                    t["rejected"].update(c["rejected"])
    for t in total.values():
        t["rejected"] = dict(t["rejected"])
        t["wall_s"], t["cpu_s"] = round(t["wall_s"], 3), round(t["cpu_s"], 3)
        t["cpu_ms_per_row"] = round(1000 * t["cpu_s"] / t["rows_in"], 3) if t["rows_in"] else None
    return total


# ------------------------------------------------------------------------------ global dedup: decisions applied
def apply_decisions(t: pa.Table, stages: list, part: str | None = None) -> tuple[pa.Table, dict]:
    """Mark the rows of ``t`` (REJECT_SCHEMA) that the global dedup ``stages`` decided to reject (in plan order: a row
    keeps the first stage's reason), freeing their image and embedding. The decisions are each stage's Parquet file
    (``stage.decisions``, DECISION_SCHEMA): those of ``part`` when ``t`` is one unit part (the write phase), else those
    naming ``t``'s row ids (a batch outside the build: ``DedupStage.__call__``). Stages find decisions; only this
    function applies them. Returns ``(table, per-stage counters)``."""
    from mella.stages.dedup.shuffle import part_decisions, row_key

    counts = {}
    for st in stages:
        t0, c0 = time.perf_counter(), time.process_time()
        active = pc.is_null(t["reason"])
        if part is not None or not st.decisions:
            d = part_decisions(st.decisions, part)
        else:
            d = pq.read_table(
                st.decisions, columns=["key", "reason", "detail"], filters=[("id", "in", t["id"].to_pylist())]
            )
        n_in = pc.sum(active).as_py() or 0
        keys = row_key(t)
        hit = pc.and_(active, pc.is_in(keys, value_set=d["key"])) if d.num_rows else None
        rejected = Counter()
        if hit is not None and pc.any(hit).as_py():
            idx = pc.index_in(keys, value_set=d["key"])
            detail = pc.take(d["detail"], pc.fill_null(idx, 0))
            reason = pc.take(d["reason"], pc.fill_null(idx, 0))
            t = t.set_column(
                t.schema.get_field_index("stage"), "stage", pc.if_else(hit, pa.scalar(st.name), t["stage"])
            )
            t = t.set_column(t.schema.get_field_index("reason"), "reason", pc.if_else(hit, reason, t["reason"]))
            t = t.set_column(t.schema.get_field_index("detail"), "detail", pc.if_else(hit, detail, t["detail"]))
            for col in HEAVY_COLUMNS:
                i = t.schema.get_field_index(col)
                t = t.set_column(i, col, pc.if_else(hit, pa.scalar(None, t.schema.field(col).type), t[col]))
            rejected.update(reason.filter(hit).to_pylist())
        counts[st.name] = {
            "rows_in": n_in,
            "rejected": dict(rejected),
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "batches": 1,
        }
    return t, counts


def read_applied(batch: pa.Table, stages: list, stats_dir: str | None) -> Iterator[pa.Table]:
    """Ray Data generator UDF of the write phase: each unit part (``part`` column) read whole, the global dedup
    stages' decisions for that part applied (:func:`apply_decisions`); counters to ``stats_dir/stage-*.json``.
    Each task holds one part and that part's decisions, never all of them."""
    for part in batch["part"].to_pylist():
        t, counts = apply_decisions(conform(pq.read_table(part), REJECT_SCHEMA), stages, part)
        if stats_dir:
            write_json_atomic(counts, os.path.join(stats_dir, f"stage-{uuid.uuid4().hex}.json"))
        yield t
