"""build_corpus: the plan that turns web pages into D_know and D_ling (paper 3.1, appendix B.2–B.3) on Ray Data.

Phases (each resumable; output directory layout in the README):

0. **crawl** (live input only): seeds → ``DIR/warc/pages-*.warc.gz`` (:mod:`mella.crawl`, Ray tasks
   sharded by registered domain). ``--warc`` input skips this phase.
1. **candidates**, per work unit of ≤ ``files_per_group`` WARC files, streamed through Ray Data:
   WARC records → extract → alt_text → langid → :func:`add_image_stages` (fetch → decode → resolution
   in one actor pool) → one model actor pool (moderation, CNN embedding, categories) → parquet
   parts. A unit is committed by renaming its staging directory; a rerun skips committed units, and
   images fetched by a killed run are read back from ``DIR/warc/images-*.warc``.
2. **global dedup** over all units: exact (pixel sha256 groups), pHash near-duplicates (multi-index
   hashing), CNN semantic near-duplicates (SemDeDup); one survivor rule (:mod:`mella.stages.dedup.near_dup`).
3. **final**: all units → the dedup decisions → ``d_know/``, ``rejects/`` and the D_ling candidates,
   written to a staging directory and swapped in whole; with D_ling, caption → translate → qe into
   ``d_ling/``; then ``funnel.json``.

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
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from mella import funnel as funnel_mod
from mella.config import BuildConfig
from mella.crawl import crawl_shard, merge_results, read_seeds, shard_seeds
from mella.io import remove_stale, replace_dir, write_json_atomic, write_parquet_atomic
from mella.resources import StageResources
from mella.schema import RECORD_SCHEMA, REJECT_SCHEMA, conform, record_id, to_table
from mella.stages.filters.alt_text import AltTextStage
from mella.stages.filters.captions import CaptionCapStage, find_excess_captions
from mella.stages.base import Chain, reject
from mella.stages.enrich.categorise import EfficientNetCategoriser, MLLMCategoriser
from mella.stages.filters.decode import DecodeStage, ResolutionStage
from mella.stages.dedup.exact import ExactDedupStage, find_exact_duplicates
from mella.stages.io.extract import PageRejected, parse_page
from mella.stages.io.fetch import ImageFetchStage, reopen_units_with_transient_failures
from mella.stages.dling import add_dling_stages
from mella.stages.filters.langid import LangIDStage, assign_language
from mella.stages.filters.moderation import APIModerationStage, NSFWStage
from mella.stages.dedup.near_dup import NearDupStage
from mella.stages.dedup.phash import PhashDedupStage, find_near_duplicates
from mella.stages.dedup.semantic import EmbedStage, find_semantic_near_duplicates
from mella.warc import cleanup_open_shards, expand_warc_paths, iter_responses, shard_paths

log = logging.getLogger("mella.build_corpus")

PAGES_PER_BATCH = 16
LIGHT = StageResources(num_cpus=0.5)  # pure-Python CPU stages, as Ray tasks


# ------------------------------------------------------------------------------- phase 1 pieces
def extract_warc_files(batch: pa.Table, cfg_json: str, stats_dir: str):
    """Ray Data generator UDF: rows ``{path, source}`` (WARC files) → candidate rows, 16 pages a batch.

    HTML ``200`` responses become one row per ``<img>``; pages whose language is not a configured
    target, or whose bytes are not HTML, become one reject row each (``image_url`` null). Per-file
    page counts go to ``stats_dir/pages-<crc>.json`` for the funnel.
    """
    cfg = BuildConfig.model_validate_json(cfg_json)
    targets = set(cfg.langs)
    for path, source in zip(batch["path"].to_pylist(), batch["source"].to_pylist()):
        stats: Counter = Counter()
        rows: list[dict] = []
        n_pages = 0
        for rec in iter_responses(path):
            if rec.status != 200 or rec.content_type not in ("text/html", "application/xhtml+xml"):
                continue
            n_pages += 1
            stats["pages_in"] += 1
            try:
                page = parse_page(rec.url, rec.body, rec.headers, cfg.langid.model_path,
                                  cfg.crawl.ai_opt_out_directives, cfg.crawl.user_agent)
            except PageRejected as e:
                row = {"id": record_id(None, rec.url, None), "page_url": rec.url, "source": source}
                reject(row, "extract", e.reason, str(e))
                rows.append(row)
                stats[f"pages_rejected:{e.reason}"] += 1
            else:
                stats.update({f"dropped:{k}": v for k, v in page.dropped.items()})
                cands = [c for c in page.candidate_langs if c in targets]
                if not cands:
                    lang = page.lang or "und"
                    row = {"id": record_id(lang, rec.url, None), "lang": lang, "page_url": rec.url,
                           "page_lang": page.lang_evidence, "source": source}
                    reject(row, "extract", "page_lang_not_target", page.lang_evidence)
                    rows.append(row)
                    stats[f"pages_rejected:page_lang_not_target:{lang}"] += 1
                else:
                    stats[f"pages_out:{cands[0]}"] += 1
                    for ref in page.images:
                        lang = assign_language(ref.alt_text, cands, cfg.langid)
                        rows.append({
                            "id": record_id(lang, rec.url, ref.image_url),
                            "lang": lang,
                            "page_url": rec.url,
                            **ref.row_fields(),
                            "page_lang": page.lang_evidence,
                            "source": source,
                        })
            if n_pages % PAGES_PER_BATCH == 0 and rows:
                yield to_table(rows, REJECT_SCHEMA)
                rows = []
        if rows:
            yield to_table(rows, REJECT_SCHEMA)
        name = hashlib.sha1(path.encode()).hexdigest()[:16]
        write_json_atomic({"path": path, **stats}, os.path.join(stats_dir, f"pages-{name}.json"))


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
    """Write one batch (REJECT_SCHEMA) as ``out_dir/part-<batch_name>.parquet``; return its row count."""
    batch = conform(batch, REJECT_SCHEMA)
    if batch.num_rows:
        write_parquet_atomic(batch, os.path.join(out_dir, f"part-{batch_name(batch)}.parquet"))
    return pa.table({"rows": [batch.num_rows]})


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


class ImageStages(Chain):
    """fetch → decode → resolution in one actor (:class:`mella.stages.base.Chain`; its name is what Ray's
    dashboard and state API show for the pool).

    An image's bytes go from the download to the decoder inside one process: no object-store copy of
    every image between the stages and no Ray task scheduled per decode batch. Measured with
    ``tests/benchmarks/bench_throughput.py`` on 2 cores (3,318 URLs): 89 img/s fused vs 67 img/s with
    fetch in an actor pool and decode as Ray tasks (Ray Data ran one decode task at a time there: its
    resource allocator gave the decode operator 0.8 CPU).
    """


def add_image_stages(ds: ray.data.Dataset, cfg: BuildConfig, warc_dir: str | None,
                     image_warcs: list[str]) -> ray.data.Dataset:
    """fetch → decode → resolution on rows with ``image_url`` (phase 1; also what bench_throughput times).

    One :class:`ImageStages` actor pool of ``cfg.ray.fetch_actors`` actors (elastic up to
    ``fetch_max_actors``), ``fetch_num_cpus`` logical CPUs each: aiohttp with ``fetch_concurrency``
    requests in flight, live responses recorded under ``warc_dir`` unless None, ``image_warcs`` served
    instead of refetching; then Pillow decode and the resolution filter. Batches of ``cfg.ray.batch_size``.
    """
    r = cfg.ray
    fetch = {"cfg": cfg.crawl, "warc_dir": warc_dir, "index_paths": image_warcs, "offline": cfg.offline,
             "concurrency": r.fetch_concurrency}
    stages = [(ImageFetchStage, fetch), (DecodeStage, {"cfg": cfg.filters}), (ResolutionStage, {"cfg": cfg.filters})]
    res = StageResources(num_cpus=r.fetch_num_cpus, pool_size=r.fetch_actors, max_pool_size=r.fetch_max_actors)
    return ds.map_batches(ImageStages, fn_constructor_kwargs={"stages": stages}, batch_size=r.batch_size,
                          batch_format="pyarrow", **res.map_batches_args())


# ------------------------------------------------------------------------------------ runner
class BuildCorpus:
    """Run the whole job for one :class:`BuildConfig`. ``run()`` returns the funnel dict."""

    def __init__(self, cfg: BuildConfig, seeds_base_url: str | None = None) -> None:
        self.cfg = cfg
        self.out = str(cfg.output)
        self.warc_dir = os.path.join(self.out, "warc")
        self.work = os.path.join(self.out, "_work")
        self.units_dir = os.path.join(self.work, "units")
        self.seeds_base_url = seeds_base_url

    # -------------------------------------------------------------------------------- phases
    def crawl(self) -> dict:
        """Phase 0: crawl seeds into page WARC shards (Ray tasks). Returns crawl stats."""
        seeds = read_seeds(str(self.cfg.seeds), self.seeds_base_url)
        n_shards = max(1, min(len(seeds), int(ray.available_resources().get("CPU", 1)) * 2))
        task = ray.remote(num_cpus=0.5, max_retries=2)(crawl_shard)
        refs = [task.remote(group, self.cfg.crawl, self.warc_dir, i, self.cfg.offline)
                for i, group in enumerate(shard_seeds(seeds, n_shards))]
        stats, failures = merge_results(ray.get(refs), len(seeds))
        rows = []
        for f in failures:
            row = {"id": record_id(None, f["url"], None), "page_url": f["url"], "source": "crawl"}
            reject(row, "crawl", f["reason"], f"{f['host']}: {f['detail']}")
            rows.append(row)
        write_parquet_atomic(to_table(rows, REJECT_SCHEMA), os.path.join(self.work, "crawl_rejects.parquet"))
        write_json_atomic(stats, os.path.join(self.work, "crawl_stats.json"))
        return stats

    def _inputs(self) -> tuple[list[str], str, list[str]]:
        """(page WARC files, source tag, WARC files to serve images from)."""
        if self.cfg.warc:
            inputs = expand_warc_paths(self.cfg.warc)
            source = "warc"
        else:
            inputs = shard_paths(self.warc_dir, "pages")
            source = "crawl"
        image_warcs = shard_paths(self.warc_dir, "images")
        return inputs, source, (inputs if self.cfg.warc else []) + image_warcs

    def _committed_files(self) -> set[str]:
        done: set[str] = set()
        for m in glob.glob(os.path.join(self.units_dir, "*", "UNIT.json")):
            with open(m, encoding="utf-8") as f:
                done.update(json.load(f)["files"])
        return done

    def candidates(self) -> None:
        """Phase 1: stream uncommitted WARC files through extract → ... → resolution, unit by unit."""
        inputs, source, image_warcs = self._inputs()
        done = self._committed_files()
        todo = [p for p in inputs if p not in done]
        step = self.cfg.ray.files_per_group
        for i in range(0, len(todo), step):
            files = todo[i:i + step]
            unit = hashlib.sha1("\n".join(files).encode()).hexdigest()[:16]
            staging = os.path.join(self.units_dir, f"{unit}.staging")
            final = os.path.join(self.units_dir, unit)
            t0 = time.time()
            log.info("unit %s: %d WARC file(s), %d/%d pending", unit, len(files), len(todo) - i, len(inputs))
            self._run_unit(files, source, image_warcs, staging)
            write_json_atomic({"files": files, "seconds": round(time.time() - t0, 2)}, os.path.join(staging, "UNIT.json"))
            replace_dir(staging, final)
            # images fetched for this unit can serve the next ones
            image_warcs = sorted(set(image_warcs) | set(shard_paths(self.warc_dir, "images")))

    def _model_stages(self) -> tuple[list[tuple[type, dict]], StageResources | None]:
        """Phase-1 model stages (moderation, CNN embedding, categorisation) for one :class:`Chain` pool.

        Returns ``(stages, resources)``; resources are the largest declared by the enabled stages (None: no stage).
        """
        f, d = self.cfg.filters, self.cfg.d_ling
        stages: list[tuple[type, dict]] = []
        decl: list[tuple[float, float, int]] = []  # (num_cpus, num_gpus, pool size) per stage
        if f.moderation.enabled:
            m = f.moderation
            stages.append((NSFWStage, {"cfg": m}))
            if m.api.enabled:
                stages.append((APIModerationStage, {"cfg": m}))
            decl.append((m.num_cpus, m.num_gpus, m.pool_size))
        if f.semantic.enabled:
            e = f.semantic
            stages.append((EmbedStage, {"cfg": e}))
            decl.append((e.num_cpus, e.num_gpus, e.pool_size))
        if d.enabled:
            c = d.categorise
            stages.append((MLLMCategoriser if c.backend == "mllm" else EfficientNetCategoriser,
                           {"cfg": c, "stats_dir": d.stats_dir}))
            decl.append((c.num_cpus, c.num_gpus, c.num_actors))
        if not decl:
            return stages, None
        cpus, gpus, size = (max(x) for x in zip(*decl))
        return stages, StageResources(num_cpus=cpus, num_gpus=gpus, pool_size=size)

    def _run_unit(self, files: list[str], source: str, image_warcs: list[str], staging: str) -> None:
        cfg = self.cfg
        route = cfg.d_ling.enabled
        parts_dir = os.path.join(staging, "parts")
        os.makedirs(parts_dir, exist_ok=True)
        ds = ray.data.from_items([{"path": p, "source": source} for p in files], override_num_blocks=len(files))
        light = LIGHT.map_batches_args()
        ds = ds.map_batches(
            extract_warc_files, batch_size=1, batch_format="pyarrow", **light,
            fn_kwargs={"cfg_json": cfg.model_dump_json(), "stats_dir": staging},
        )
        ds = ds.map_batches(AltTextStage(route, cfg.filters.max_alt_chars), batch_format="pyarrow", batch_size=None, **light)
        ds = ds.map_batches(LangIDStage(cfg.langid, route), batch_format="pyarrow", batch_size=None, **light)
        ds = add_image_stages(ds, cfg, None if cfg.offline else self.warc_dir, image_warcs)
        stages, res = self._model_stages()
        if stages:
            ds = ds.map_batches(Chain, fn_constructor_kwargs={"stages": stages}, batch_size=cfg.ray.batch_size,
                                batch_format="pyarrow", **res.map_batches_args())
        ds = ds.map_batches(write_parts, batch_format="pyarrow", batch_size=None, fn_kwargs={"out_dir": parts_dir},
                            **StageResources(num_cpus=0.1).map_batches_args())
        rows = sum(r["rows"] for r in ds.take_all())
        log.info("unit written: %d rows", rows)

    def unit_parts(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.units_dir, "*", "parts", "*.parquet")))

    def final(self, crawl_stats: dict | None) -> dict:
        """Phases 2–3: global exact, pHash and CNN dedup; write d_know/ + rejects/ (+ D_ling) atomically; funnel."""
        f = self.cfg.filters
        parts = self.unit_parts()
        survivors = find_exact_duplicates(parts, f.exact_dedup_key)
        log.info("exact dedup: %d duplicated groups", len(survivors))
        excess = find_excess_captions(parts, survivors, f.exact_dedup_key, f.max_pairs_per_image)
        image_groups = (find_exact_duplicates(parts, "image")
                        if self.cfg.d_ling.enabled and f.exact_dedup_key == "image_text" else None)
        near = find_near_duplicates(parts, survivors, f.exact_dedup_key, f.phash)
        log.info("pHash dedup: %d near-duplicate images", len(near))
        semantic = find_semantic_near_duplicates(parts, survivors, f.exact_dedup_key, f.semantic, skip=near)
        log.info("CNN semantic dedup: %d near-duplicate images", len(semantic))
        staging = os.path.join(self.out, f".staging-{uuid.uuid4().hex[:8]}")
        dirs = {k: os.path.join(staging, k) for k in ("d_know", "rejects", "d_ling_candidates", "d_ling")}
        for d in dirs.values():
            os.makedirs(d)
        if parts:
            ds = ray.data.read_parquet(parts, schema=REJECT_SCHEMA)
            ds = ds.map_batches(ExactDedupStage(survivors, f.exact_dedup_key, image_groups), batch_format="pyarrow",
                                batch_size=self.cfg.ray.batch_size)
            ds = ds.map_batches(CaptionCapStage(excess), batch_format="pyarrow", batch_size=None)
            ds = ds.map_batches(PhashDedupStage(near), batch_format="pyarrow", batch_size=None)
            ds = ds.map_batches(NearDupStage("semantic_dedup", "semantic_duplicate", semantic), batch_format="pyarrow", batch_size=None)
            ds = ds.map_batches(split_and_write, batch_format="pyarrow", batch_size=None,
                                fn_kwargs={"know_dir": dirs["d_know"], "rejects_dir": dirs["rejects"],
                                           "candidates_dir": dirs["d_ling_candidates"]})
            ds.take_all()
        if self.cfg.d_ling.enabled:
            self.d_ling(dirs["d_ling_candidates"], dirs["d_ling"], dirs["rejects"])
        crawl_rej = os.path.join(self.work, "crawl_rejects.parquet")
        if os.path.exists(crawl_rej) and not self.cfg.warc:
            t = pq.read_table(crawl_rej)
            if t.num_rows:
                write_parquet_atomic(conform(t, REJECT_SCHEMA), os.path.join(dirs["rejects"], "part-crawl.parquet"))
        page_stats = []
        for m in glob.glob(os.path.join(self.units_dir, "*", "pages-*.json")):
            with open(m, encoding="utf-8") as fh:
                page_stats.append(json.load(fh))
        result = funnel_mod.compute(dirs["d_know"], dirs["rejects"], page_stats, crawl_stats, self.cfg.langs,
                                    candidates_dir=dirs["d_ling_candidates"],
                                    ling_dir=dirs["d_ling"] if self.cfg.d_ling.enabled else None,
                                    enabled=tuple(st for st, on in (("moderation", f.moderation.enabled),
                                                                    ("semantic_dedup", f.semantic.enabled)) if on))
        replace_dir(dirs["d_know"], os.path.join(self.out, "d_know"))
        replace_dir(dirs["rejects"], os.path.join(self.out, "rejects"))
        if self.cfg.d_ling.enabled:
            replace_dir(dirs["d_ling"], os.path.join(self.out, "d_ling"))
        shutil.rmtree(staging)
        write_json_atomic(result, os.path.join(self.out, "funnel.json"))
        return result

    def d_ling(self, candidates_dir: str, ling_dir: str, rejects_dir: str) -> None:
        """Phase 4 (D_ling enabled): caption → translate → qe over the routed candidates → ``ling_dir``.

        The candidates are the images whose alt-text was unusable (``d_ling_reason``) and that passed
        every image filter and dedup stage; they were categorised in phase 1. Captions are cached in
        ``_work/caption_cache/`` as they are made, so a rerun after a kill does not caption again.
        """
        files = sorted(glob.glob(os.path.join(candidates_dir, "*.parquet")))
        if not files:
            log.info("D_ling: no candidates")
            return
        ds = ray.data.read_parquet(files, schema=REJECT_SCHEMA)
        # captions survive a killed run: keyed by the caption configuration (model, generation parameters)
        cap_key = hashlib.sha1(self.cfg.d_ling.caption.model_dump_json().encode()).hexdigest()[:16]
        cache = os.path.join(self.work, "caption_cache", cap_key)
        ds = add_dling_stages(ds, self.cfg.d_ling, categorise=False, caption_cache=cache)
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


def check_schema(path: str) -> pa.Schema:
    """Schema of a written parquet file (for tests/tools)."""
    return pq.read_schema(path)
