"""build_corpus: the plan that turns web pages into D_know and D_ling (paper 3.1, appendix B.2–B.3) on Ray Data.

Phases (each resumable; output directory layout in the README):

0. **crawl** (live input only): seeds → ``DIR/warc/pages-*.warc.gz`` (:mod:`mella.crawl`, Ray tasks
   sharded by registered domain). ``--warc`` input skips this phase. Phases 0 and 1 overlap: a unit
   starts over the page files closed so far (the shards that have ended) while the other shards crawl on.
1. **candidates**, per work unit of ≤ ``files_per_group`` WARC files, streamed through Ray Data:
   the plan's source and per-unit steps (:mod:`mella.plan`: extract → alt_text → langid → image
   pool → model pool → user stages) → parquet parts. A unit is committed by renaming its staging
   directory; a rerun skips committed units, and images fetched by a killed run are read back
   from ``DIR/warc/images-*.warc``.
2. **global dedup** (:meth:`BuildCorpus.global_dedup`) over all units: each global dedup stage of the plan
   finds its decisions (exact, pHash, CNN) into ``_work/decisions/<stage>.parquet``.
3. **write** (:meth:`BuildCorpus.write`): all units → the decisions applied → ``d_know/``, ``rejects/`` and
   the D_ling candidates, in a staging directory.
4. **D_ling** (:meth:`BuildCorpus.d_ling`, D_ling on): the plan's D_ling steps (caption → translate → qe)
   into ``d_ling/``.
5. **count** (:meth:`BuildCorpus.count`): ``funnel.json`` from the output, ``stage_stats.json`` from the
   stage counters; :meth:`BuildCorpus.publish` swaps the staging directory in whole.

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
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mella import funnel as funnel_mod
from mella.config import BuildConfig
from mella.crawl import crawl_shard, merge_results, read_seeds, shard_seeds
from mella.executor import apply, read_applied, read_source, stage_stats
from mella.io import remove_stale, replace_dir, write_json_atomic, write_parquet_atomic
from mella.plan import CRAWL, build_plan, phases, stage_names
from mella.resources import StageResources
from mella.schema import RECORD_SCHEMA, REJECT_SCHEMA, conform, record_id, to_table
from mella.stages.base import LIGHT, DedupStage, reject
from mella.stages.io.fetch import reopen_units_with_transient_failures
from mella.warc import cleanup_open_shards, expand_warc_paths, shard_paths, slice_offsets

log = logging.getLogger("mella.build_corpus")

#: Logical CPUs a crawl shard's Ray task reserves: none, a shard is I/O-bound (see BuildCorpus.crawl_start).
CRAWL_NUM_CPUS = 0
#: Longest wait (seconds) for the crawl while no page file is ready: a shard's end wakes it at once;
#: the bound is for a long shard closing a full file (64 MiB) while it runs on.
CRAWL_POLL_S = 5.0
#: Seconds without a written batch after which the progress line says what the unit waits for (free CPUs).
RESOURCE_POLL_S = 15.0


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
    routed = (
        pc.and_(active, pc.is_valid(batch["d_ling_reason"])) if candidates_dir else pa.array([False] * batch.num_rows)
    )
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
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.0f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


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
        self._crawl: dict | None = None  # the running crawl (crawl_start): shards, pending refs, results
        self.crawl_stats: dict | None = None  # set when the crawl is over (poll_crawl)
        self._units_started = False  # progress: the crawl's line until the first unit, then the images line

    # -------------------------------------------------------------------------------- phases
    def crawl_start(self) -> None:
        """Phase 0 starts: one Ray task per crawl shard (seeds sharded by registered domain) writing
        ``DIR/warc/pages-*.warc.gz``. The tasks run on while :meth:`candidates` runs units over the
        files already closed; :meth:`poll_crawl` collects them."""
        seeds = read_seeds(str(self.cfg.seeds), self.seeds_base_url)
        n_shards = max(1, min(len(seeds), int(ray.available_resources().get("CPU", 1)) * 2))
        # A shard is I/O-bound: its event loop mostly awaits sockets (CPU: link extraction, WARC gzip).
        # Reserving 0.5 CPU a shard, at 2 shards per CPU, took every logical CPU, so phase 1's pools
        # could not be placed before the crawl ended. Any reservation blocks a unit whose pools and tasks
        # fill the CPUs (on 2: a model actor 1 + two image actors 0.25 + an extract task 0.5), so none:
        # Ray's CPUs are admission control, not a limit (Ray docs, "Resources"); the shard count stays
        # bounded (2 per CPU). SPREAD: Ray's default (hybrid) policy keeps a task on the local node while
        # that node is under half used, which zero-resource tasks never change, so every shard would run
        # on the driver's node; spread, a head node started with 0 CPUs gets its share of shards too.
        task = ray.remote(num_cpus=CRAWL_NUM_CPUS, max_retries=2, scheduling_strategy="SPREAD")(crawl_shard)
        refs = [
            task.remote(group, self.cfg.crawl, self.warc_dir, i, self.cfg.offline)
            for i, group in enumerate(shard_seeds(seeds, n_shards))
        ]
        self._crawl = {"seeds": len(seeds), "shards": len(refs), "pending": refs, "results": [], "t0": time.monotonic()}
        self.progress("crawl", f"{len(seeds)} seeds, 0/{len(refs)} shards done")

    def crawling(self) -> bool:
        """True while crawl shards are still running."""
        return bool(self._crawl and self._crawl["pending"])

    def poll_crawl(self, timeout_s: float = 0.0) -> None:
        """Collect the crawl shards that have ended, waiting up to ``timeout_s`` seconds for one (0: do not
        wait). When the last one ends, write ``_work/crawl_rejects.parquet`` and ``_work/crawl_stats.json``
        and set :attr:`crawl_stats`. A shard that failed (after Ray's retries) raises here."""
        c = self._crawl
        if not self.crawling():
            return
        pending = c["pending"]
        done, c["pending"] = ray.wait(pending, num_returns=1 if timeout_s else len(pending), timeout=timeout_s)
        if not done:
            return
        c["results"].extend(ray.get(done))
        results = c["results"]
        line = (
            f"{len(results)}/{c['shards']} shards done, {sum(r.pages_ok for r in results)} pages, "
            f"{sum(len(r.failures) for r in results)} failed"
        )
        log.info("crawl: %s", line)
        if not self._units_started:
            self.progress("crawl", line)
        if c["pending"]:
            return
        stats, failures = merge_results(results, c["seeds"])
        rows = []
        for f in failures:
            row = {"id": record_id(None, f["url"], None), "page_url": f["url"], "source": "crawl"}
            reject(row, "crawl", f["reason"], f"{f['host']}: {f['detail']}")
            rows.append(row)
        write_parquet_atomic(to_table(rows, REJECT_SCHEMA), os.path.join(self.work, "crawl_rejects.parquet"))
        write_json_atomic(stats, os.path.join(self.work, "crawl_stats.json"))
        self.crawl_stats = stats
        log.info(
            "crawl: %d pages, %d failures in %.1f s",
            stats["pages_ok"],
            stats["pages_failed"],
            time.monotonic() - c["t0"],
        )

    def _crawl_note(self) -> str:
        """``"crawl 2/4 shards, "`` for the images line while the crawl runs, else ``""``."""
        if not self.crawling():
            return ""
        return f"crawl {len(self._crawl['results'])}/{self._crawl['shards']} shards, "

    def _inputs(self) -> tuple[list[str], str]:
        """(page WARC files complete now, source tag). Crawl input: the closed page shards; a crawl shard
        writes ``*.warc.gz.open`` and renames it only once it is full or the shard has ended (after an
        fsync, :class:`~mella.warc.RotatingWarcWriter`), so a listed file is never still being written."""
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
        """Phase 1: stream uncommitted WARC files through the plan's per-unit steps, unit by unit.

        While the crawl runs, a unit starts as soon as closed page files are there (a finished shard's,
        or a long shard's full ones), taking up to ``files_per_group`` of them; the crawl tasks run on
        meanwhile. Once the crawl is over, the rest in units of ``files_per_group``. The output does not
        depend on this grouping: the global phase reads all units' parts.
        """
        done = self._committed_files()
        step = self.cfg.ray.files_per_group
        started, files_done, u = time.monotonic(), 0, 0
        while True:
            self.poll_crawl()
            crawling = self.crawling()
            inputs, source = self._inputs()
            todo = [p for p in inputs if p not in done]
            if not todo:
                if not crawling:
                    return
                if self._units_started:
                    c = self._crawl
                    self.progress(
                        "images",
                        f"{u} unit(s) done, waiting for the crawl: {len(c['results'])}/{c['shards']} shards done",
                    )
                self.poll_crawl(timeout_s=CRAWL_POLL_S)  # returns as soon as a shard ends
                continue
            files = todo[:step]
            u += 1
            unit = hashlib.sha1("\n".join(files).encode()).hexdigest()[:16]
            staging = os.path.join(self.units_dir, f"{unit}.staging")
            final = os.path.join(self.units_dir, unit)
            t0 = time.time()
            log.info(
                "unit %s: %d WARC file(s) of %d pending%s", unit, len(files), len(todo), " (crawl running)" * crawling
            )
            if crawling:
                where = f"unit {u}"
            else:
                eta = f", ETA {_duration((time.monotonic() - started) / files_done * len(todo))}" if files_done else ""
                where = f"unit {u}/{u - 1 + -(-len(todo) // step)}{eta}"
            self._units_started = True
            self._run_unit(files, source, staging, where)
            write_json_atomic(
                {"files": files, "seconds": round(time.time() - t0, 2)}, os.path.join(staging, "UNIT.json")
            )
            replace_dir(staging, final)
            done.update(files)
            files_done += len(files)

    def _run_unit(self, files: list[str], source: str, staging: str, where: str = "") -> None:
        parts_dir = os.path.join(staging, "parts")
        os.makedirs(parts_dir, exist_ok=True)
        k = self.cfg.ray.records_per_slice
        index = ray.remote(num_cpus=LIGHT.num_cpus, max_retries=2)(slice_offsets)
        offsets = ray.get([index.remote(p, k) for p in files])  # O(files x slices) per unit, never O(rows)
        items = [
            {"path": p, "source": source, "offset": o, "limit": k if i < len(offs) - 1 else None}  # last: to the end
            for p, offs in zip(files, offsets)
            for i, o in enumerate(offs)
        ]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            read_source,
            batch_size=1,
            batch_format="pyarrow",
            **LIGHT.map_batches_args(),
            fn_kwargs={"source_stage": self.source, "stats_dir": staging},
        )
        for st in self.unit_steps:
            ds = apply(ds, st, staging)
        ds = ds.map_batches(
            write_parts,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"out_dir": parts_dir},
            **StageResources(num_cpus=0.1).map_batches_args(),
        )
        where = where or "unit"
        self.progress(
            "images",
            f"{where}, {self._crawl_note()}{len(files)} WARC file(s) in {len(items)} slices: "
            "extract → alt-text → langid → fetch → decode → models",
        )
        rows, active, t0 = 0, 0, time.monotonic()
        last = [t0]  # when the last batch was written: the watcher speaks up after RESOURCE_POLL_S without one
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_resources, args=(where, last, stop), daemon=True)
        watcher.start()
        try:
            for r in ds.iter_rows():  # one row per written batch: its row count and rows still in
                rows, active = rows + r["rows"], active + r["active"]
                last[0] = time.monotonic()
                self.poll_crawl()  # the crawl's tasks run on meanwhile: count the shards that ended
                self.progress(
                    "images",
                    f"{where}, {self._crawl_note()}{rows} candidate rows done, {active} still in "
                    f"({rows / max(time.monotonic() - t0, 1e-3):.1f} rows/s)",
                )
        finally:
            stop.set()
        log.info("unit written: %d rows, %d still in", rows, active)

    def _watch_resources(self, where: str, last: list[float], stop: threading.Event) -> None:
        """While a unit runs: when no batch was written for ``RESOURCE_POLL_S`` seconds and the cluster has less CPU
        free than the unit's smallest task needs, say so on the progress line: the unit's next tasks wait for
        resources (its own pools and tasks hold them, another job does, or an autoscaler is adding nodes). A plan
        whose pools alone leave no room for a task never starts (:func:`mella.plan.check_fits`)."""
        need = min([LIGHT.num_cpus] + [s.resources.num_cpus for s in self.unit_steps if s.resources.pool_size is None])
        while not stop.wait(RESOURCE_POLL_S):
            if time.monotonic() - last[0] < RESOURCE_POLL_S:
                continue
            free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
            if free < need:
                self.progress(
                    "images",
                    f"{where}, no batch for {time.monotonic() - last[0]:.0f} s, {free:g} of "
                    f"{total:g} CPUs free: new tasks wait for resources ({need:g} CPU each)",
                )

    def unit_parts(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.units_dir, "*", "parts", "*.parquet")))

    def final(self, crawl_stats: dict | None) -> dict:
        """Phases 2-5 over all committed units, in order: :meth:`global_dedup` finds the decisions,
        :meth:`write` applies them and writes d_know/ + rejects/ (+ the D_ling candidates), :meth:`d_ling`
        captions those, :meth:`count` makes the funnel and the stage counters; :meth:`publish` swaps it all in."""
        parts = self.unit_parts()
        self.global_dedup(parts)
        staging = os.path.join(self.out, f".staging-{uuid.uuid4().hex[:8]}")
        dirs = {k: os.path.join(staging, k) for k in ("d_know", "rejects", "d_ling_candidates", "d_ling", "stats")}
        for d in dirs.values():
            os.makedirs(d)
        self.write(parts, dirs)
        if self.ling_steps:
            self.d_ling(dirs["d_ling_candidates"], dirs["d_ling"], dirs["rejects"], dirs["stats"])
        funnel, timing = self.count(dirs, crawl_stats)
        self.publish(staging, dirs, funnel, timing)
        return funnel

    def global_dedup(self, parts: list[str]) -> dict[str, str]:
        """Phase 2: each global dedup stage of the plan finds its decisions over every unit's parts, in plan order,
        into ``_work/decisions/<stage>.parquet`` (a stage sees the earlier stages' decisions). Returns
        ``{stage: decisions file}``; stages never apply them (:meth:`write` does)."""
        self.progress("dedup", f"exact, pHash and CNN duplicates over {len(parts)} part file(s)")
        decisions_dir = os.path.join(self.work, "decisions")
        os.makedirs(decisions_dir, exist_ok=True)
        remove_stale(decisions_dir)
        found: dict[str, str] = {}
        for st in self.global_steps:
            if isinstance(st, DedupStage):
                path = os.path.join(decisions_dir, f"{st.name}.parquet")
                st.find(parts, path, dict(found))
                found[st.name] = path
                log.info("%s: decisions in %s", st.name, path)
        return found

    def write(self, parts: list[str], dirs: dict[str, str]) -> None:
        """Phase 3: every unit part with the dedup decisions applied (each task holds one part and that part's
        decisions: :func:`mella.executor.read_applied`), the plan's other global row steps, then
        :func:`split_and_write` → ``dirs['d_know']``, ``dirs['rejects']`` and, with D_ling, the candidates;
        the crawl's failures (live crawl) are added to the rejects."""
        self.progress("write", "d_know/ and rejects/")
        if parts:
            dedup = [st for st in self.global_steps if isinstance(st, DedupStage)]
            ds = ray.data.from_items([{"part": p} for p in parts], override_num_blocks=len(parts))
            ds = ds.map_batches(
                read_applied,
                batch_size=1,
                batch_format="pyarrow",
                **LIGHT.map_batches_args(),
                fn_kwargs={"stages": dedup, "stats_dir": dirs["stats"]},
            )
            for st in self.global_steps:
                if not isinstance(st, DedupStage):
                    ds = apply(ds, st, dirs["stats"])
            ds = ds.map_batches(
                split_and_write,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={
                    "know_dir": dirs["d_know"],
                    "rejects_dir": dirs["rejects"],
                    "candidates_dir": dirs["d_ling_candidates"] if self.cfg.d_ling.enabled else None,
                },
            )
            ds.take_all()
        crawl_rej = os.path.join(self.work, "crawl_rejects.parquet")
        if os.path.exists(crawl_rej) and not self.cfg.warc:
            t = pq.read_table(crawl_rej)
            if t.num_rows:
                write_parquet_atomic(conform(t, REJECT_SCHEMA), os.path.join(dirs["rejects"], "part-crawl.parquet"))

    def count(self, dirs: dict[str, str], crawl_stats: dict | None) -> tuple[dict, dict]:
        """Phase 5: ``(funnel, stage counters)``. The funnel is counted from the written output
        (:func:`mella.funnel.compute`, in the plan's stage order); the counters are the runners' (``stage-*.json``
        of every unit and of the final pass, :func:`mella.executor.stage_stats`), with the crawl's network seconds."""
        page_stats = []
        for m in glob.glob(os.path.join(self.units_dir, "*", "pages-*.json")):
            with open(m, encoding="utf-8") as fh:
                page_stats.append(json.load(fh))
        plan_stages = [s for step in self.plan[1:] for s in step.members]
        funnel = funnel_mod.compute(
            dirs["d_know"],
            dirs["rejects"],
            page_stats,
            crawl_stats,
            self.cfg.langs,
            stages=[CRAWL] + stage_names(self.plan),
            listed=[s.name for s in plan_stages if s.rejects],
            ling_stages=[s.name for s in self.ling_steps],
            candidates_dir=dirs["d_ling_candidates"],
            ling_dir=dirs["d_ling"] if self.cfg.d_ling.enabled else None,
        )
        timing = stage_stats([os.path.join(self.units_dir, u) for u in os.listdir(self.units_dir)] + [dirs["stats"]])
        for line in funnel_mod.counter_disagreements(funnel, timing):
            log.warning("stage counters disagree with the funnel: %s", line)
        if crawl_stats:  # network seconds per origin: timings, not counts (funnel.json stays equal across reruns)
            timing["crawl"] = {
                "slowest_hosts": crawl_stats.get("slowest_hosts", []),
                "host_seconds": {h: v.get("seconds", 0.0) for h, v in crawl_stats.get("hosts", {}).items()},
            }
        return funnel, timing

    def publish(self, staging: str, dirs: dict[str, str], funnel: dict, timing: dict) -> None:
        """d_know/, rejects/ (and d_ling/) swapped in whole, then ``funnel.json`` and ``stage_stats.json``."""
        replace_dir(dirs["d_know"], os.path.join(self.out, "d_know"))
        replace_dir(dirs["rejects"], os.path.join(self.out, "rejects"))
        if self.cfg.d_ling.enabled:
            replace_dir(dirs["d_ling"], os.path.join(self.out, "d_ling"))
        shutil.rmtree(staging)
        write_json_atomic(funnel, os.path.join(self.out, "funnel.json"))
        write_json_atomic(timing, os.path.join(self.out, "stage_stats.json"))

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
        ds = ds.map_batches(
            split_and_write,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"know_dir": ling_dir, "rejects_dir": rejects_dir},
        )
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
        if self.cfg.crawl.retry_failed:  # touches committed units only: before phase 1 picks files
            log.info("retry-failed: %d unit(s) reopened", reopen_units_with_transient_failures(self.units_dir))
        if not self.cfg.warc:
            log.info("crawl: seeds from %s", self.cfg.seeds)
            self.crawl_start()
        self.candidates()  # returns once the crawl is over and every closed page file is in a unit
        return self.final(self.crawl_stats)
