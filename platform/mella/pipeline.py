"""build_corpus: the plan that turns web pages into D_know and D_ling (paper 3.1, appendix B.2–B.3) on Ray Data.

Phases (each resumable; output directory layout in the README):

0. **crawl** (live input only): seeds → ``DIR/warc/pages-*.warc.gz`` (:mod:`mella.crawl`, Ray tasks
   sharded by registered domain). ``--warc`` input skips this phase.
1. **candidates**, per work unit of ≤ ``files_per_group`` WARC files, streamed through Ray Data:
   the plan's source and per-unit steps (:mod:`mella.plan`: extract → alt_text → langid → image
   pool → model pool → user stages) → parquet parts. A unit is committed by renaming its staging
   directory; a rerun skips committed units, and images fetched by a killed run are read back
   from ``DIR/warc/images-*.warc``.
2. **global dedup** over all units: each :class:`~mella.stages.base.DedupStage` of the plan finds its
   decisions (exact, pHash, CNN) into ``_work/decisions/<stage>.parquet``.
3. **final**: all units → the dedup stages applied → ``d_know/``, ``rejects/`` and the D_ling
   candidates, written to a staging directory and swapped in whole; with D_ling, the plan's D_ling
   steps (caption → translate → qe) into ``d_ling/``; then ``funnel.json`` and ``stage_stats.json``.

Rows carry the one schema of :mod:`mella.schema` from extraction to the output; a dropped row keeps
its place in the stream with ``stage``/``reason`` set until the writer routes it to ``rejects/``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mella import funnel as funnel_mod
from mella.config import BuildConfig
from mella.crawl import crawl_shard, merge_results, read_seeds, shard_seeds
from mella.executor import apply, read_source, stage_stats
from mella.io import remove_stale, replace_dir, write_json_atomic, write_parquet_atomic
from mella.plan import CRAWL, build_plan, phases, stage_names
from mella.resources import StageResources
from mella.schema import RECORD_SCHEMA, REJECT_SCHEMA, conform, record_id, to_table
from mella.stages.base import LIGHT, DedupStage, reject
from mella.stages.dedup.shuffle import read_applied
from mella.stages.io.fetch import reopen_units_with_transient_failures
from mella.warc import cleanup_open_shards, expand_warc_paths, shard_paths, slice_offsets

log = logging.getLogger("mella.build_corpus")


# ------------------------------------------------------------------------------------ writers
def batch_name(batch: pa.Table) -> str:
    """File name stem for a batch's output, from its row ids and reject reasons.

    A task that wrote its file and was lost with its node before reporting is run again (Ray
    retries it); naming by content makes the retry overwrite that file instead of adding a copy.
    Two batches with equal names hold the same records with the same outcomes, so keeping one file
    loses nothing. Returns 32 hex digits (SHA-1 prefix).
    """
    h = hashlib.sha1()
    for col in ("id", "reason"):
        h.update("\x1f".join(map(str, batch[col].to_pylist())).encode() + b"\x1e")
    return h.hexdigest()[:32]


def write_parts(batch: pa.Table, out_dir: str) -> pa.Table:
    """Write one batch (REJECT_SCHEMA) as ``out_dir/part-<batch_name>.parquet``; return its row count and
    how many of its rows are still in (not rejected by a per-unit stage)."""
    batch = conform(batch, REJECT_SCHEMA)
    if batch.num_rows:
        write_parquet_atomic(batch, os.path.join(out_dir, f"part-{batch_name(batch)}.parquet"))
    return pa.table({"rows": [batch.num_rows], "active": [batch["reason"].null_count]})


def split_and_write(batch: pa.Table, know_dir: str, rejects_dir: str, candidates_dir: str | None = None) -> pa.Table:
    """Final writer: kept rows → ``know_dir`` (RECORD_SCHEMA), rejects → ``rejects_dir`` (no image bytes).

    With ``candidates_dir``, kept rows routed to D_ling (``d_ling_reason`` set) go there instead
    (REJECT_SCHEMA, bytes kept) for the D_ling phase.
    """
    batch = conform(batch, REJECT_SCHEMA)
    active = pc.is_null(batch["reason"])
    routed = pc.and_(active, pc.is_valid(batch["d_ling_reason"])) if candidates_dir else pa.array([False] * batch.num_rows)
    kept = conform(batch.filter(pc.and_(active, pc.invert(routed))), RECORD_SCHEMA)
    cand = batch.filter(routed)
    rej = batch.filter(pc.invert(active))
    if rej.num_rows:
        for col, typ in (("image", pa.binary()), ("embedding", pa.list_(pa.float32()))):
            rej = rej.set_column(rej.schema.get_field_index(col), col, pa.nulls(rej.num_rows, typ))
    name = batch_name(batch)
    for table, directory in ((kept, know_dir), (rej, rejects_dir), (cand, candidates_dir)):
        if table.num_rows:
            write_parquet_atomic(table, os.path.join(directory, f"part-{name}.parquet"))
    return pa.table({"kept": [kept.num_rows], "rejected": [rej.num_rows], "d_ling_candidates": [cand.num_rows]})


def _duration(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.5 h"``: an ETA for the progress line."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------ runner
class BuildCorpus:
    """Run the whole job for one :class:`BuildConfig`. ``run()`` returns the funnel dict.

    ``progress``: optional ``fn(phase, text)`` called as phases advance (the job's console line,
    :class:`mella.console.Progress`); a new phase name starts a phase.
    """

    def __init__(self, cfg: BuildConfig, seeds_base_url: str | None = None, progress=None) -> None:
        self.cfg = cfg
        self.progress = progress or (lambda phase, text: None)
        self.out = str(cfg.output)
        self.warc_dir = os.path.join(self.out, "warc")
        self.work = os.path.join(self.out, "_work")
        self.units_dir = os.path.join(self.work, "units")
        self.seeds_base_url = seeds_base_url
        self.plan = build_plan(cfg)
        self.source, self.unit_steps, self.global_steps, self.ling_steps = phases(self.plan)

    # -------------------------------------------------------------------------------- phases
    def crawl(self) -> dict:
        """Phase 0: crawl seeds into page WARC shards (Ray tasks). Returns crawl stats."""
        seeds = read_seeds(str(self.cfg.seeds), self.seeds_base_url)
        n_shards = max(1, min(len(seeds), int(ray.available_resources().get("CPU", 1)) * 2))
        task = ray.remote(num_cpus=0.5, max_retries=2)(crawl_shard)
        refs = [task.remote(group, self.cfg.crawl, self.warc_dir, i, self.cfg.offline)
                for i, group in enumerate(shard_seeds(seeds, n_shards))]
        self.progress("crawl", f"{len(seeds)} seeds, 0/{len(refs)} shards done")
        results, pending = [], list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.extend(ray.get(done))
            self.progress("crawl", f"{len(results)}/{len(refs)} shards done, {sum(r.pages_ok for r in results)} pages, "
                                   f"{sum(len(r.failures) for r in results)} failed")
        stats, failures = merge_results(results, len(seeds))
        rows = []
        for f in failures:
            row = {"id": record_id(None, f["url"], None), "page_url": f["url"], "source": "crawl"}
            reject(row, "crawl", f["reason"], f"{f['host']}: {f['detail']}")
            rows.append(row)
        write_parquet_atomic(to_table(rows, REJECT_SCHEMA), os.path.join(self.work, "crawl_rejects.parquet"))
        write_json_atomic(stats, os.path.join(self.work, "crawl_stats.json"))
        return stats

    def _inputs(self) -> tuple[list[str], str]:
        """(page WARC files, source tag)."""
        if self.cfg.warc:
            return expand_warc_paths(self.cfg.warc), "warc"
        return shard_paths(self.warc_dir, "pages"), "crawl"

    def _committed_files(self) -> set[str]:
        done: set[str] = set()
        for m in glob.glob(os.path.join(self.units_dir, "*", "UNIT.json")):
            with open(m, encoding="utf-8") as f:
                done.update(json.load(f)["files"])
        return done

    def candidates(self) -> None:
        """Phase 1: stream uncommitted WARC files through the plan's per-unit steps, unit by unit."""
        inputs, source = self._inputs()
        done = self._committed_files()
        todo = [p for p in inputs if p not in done]
        step = self.cfg.ray.files_per_group
        n_units, started = -(-len(todo) // step), time.monotonic()
        for u, i in enumerate(range(0, len(todo), step)):
            files = todo[i:i + step]
            unit = hashlib.sha1("\n".join(files).encode()).hexdigest()[:16]
            staging = os.path.join(self.units_dir, f"{unit}.staging")
            final = os.path.join(self.units_dir, unit)
            t0 = time.time()
            log.info("unit %s: %d WARC file(s), %d/%d pending", unit, len(files), len(todo) - i, len(inputs))
            eta = f", ETA {_duration((time.monotonic() - started) / i * (len(todo) - i))}" if i else ""
            self._run_unit(files, source, staging, f"unit {u + 1}/{n_units}{eta}")
            write_json_atomic({"files": files, "seconds": round(time.time() - t0, 2)}, os.path.join(staging, "UNIT.json"))
            replace_dir(staging, final)

    def _run_unit(self, files: list[str], source: str, staging: str, where: str = "") -> None:
        parts_dir = os.path.join(staging, "parts")
        os.makedirs(parts_dir, exist_ok=True)
        k = self.cfg.ray.records_per_slice
        index = ray.remote(num_cpus=LIGHT.num_cpus, max_retries=2)(slice_offsets)
        offsets = ray.get([index.remote(p, k) for p in files])  # O(files x slices) per unit, never O(rows)
        items = [{"path": p, "source": source, "offset": o, "limit": k if i < len(offs) - 1 else None}  # last: to the end
                 for p, offs in zip(files, offsets) for i, o in enumerate(offs)]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(read_source, batch_size=1, batch_format="pyarrow", **LIGHT.map_batches_args(),
                            fn_kwargs={"source_stage": self.source, "stats_dir": staging})
        for st in self.unit_steps:
            ds = apply(ds, st, staging)
        ds = ds.map_batches(write_parts, batch_format="pyarrow", batch_size=None, fn_kwargs={"out_dir": parts_dir},
                            **StageResources(num_cpus=0.1).map_batches_args())
        where = f"{where}, " if where else ""
        self.progress("images", f"{where}{len(files)} WARC file(s) in {len(items)} slices: extract → alt-text → langid → "
                                "fetch → decode → models")
        rows, active, t0 = 0, 0, time.monotonic()
        for r in ds.iter_rows():  # one row per written batch: its row count and rows still in
            rows, active = rows + r["rows"], active + r["active"]
            self.progress("images", f"{where}{rows} candidate rows done, {active} still in "
                                    f"({rows / max(time.monotonic() - t0, 1e-3):.1f} rows/s)")
        log.info("unit written: %d rows, %d still in", rows, active)

    def unit_parts(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.units_dir, "*", "parts", "*.parquet")))

    def final(self, crawl_stats: dict | None) -> dict:
        """Phases 2–3: the dedup stages' decisions over all units; d_know/ + rejects/ (+ D_ling) written
        atomically; funnel."""
        parts = self.unit_parts()
        self.progress("dedup", f"exact, pHash and CNN duplicates over {len(parts)} part file(s)")
        decisions_dir = os.path.join(self.work, "decisions")
        os.makedirs(decisions_dir, exist_ok=True)
        remove_stale(decisions_dir)
        upstream: dict[str, str] = {}
        for st in self.global_steps:
            if hasattr(st, "find"):
                path = os.path.join(decisions_dir, f"{st.name}.parquet")
                st.find(parts, path, dict(upstream))
                upstream[st.name] = path
                log.info("%s: decisions in %s", st.name, path)
        staging = os.path.join(self.out, f".staging-{uuid.uuid4().hex[:8]}")
        dirs = {k: os.path.join(staging, k) for k in ("d_know", "rejects", "d_ling_candidates", "d_ling", "stats")}
        for d in dirs.values():
            os.makedirs(d)
        self.progress("write", "d_know/ and rejects/")
        if parts:
            # the dedup stages' decisions are applied part by part (mella.stages.dedup.shuffle.read_applied):
            # each task holds one part and that part's decisions, never all of them
            dedup = [st for st in self.global_steps if isinstance(st, DedupStage)]
            ds = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=len(parts))
            ds = ds.map_batches(read_applied, batch_size=1, batch_format="pyarrow", **LIGHT.map_batches_args(),
                                fn_kwargs={"stages": dedup, "stats_dir": dirs["stats"]})
            for st in self.global_steps:
                if not isinstance(st, DedupStage):
                    ds = apply(ds, st, dirs["stats"])
            ds = ds.map_batches(split_and_write, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"know_dir": dirs["d_know"], "rejects_dir": dirs["rejects"],
                                           "candidates_dir": dirs["d_ling_candidates"] if self.cfg.d_ling.enabled else None})
            ds.take_all()
        if self.ling_steps:
            self.d_ling(dirs["d_ling_candidates"], dirs["d_ling"], dirs["rejects"], dirs["stats"])
        crawl_rej = os.path.join(self.work, "crawl_rejects.parquet")
        if os.path.exists(crawl_rej) and not self.cfg.warc:
            t = pq.read_table(crawl_rej)
            if t.num_rows:
                write_parquet_atomic(conform(t, REJECT_SCHEMA), os.path.join(dirs["rejects"], "part-crawl.parquet"))
        page_stats = []
        for m in glob.glob(os.path.join(self.units_dir, "*", "pages-*.json")):
            with open(m, encoding="utf-8") as fh:
                page_stats.append(json.load(fh))
        plan_stages = [s for s in self.plan[1:] for s in (s.stages if hasattr(s, "stages") else [s])]
        result = funnel_mod.compute(dirs["d_know"], dirs["rejects"], page_stats, crawl_stats, self.cfg.langs,
                                    stages=[CRAWL] + stage_names(self.plan),
                                    listed=[s.name for s in plan_stages if s.rejects],
                                    ling_stages=[s.name for s in self.ling_steps],
                                    candidates_dir=dirs["d_ling_candidates"],
                                    ling_dir=dirs["d_ling"] if self.cfg.d_ling.enabled else None)
        timing = stage_stats([os.path.join(self.units_dir, u) for u in os.listdir(self.units_dir)] + [dirs["stats"]])
        if crawl_stats:  # network seconds per origin: timings, not counts (funnel.json stays equal across reruns)
            timing["crawl"] = {"slowest_hosts": crawl_stats.get("slowest_hosts", []),
                               "host_seconds": {h: v.get("seconds", 0.0) for h, v in crawl_stats.get("hosts", {}).items()}}
        replace_dir(dirs["d_know"], os.path.join(self.out, "d_know"))
        replace_dir(dirs["rejects"], os.path.join(self.out, "rejects"))
        if self.cfg.d_ling.enabled:
            replace_dir(dirs["d_ling"], os.path.join(self.out, "d_ling"))
        shutil.rmtree(staging)
        write_json_atomic(result, os.path.join(self.out, "funnel.json"))
        write_json_atomic(timing, os.path.join(self.out, "stage_stats.json"))
        return result

    def d_ling(self, candidates_dir: str, ling_dir: str, rejects_dir: str, stats_dir: str) -> None:
        """Phase 4 (D_ling enabled): the plan's D_ling steps over the routed candidates → ``ling_dir``.

        The candidates are the images whose alt-text was unusable (``d_ling_reason``) and that passed
        every image filter and dedup stage; they were categorised in phase 1. Captions are cached in
        ``_work/caption_cache/`` as they are made, so a rerun after a kill does not caption again.
        """
        files = sorted(glob.glob(os.path.join(candidates_dir, "*.parquet")))
        if not files:
            log.info("D_ling: no candidates")
            return
        self.progress("d_ling", f"caption → translate → qe over {len(files)} candidate part(s)")
        ds = ray.data.read_parquet(files, schema=REJECT_SCHEMA)
        for st in self.ling_steps:
            ds = apply(ds, st, stats_dir)
        ds = ds.map_batches(split_and_write, batch_format="pyarrow", batch_size=None,
                            fn_kwargs={"know_dir": ling_dir, "rejects_dir": rejects_dir})
        n = sum(r["kept"] for r in ds.take_all())
        log.info("D_ling: %d rows", n)

    # ----------------------------------------------------------------------------------- run
    def run(self) -> dict:
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(self.units_dir, exist_ok=True)
        remove_stale(self.out)
        remove_stale(self.units_dir)
        remove_stale(self.work)
        cleanup_open_shards(self.warc_dir) if os.path.isdir(self.warc_dir) else None
        crawl_stats = None
        if not self.cfg.warc:
            log.info("crawl: seeds from %s", self.cfg.seeds)
            crawl_stats = self.crawl()
            log.info("crawl: %d pages, %d failures", crawl_stats["pages_ok"], crawl_stats["pages_failed"])
        if self.cfg.crawl.retry_failed:
            log.info("retry-failed: %d unit(s) reopened", reopen_units_with_transient_failures(self.units_dir))
        self.candidates()
        return self.final(crawl_stats)
