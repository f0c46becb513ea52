"""The stage contract: a callable over Arrow batches with one reject path (datatrove-style filters).

Every batch carries ``REJECT_SCHEMA`` columns (the record plus ``stage``/``reason``/``detail``).
A row whose ``reason`` is set has been rejected upstream: later stages pass it through untouched
and the final writer routes it to ``rejects/``. A stage only implements ``process(rows)`` over the
still-active rows and calls :func:`reject` on those it drops; counting and routing are shared.
Rejected rows lose their image bytes (and CNN embedding) at once, so rejects never hold memory downstream.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from mella.schema import REJECT_SCHEMA, conform, to_table


def reject(row: dict, stage: str, reason: str, detail: str = "") -> None:
    """Mark ``row`` as dropped by ``stage`` for ``reason``; frees its image bytes and embedding."""
    row["stage"] = stage
    row["reason"] = reason
    row["detail"] = (detail or "")[:500]
    row["image"] = None
    row["embedding"] = None


def is_active(row: dict) -> bool:
    return row.get("reason") is None


#: Large columns a stage that only reads metadata never needs as Python objects (bytes, 1280 floats).
HEAVY_COLUMNS = ("image", "embedding")


class Stage:
    """Base class for per-row stages used with ``Dataset.map_batches(..., batch_format="pyarrow")``.

    Subclasses set ``name`` and implement ``process(rows)``, mutating the active rows (dicts with
    ``REJECT_SCHEMA`` keys) in place. Model-backed subclasses load their model in ``__init__`` so
    Ray Data can run them in an actor pool. A stage that never reads the image bytes or embedding
    sets ``reads_image = False``: its rows come without ``HEAVY_COLUMNS`` and those columns pass
    through column-wise (nulled on the rows it rejects), so no image is copied into Python.
    """

    name = "stage"
    reads_image = True

    def process(self, rows: list[dict]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = conform(batch, REJECT_SCHEMA)
        light = batch if self.reads_image else batch.drop_columns(list(HEAVY_COLUMNS))
        rows = light.to_pylist()
        active = [r for r in rows if is_active(r)]
        if active:
            self.process(active)
        out = to_table(rows, REJECT_SCHEMA)
        if not self.reads_image:
            kept = pc.is_null(out["reason"])
            for col in HEAVY_COLUMNS:
                i = out.schema.get_field_index(col)
                out = out.set_column(i, col, pc.if_else(kept, batch[col], pa.scalar(None, batch.schema.field(col).type)))
        return out


class Chain:
    """Several stages run one after another inside one Ray Data actor (models loaded once per actor).

    ``Chain([(NSFWStage, {"cfg": m}), (EmbedStage, {"cfg": s})])`` runs like one stage. Putting the
    model stages of a phase in one actor pool saves an object-store copy of every image between
    stages and one actor's resources per stage — on a 2-CPU laptop, three 1-CPU pools next to the
    fetch pool cannot all be scheduled, one can. The pool's resources are the largest of its stages'.
    """

    def __init__(self, stages: list[tuple[type, dict]]) -> None:
        self.stages = [cls(**kwargs) for cls, kwargs in stages]

    def __call__(self, batch: pa.Table) -> pa.Table:
        for stage in self.stages:
            batch = stage(batch)
        return batch
