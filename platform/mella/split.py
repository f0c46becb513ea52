"""Train/test split by image (paper 4.1.1): the one place training and evaluation take it from.

Paper 4.1.1 holds out, per language, 100 samples of D_know and 100 of D_ling "not involved in any
stage of training". The unit is the image (``sha256`` of the file bytes), so an image never sits on
both sides, even when it occurs in several rows or in both sources.

Rule (deterministic, no state): within one language and one source, the distinct image hashes are
ordered by ``sha256(SALT + lang + sha256)`` and the first ``n_test`` form that source's test set
(capped at ``max_fraction`` of the source's images so that a tiny corpus still leaves training data).
The training set is every row of the language whose image is in neither source's test set. The split
depends only on the set of images, so re-running on the same snapshot gives the same split; a run's
metadata records the snapshot hash (``mella.train.artifacts``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

#: Paper 4.1.1: 100 D_know + 100 D_ling test samples per language.
N_TEST = 100
#: At most this fraction of a source's images goes to test (only binds below 500 images).
MAX_FRACTION = 0.2
SALT = "mella-split-v1"
SOURCES = ("d_know", "d_ling")


@dataclass(frozen=True)
class Split:
    """``train`` and ``test`` rows of one source (``d_know`` or ``d_ling``), same schema as the input."""

    train: pa.Table
    test: pa.Table


def _key(lang: str, sha: str) -> str:
    return hashlib.sha256(f"{SALT}\x1f{lang}\x1f{sha}".encode()).hexdigest()


def held_out_images(table: pa.Table, lang: str, n_test: int = N_TEST, max_fraction: float = MAX_FRACTION) -> set[str]:
    """The held-out image hashes of one source table for ``lang``.

    Args:
        table: rows with at least ``lang`` and ``sha256`` columns (RECORD_SCHEMA).
        lang: ISO 639-1 code; rows of other languages are ignored.
        n_test: test images wanted (paper: 100).
        max_fraction: cap on the held-out share of the source's distinct images.

    Raises:
        ValueError: a row of ``lang`` has a null or empty ``sha256``.
    """
    rows = table.filter(pc.equal(table["lang"], lang))
    shas = rows["sha256"].to_pylist()
    if any(not s for s in shas):
        raise ValueError(f"{sum(not s for s in shas)} row(s) of {lang!r} lack sha256; cannot split by image")
    distinct = sorted(set(shas), key=lambda s: _key(lang, s))
    k = min(n_test, int(len(distinct) * max_fraction))
    return set(distinct[:k])


def split_by_image(
    tables: dict[str, pa.Table | None], lang: str, n_test: int = N_TEST, max_fraction: float = MAX_FRACTION
) -> dict[str, Split]:
    """Split each source (``{"d_know": table, "d_ling": table_or_None}``) of one language by image.

    Returns one :class:`Split` per non-null source. An image held out of either source is removed from
    the training rows of both. Raises ``ValueError`` for an unknown source name or missing ``sha256``.
    """
    unknown = set(tables) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown source(s) {sorted(unknown)}; expected {SOURCES}")
    present = {s: t.filter(pc.equal(t["lang"], lang)) for s, t in tables.items() if t is not None}
    held = {s: held_out_images(t, lang, n_test, max_fraction) for s, t in present.items()}
    held_all = pa.array(sorted(set().union(*held.values())), pa.string())
    out = {}
    for source, t in present.items():
        in_any = pc.is_in(t["sha256"], value_set=held_all)
        in_own = pc.is_in(t["sha256"], value_set=pa.array(sorted(held[source]), pa.string()))
        out[source] = Split(train=t.filter(pc.invert(in_any)), test=t.filter(in_own))
    return out
