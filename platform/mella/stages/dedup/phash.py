"""pHash near-duplicates (paper appendix B.2, Zauner 2010): coarse-grained dedup after exact dedup.

Each decoded image gets a 64-bit pHash (``imagehash.phash``, in :mod:`mella.stages.filters.decode`). Within
each target language, distinct images whose pHashes are within ``threshold`` bits (Hamming distance)
are near-duplicates; :func:`mella.phash_index.find_pairs` finds every such pair with an exact
multi-index hash (sub-quadratic), run distributed: each table's band key shuffled with Ray Data,
pairs found per bucket in tasks by the index's own search (:func:`mella.phash_index.pairs_in_runs`) and
written as Parquet (:func:`phash_pairs`); the survivor rule of
:mod:`mella.stages.dedup.near_dup` (priority, same-page exemption) decides which images go. Every row
showing a dropped image is rejected (reason ``near_duplicate``, detail: distance and the kept image).

Default threshold 4 bits, from measurements on the miniweb's real images
(``tests/benchmarks/measure_phash_threshold.py``, 261 distinct images > 256 px): planted copies are
within 4 bits for 100 % of JPEG q70 re-encodes, 99.2 % of 90 % resizes, 81.5 % of brightness changes
and 35.7 % of 2 % crops (threshold 6: 100 / 100 / 92.9 / 64.6 %). But distinct screenshots of one
dialog in two states (installer steps, tutorial steps) are often 4–6 bits apart. Without the
same-page rule, threshold 6 removed 33 distinct miniweb images (D_know recall of PAIRS_expected
0.917) and 4 removed 15 (0.958); with it, threshold 4 removes 6 and recall is 0.976. With the
refined rule (same page *and* same normalised alt-text = near-duplicates, issue 12) one more goes: the
GIMP Oilify before/after pair shown under one alt-text (``tests/data/miniweb_decisions.tsv``). Crops and colour
changes are left to CNN semantic dedup. Photo corpora can afford 6–8 (``filters.phash.threshold``).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field

from mella.phash_index import _GOLDEN, choose_num_substrings, hashes_from_hex, num_tables, pairs_in_runs, table_masks
from mella.resources import Strict
from mella.stages.dedup.near_dup import NearDupStage, distinct_images, drops_from_pairs, shuffle_dir, write_pairs
from mella.stages.dedup.shuffle import bucket_groupby, num_partitions


class PhashConfig(Strict):
    """pHash near-duplicate stage (paper appendix B.2)."""

    enabled: bool = True
    threshold: int = Field(4, ge=0, le=32, description="max Hamming distance (bits) of near-duplicate pHashes")


def _bands(t: pa.Table, m: int, threshold: int, p: int) -> pa.Table:
    """One row per (image, multi-index table): the table's substring bits of the pHash (``masked``) and the
    shuffle bucket of (table, masked) in ``[0, p)``."""
    h = hashes_from_hex(t["phash"].to_pylist())
    out = []
    for k, (mask, _earlier) in enumerate(table_masks(m, threshold)):
        masked = h & mask
        with np.errstate(over="ignore"):
            mix = (masked ^ np.uint64(k)) * _GOLDEN
        out.append(
            pa.table(
                {
                    "bucket": pa.array((mix >> np.uint64(33)).astype(np.int64) % p),
                    "table": pa.array(np.full(len(h), k, np.int16)),
                    "lang": t["lang"],
                    "img": t["img"],
                    "h": pa.array(h),
                    "masked": pa.array(masked),
                }
            )
        )
    return pa.concat_tables(out) if out else t.slice(0, 0)


def _bucket_pairs(t: pa.Table, m: int, threshold: int) -> pa.Table:
    """Pairs within ``threshold`` bits among one bucket's band rows: runs of equal (table, lang, masked), searched
    by the index's :func:`mella.phash_index.pairs_in_runs` (verified exactly, each pair from one table only)."""
    lang_codes = pc.dictionary_encode(t["lang"]).combine_chunks()
    lcode = lang_codes.indices.to_numpy()
    tab, masked = t["table"].to_numpy(), t["masked"].to_numpy()
    h, img = t["h"].to_numpy(), t["img"].to_numpy()
    o = np.lexsort((img, masked, lcode, tab))
    ts, ms, ls = tab[o], masked[o], lcode[o]
    new_run = (ts[1:] != ts[:-1]) | (ms[1:] != ms[:-1]) | (ls[1:] != ls[:-1])
    run = np.concatenate(([0], np.cumsum(new_run)))[: len(o)]  # run id per sorted row: one table's bucket
    a, b, dist = pairs_in_runs(run, o, h, tab, table_masks(m, threshold), threshold)
    langs = pa.DictionaryArray.from_arrays(pa.array(lcode[a], pa.int32()), lang_codes.dictionary).cast(pa.string())
    return pa.table(
        {
            "lang": langs,
            "a": pa.array(np.minimum(img[a], img[b])),
            "b": pa.array(np.maximum(img[a], img[b])),
            "dist": pa.array(dist.astype(np.float64)),
        }
    )


def phash_pairs(images_dir: str, n_images: int, threshold: int):
    """Ray Dataset of every pair of distinct images (per language) within ``threshold`` bits: the multi-index
    tables of :mod:`mella.phash_index` as band rows, shuffled by (table, band key), pairs found per bucket."""
    m = choose_num_substrings(max(n_images, 2), threshold)
    p = num_partitions(n_images * num_tables(m, threshold))
    bands = (
        ray.data.read_parquet(images_dir)
        .select_columns(["lang", "img", "phash"])
        .map_batches(_bands, batch_format="pyarrow", fn_kwargs={"m": m, "threshold": threshold, "p": p})
    )
    return bucket_groupby(bands, p, _bucket_pairs, shuffle_dir(images_dir, "bands"), {"m": m, "threshold": threshold})


class PhashDedupStage(NearDupStage):
    """pHash near-duplicates (paper appendix B.2): distinct images (:func:`distinct_images`), pairs within
    ``threshold`` bits (:func:`phash_pairs`), the survivor rule over the pairs; rows of dropped images
    rejected with reason ``near_duplicate``."""

    name = "phash_dedup"
    reason = "near_duplicate"

    def __init__(self, cfg: PhashConfig, exact_mode: str = "image_text") -> None:
        self.cfg, self.exact_mode = cfg, exact_mode

    def find_drops(self, parts: list[str], work: str, upstream: list[str]) -> pa.Table:
        images = os.path.join(work, "images")
        n = distinct_images(parts, upstream, ["phash"], images)
        pairs = write_pairs(phash_pairs(images, n, self.cfg.threshold), os.path.join(work, "pairs")) if n > 1 else None
        dist = pairs["dist"].to_numpy() if pairs is not None else []
        t = self.cfg.threshold
        return drops_from_pairs(pairs, images, lambda k, url: f"pHash distance {int(dist[k])} <= {t} to {url}")
