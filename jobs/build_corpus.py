"""Build the corpus: web pages → D_know, and with --d-ling also D_ling (paper 3.1, appendix B). Thin entry point.

    python jobs/build_corpus.py                                   # embedded demo web → ./mella_out
    python jobs/build_corpus.py --seeds FILE --output DIR [--allow-private-hosts [CIDR,...]] [--langs ar,cs] [--max-pages N]
    python jobs/build_corpus.py --warc GLOB [--warc GLOB ...] --output DIR [--offline]
    python jobs/build_corpus.py --config examples/paper_scale.yaml crawl.max_depth=3 ray.image_pool.pool_size=4
    python jobs/build_corpus.py --config examples/common_crawl.yaml --print-config   # the effective settings
    python jobs/build_corpus.py --seeds FILE --output DIR --stage 'my_filters:AspectRatioFilter@resolution max_ratio=3'
    python jobs/build_corpus.py --seeds FILE --output DIR --d-ling --caption-model /models/Qwen2-VL-7B-Instruct \
        --mt-model /models/nllb-200-distilled-600M --translate-to hu,th --num-gpus 1

Runs on local Ray, or on a cluster through ``ray job submit --working-dir . -- python jobs/build_corpus.py ...``.
Inputs are checked before Ray or the demo server starts (mella.preflight): a bad one is one line on
stderr, exit code 2, nothing written. The demo web listens on 127.0.0.1:8731 (--demo-port): a fixed
port keeps the URLs, so a rerun into the same --output is served from its WARCs (zero requests).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _bootstrap import ROOT

from mella import cli, console, preflight
from mella.config import BuildConfig, apply_overrides
from mella.demo import DEFAULT_PORT


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", help="seed file: URLs one a line (or paths, with --base-url), or YAML {lang: [urls]}")
    ap.add_argument("--base-url", help="origin to prefix seed lines that are paths")
    ap.add_argument("--warc", action="append", default=[], help="WARC file or glob (.warc / .warc.gz); repeatable")
    ap.add_argument(
        "--cc-index",
        metavar="CC-MAIN-YYYY-WW|PATH",
        help="Common Crawl by language: read this crawl's columnar index (or a local Parquet copy), take the "
        "status-200 HTML pages whose primary language is in --langs, read each record by Range request "
        "(base URL $MELLA_CC_BASE_URL, default https://data.commoncrawl.org/) into DIR/warc",
    )
    ap.add_argument("--output", help="output directory (default ./mella_out for the demo)")
    ap.add_argument("--offline", action="store_true", help="never fetch: images missing from the WARCs are rejected")
    ap.add_argument(
        "--allow-private-hosts",
        nargs="?",
        const="*",
        default=None,
        help="let the SSRF guard through: '*' (bare flag) or comma-separated IPs/CIDRs",
    )
    ap.add_argument("--langs", type=cli.comma_list, help="comma-separated target languages (default: all configured)")
    ap.add_argument("--max-pages", type=int, help="page budget per registered domain")
    ap.add_argument(
        "--retry-failed",
        action="store_true",
        help="refetch URLs whose earlier failure was transient (timeouts, 5xx); permanent ones never are",
    )
    ap.add_argument("--num-cpus", type=int, help="local Ray only")
    ap.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="'MODULE:CLASS[@AFTER] [KEY=VALUE ...]'",
        help="add your own stage (a mella.stages.base.Stage subclass) after stage AFTER, KEY=VALUE "
        "passed to its constructor (one quoted argument); repeatable",
    )
    ap.add_argument(
        "--demo-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the embedded demo web on 127.0.0.1 (default {DEFAULT_PORT}; keep it across reruns: "
        "the URLs hold it; 0: any free port, a rerun then crawls again)",
    )
    _filter_and_d_ling_flags(ap)
    cli.add_config_flags(ap, "BuildConfig")
    console.add_console_flags(ap)
    return cli.parse(ap, argv)


def _filter_and_d_ling_flags(ap: argparse.ArgumentParser) -> None:
    """The filters' switches and the D_ling group of flags."""
    g = ap.add_argument_group("filters (paper B.2; all on by default)")
    g.add_argument("--no-semantic-dedup", action="store_true", help="skip CNN (EfficientNet-lite0) semantic dedup")
    g.add_argument("--no-moderation", action="store_true", help="skip the open_nsfw moderation stage")
    g.add_argument(
        "--no-categorise",
        action="store_true",
        help="skip the CPU EfficientNet-lite0 categories (4 major / 20 fine) of D_know rows",
    )
    g = ap.add_argument_group("D_ling (paper 3.1.2): caption images without usable alt-text, translate them")
    g.add_argument("--d-ling", action="store_true", help="enable categorise → caption → translate → qe")
    g.add_argument(
        "--caption-model",
        help="MLLM for captioning (and --categoriser mllm): a checkpoint dir or a hub id "
        "org/name[@rev] (HF_HOME cache)",
    )
    g.add_argument("--caption-family", choices=["qwen2-vl", "internvl2"], default="qwen2-vl")
    g.add_argument(
        "--categoriser",
        choices=["efficientnet", "mllm"],
        help="default: efficientnet; mllm = the --caption-model MLLM (with or without --d-ling)",
    )
    g.add_argument("--mt-backend", choices=["seq2seq", "deepl", "google", "mllm"], help="default: seq2seq")
    g.add_argument(
        "--mt-model",
        help="seq2seq MT model (NLLB-200, M2M100 or multi-target Marian): a checkpoint dir or a hub id org/name[@rev]",
    )
    g.add_argument(
        "--translate-to", help="comma-separated languages for each caption (default: the image page's language)"
    )
    g.add_argument(
        "--num-gpus",
        type=float,
        help="GPUs per model actor: NSFW (onnxruntime CUDA provider), embed, categorise, and with --d-ling "
        "caption, translate, QE; the job prints where each model stage runs",
    )


def build_config(args: argparse.Namespace, overrides: list[str]) -> BuildConfig:
    data = cli.load_config(args.config)
    if args.output:
        data["output"] = args.output
    if args.seeds:
        data["seeds"] = args.seeds
    if args.warc:
        data["warc"] = args.warc
    if args.offline:
        data["offline"] = True
    if args.langs:
        data["langs"] = args.langs
    crawl = data.setdefault("crawl", {})
    if args.allow_private_hosts is not None:
        crawl["allow_private_hosts"] = [x.strip() for x in args.allow_private_hosts.split(",") if x.strip()]
    if args.max_pages is not None:
        crawl["max_pages"] = args.max_pages
    if args.retry_failed:
        crawl["retry_failed"] = True
    if args.num_cpus is not None:
        data.setdefault("ray", {})["num_cpus"] = args.num_cpus
    filters = data.setdefault("filters", {})
    if args.no_semantic_dedup:
        filters.setdefault("semantic", {})["enabled"] = False
    if args.no_moderation:
        filters.setdefault("moderation", {})["enabled"] = False
    if args.no_categorise:
        data.setdefault("d_ling", {}).setdefault("categorise", {})["enabled"] = False
    if args.categoriser:  # every image is categorised (paper 3.1), with or without D_ling
        cat = data.setdefault("d_ling", {}).setdefault("categorise", {})
        cat["backend"] = args.categoriser
        if args.categoriser == "mllm" and args.caption_model:
            cat["mllm"] = {"family": args.caption_family, "model_path": args.caption_model}
    if args.d_ling:
        d = data.setdefault("d_ling", {})
        d["enabled"] = True
        if args.caption_model:
            d.setdefault("caption", {})["mllm"] = {"family": args.caption_family, "model_path": args.caption_model}
        tr = d.setdefault("translate", {})
        if args.mt_backend:
            tr["backend"] = args.mt_backend
            if args.mt_backend == "mllm" and args.caption_model:
                tr["mllm"] = {"family": args.caption_family, "model_path": args.caption_model}
        if args.mt_model:
            tr.setdefault("seq2seq", {})["model_path"] = args.mt_model
        if args.translate_to:
            tr["target_langs"] = [x.strip() for x in args.translate_to.split(",") if x.strip()]
    if args.stage:
        data.setdefault("stages", {}).setdefault("extra", []).extend(args.stage)
    if args.num_gpus is not None:  # every model stage's pool block (read from the config classes)
        from mella.config import pool_blocks

        for path in pool_blocks():  # categorise runs without --d-ling too
            if args.d_ling or not path.startswith("d_ling.") or path == "d_ling.categorise":
                apply_overrides(data, [f"{path}.num_gpus={args.num_gpus}"])
    apply_overrides(data, overrides)
    return BuildConfig.model_validate(data)


def check_inputs(args: argparse.Namespace, cfg: BuildConfig) -> None:
    """Everything the run needs, before Ray or a server starts (mella.preflight); raises console.UsageError."""
    if cfg.seeds:
        preflight.check_seeds(str(cfg.seeds), args.base_url)
    if cfg.warc:
        preflight.check_warcs(cfg.warc)
    preflight.check_langs(cfg.langs)
    preflight.check_output(cfg.output)
    d = cfg.d_ling
    # hub ids resolve here, on the driver; the model actors get the local snapshot directory
    if d.categorise.enabled and d.categorise.backend == "mllm":
        if d.categorise.mllm is None:
            raise console.UsageError(
                "--categoriser mllm needs --caption-model DIR|ORG/NAME (the MLLM that categorises)"
            )
        d.categorise.mllm.model_path = preflight.check_model(d.categorise.mllm.model_path, "--caption-model")[0]
    if d.enabled:
        d.caption.mllm.model_path = preflight.check_model(d.caption.mllm.model_path, "--caption-model")[0]
        tr = d.translate
        if tr.backend == "seq2seq":
            if tr.seq2seq is None or not tr.seq2seq.model_path:
                raise console.UsageError(
                    "--d-ling with --mt-backend seq2seq needs --mt-model DIR (NLLB-200, M2M100 "
                    "or a multi-target Marian checkpoint), or --mt-backend mllm|deepl|google"
                )
            tr.seq2seq.model_path = preflight.check_model(tr.seq2seq.model_path, "--mt-model")[0]
            for lang, name in tr.seq2seq.model_paths.items():  # per-language models (Marian/OPUS-MT pairs)
                tr.seq2seq.model_paths[lang] = preflight.check_model(name, f"translate.seq2seq.model_paths.{lang}")[0]
        if tr.backend == "mllm" and tr.mllm is not None:
            tr.mllm.model_path = preflight.check_model(tr.mllm.model_path, "--caption-model")[0]
    from mella.plan import PlanError, build_plan

    try:  # the plan itself: --stage / stages.extra classes import and place, configured backends exist
        plan = build_plan(cfg)
    except (PlanError, ImportError) as e:
        raise console.UsageError(f"{e} (fix --stage / stages.extra or the stage's config)") from None
    if not os.environ.get("RAY_ADDRESS"):  # a local Ray: its CPUs are known now (GPUs once it runs: check_resources)
        check_resources(plan, cfg.ray.num_cpus or os.cpu_count() or 1, float("inf"))
    if cfg.seeds:  # last: the other checks name their own problem first
        preflight.check_seed_hosts(str(cfg.seeds), args.base_url, cfg.crawl.allow_private_hosts)


def check_resources(plan: list, cpus: float, gpus: float) -> None:
    """The plan's pools and tasks fit ``cpus``/``gpus`` at once (:func:`mella.plan.check_fits`); raises
    console.UsageError naming the pool to shrink."""
    from mella.plan import PlanError, check_fits

    try:
        check_fits(plan, cpus, gpus)
    except PlanError as e:
        raise console.UsageError(str(e)) from None


def common_crawl_pages(index: str, cfg: BuildConfig) -> BuildConfig:
    """``--cc-index``: copy the selected Common Crawl records into ``DIR/warc`` (mella.ccindex; a rerun reads
    the finished copy, no request) and return ``cfg`` with that WARC as its input."""
    from mella import ccindex

    if not ccindex.CRAWL_ID.match(index) and not os.path.exists(index):
        raise console.UsageError(
            f"--cc-index {index}: neither a crawl id (CC-MAIN-YYYY-WW) nor an existing local Parquet file or directory"
        )
    try:
        for lang in cfg.langs:
            ccindex.cld2_code(lang)
    except ValueError as e:
        raise console.UsageError(f"--cc-index: {e}") from None
    base = os.environ.get("MELLA_CC_BASE_URL", ccindex.DEFAULT_BASE_URL)
    path, counts = ccindex.materialise(index, cfg.langs, os.path.join(str(cfg.output), "warc"), cfg.crawl, base)
    console.say(f"common crawl: {counts['written']} of {counts['selected']} selected pages in {path}")
    return cfg.model_copy(update={"warc": [path]})


def write_report_and_card(output: str, debug: bool = False) -> bool:
    """The corpus report and the dataset card (jobs/inspect_corpus.py writes them again). A failure of either is
    one warning line naming the step and the retry; the rows are written and stand. Returns whether both were."""
    from mella import dataset_card, report

    ok = True
    for step, write in (("report", report.write_report), ("dataset card", dataset_card.write_card)):
        try:
            print(f"{step}: {write(output)}", flush=True)
        except Exception as e:
            ok = False
            console.warn(
                f"the {step} step failed ({type(e).__name__}: {e}); the rows in {output} stand; "
                f"retry with: python jobs/inspect_corpus.py {output}"
            )
            if debug:
                raise
    return ok


def input_mode(args: argparse.Namespace, overrides: list[str]) -> tuple[list[str], int | None]:
    """No --seeds/--warc/--cc-index (nor in --config): the embedded demo web. Checks the input flags agree;
    returns ``(overrides, demo port or None)``. Raises console.UsageError."""
    given = {**cli.load_config(args.config), **cli.set_dotted({}, [o for o in overrides if "." not in o.split("=")[0]])}
    demo_port = None
    if not args.seeds and not args.warc and not args.cc_index and not given.get("seeds") and not given.get("warc"):
        # Embedded default: serve the bundled demo web on 127.0.0.1 and crawl it.
        args.seeds = str(ROOT / "demo_web" / "seeds.txt")
        args.base_url = f"http://127.0.0.1:{args.demo_port or 1}"  # the real port is known once the server runs
        args.output = args.output or str(Path.cwd() / "mella_out")
        args.allow_private_hosts = args.allow_private_hosts or "127.0.0.1"
        overrides = ["crawl.politeness_delay_s=0", *overrides]
        demo_port = args.demo_port
    if not args.output and not given.get("output"):
        raise console.UsageError("--output DIR is required with --seeds/--warc/--cc-index")
    if sum(map(bool, (args.seeds or given.get("seeds"), args.warc or given.get("warc"), args.cc_index))) > 1:
        raise console.UsageError("give one of --seeds, --warc, --cc-index")
    caption_given = args.caption_model or args.config or any(o.startswith("d_ling.caption") for o in overrides)
    if args.d_ling and not caption_given:
        raise console.UsageError(
            "--d-ling needs --caption-model DIR (a local Qwen2-VL or InternVL2 checkpoint; "
            "python jobs/make_tiny_model.py --output DIR makes a tiny random one for a trial)"
        )
    return overrides, demo_port


def run(cfg: BuildConfig, base_url: str | None, progress: console.Progress, debug: bool) -> None:
    """Ray, the plan's resource check against the cluster, the build, the funnel table, the report and card."""
    import ray

    from mella.funnel import format_table
    from mella.pipeline import BuildCorpus
    from mella.plan import build_plan
    from mella.runtime import init_ray

    console.quiet_ray()
    t0 = time.monotonic()
    progress.start("ray", "starting" if not os.environ.get("RAY_ADDRESS") else f"joining {os.environ['RAY_ADDRESS']}")
    init_ray(cfg.ray.num_cpus)
    have = ray.cluster_resources()
    progress.update(f"{int(have.get('CPU', 0))} CPUs")
    check_resources(build_plan(cfg), have.get("CPU", 0), have.get("GPU", 0))  # before any Ray work
    funnel = BuildCorpus(cfg, seeds_base_url=base_url, progress=progress.callback()).run()
    progress.close()
    timing_path = Path(cfg.output) / "stage_stats.json"
    timing = json.loads(timing_path.read_text(encoding="utf-8")) if timing_path.exists() else None
    print(format_table(funnel, timing), flush=True)
    print(
        f"output: {os.path.abspath(cfg.output)}  (d_know/, rejects/, funnel.json, warc/)  "
        f"[{time.monotonic() - t0:.0f} s]",
        flush=True,
    )
    write_report_and_card(cfg.output, debug)  # the rows stand: the report and the card never fail the job


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    console.setup(args.quiet, args.verbose)
    overrides, demo_port = input_mode(args, overrides)
    cfg = build_config(args, overrides)
    if args.print_config:
        return cli.print_config(cfg)
    if demo_port is not None:
        preflight.check_port_free(demo_port, "--demo-port")
    check_inputs(args, cfg)
    if args.cc_index:
        cfg = common_crawl_pages(args.cc_index, cfg)
    from mella.plan import model_placement

    console.say(f"model stages: {model_placement(cfg)}")
    # inputs are valid: from here on servers, Ray and the output directory
    demo = None
    if demo_port is not None:
        from mella.demo import DemoWeb

        demo = DemoWeb(ROOT / "demo_web", port=demo_port).start()
        args.base_url = demo.base_url
        console.say(f"demo web: {demo.base_url} (bundled pages from {ROOT / 'demo_web'})")
    progress = console.Progress()
    done = False
    try:
        run(cfg, args.base_url, progress, args.debug)
        done = True
    finally:
        progress.close()
        if demo is not None:
            demo.stop()
            console.say(
                f"demo web: {demo.requests} HTTP requests served"
                + (" (everything came from the WARCs of the previous run)" if done and demo.requests == 0 else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(console.run_job(main))
