"""Build the corpus: web pages → D_know, and with --d-ling also D_ling (paper 3.1, appendix B). Thin entry point.

    python jobs/build_corpus.py                                   # embedded demo web → ./mella_out
    python jobs/build_corpus.py --seeds FILE --output DIR [--allow-private-hosts [CIDR,...]] [--langs ar,cs] [--max-pages N]
    python jobs/build_corpus.py --warc GLOB [--warc GLOB ...] --output DIR [--offline]
    python jobs/build_corpus.py --config build.yaml crawl.max_depth=3 ray.fetch_actors=4
    python jobs/build_corpus.py --seeds FILE --output DIR --d-ling --caption-model /models/Qwen2-VL-7B-Instruct \
        --mt-model /models/nllb-200-distilled-600M --translate-to hu,th --num-gpus 1

Runs on local Ray, or on a cluster through ``ray job submit --working-dir . -- python jobs/build_corpus.py ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from mella.config import BuildConfig, apply_overrides, load_yaml  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", help="seed file: URLs one a line (or paths, with --base-url), or YAML {lang: [urls]}")
    ap.add_argument("--base-url", help="origin to prefix seed lines that are paths")
    ap.add_argument("--warc", action="append", default=[], help="WARC file or glob (.warc / .warc.gz); repeatable")
    ap.add_argument("--output", help="output directory (default ./mella_out for the demo)")
    ap.add_argument("--offline", action="store_true", help="never fetch: images missing from the WARCs are rejected")
    ap.add_argument("--allow-private-hosts", nargs="?", const="*", default=None,
                    help="let the SSRF guard through: '*' (bare flag) or comma-separated IPs/CIDRs")
    ap.add_argument("--langs", help="comma-separated target languages (default: all configured)")
    ap.add_argument("--max-pages", type=int, help="page budget per registered domain")
    ap.add_argument("--retry-failed", action="store_true",
                    help="refetch URLs whose earlier failure was transient (timeouts, 5xx); permanent ones never are")
    ap.add_argument("--config", help="YAML file with BuildConfig fields")
    ap.add_argument("--num-cpus", type=int, help="local Ray only")
    ap.add_argument("--demo-port", type=int, default=0, help="port of the embedded demo web server (0: free port)")
    g = ap.add_argument_group("filters (paper B.2; all on by default)")
    g.add_argument("--no-semantic-dedup", action="store_true", help="skip CNN (EfficientNet-lite0) semantic dedup")
    g.add_argument("--no-moderation", action="store_true", help="skip the open_nsfw moderation stage")
    g = ap.add_argument_group("D_ling (paper 3.1.2): caption images without usable alt-text, translate them")
    g.add_argument("--d-ling", action="store_true", help="enable categorise → caption → translate → qe")
    g.add_argument("--caption-model", help="local MLLM checkpoint dir for captioning (and --categoriser mllm)")
    g.add_argument("--caption-family", choices=["qwen2-vl", "internvl2"], default="qwen2-vl")
    g.add_argument("--categoriser", choices=["efficientnet", "mllm"], help="default: efficientnet (CPU)")
    g.add_argument("--mt-backend", choices=["seq2seq", "deepl", "google", "mllm"], help="default: seq2seq")
    g.add_argument("--mt-model", help="local seq2seq MT checkpoint dir (NLLB-200, M2M100 or multi-target Marian)")
    g.add_argument("--translate-to", help="comma-separated languages for each caption (default: the image page's language)")
    g.add_argument("--num-gpus", type=float, help="GPUs per model actor (caption, translate, categorise, embed, NSFW)")
    ap.add_argument("-q", "--quiet", action="store_true")
    return ap.parse_known_args(argv)


def build_config(args: argparse.Namespace, overrides: list[str]) -> BuildConfig:
    data = load_yaml(args.config) if args.config else {}
    if args.output:
        data["output"] = args.output
    if args.seeds:
        data["seeds"] = args.seeds
    if args.warc:
        data["warc"] = args.warc
    if args.offline:
        data["offline"] = True
    if args.langs:
        data["langs"] = [x.strip() for x in args.langs.split(",") if x.strip()]
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
    if args.d_ling:
        d = data.setdefault("d_ling", {})
        d["enabled"] = True
        if args.caption_model:
            mllm = {"family": args.caption_family, "model_path": args.caption_model}
            d.setdefault("caption", {})["mllm"] = mllm
            if args.categoriser == "mllm":
                d.setdefault("categorise", {})["mllm"] = mllm
        if args.categoriser:
            d.setdefault("categorise", {})["backend"] = args.categoriser
        tr = d.setdefault("translate", {})
        if args.mt_backend:
            tr["backend"] = args.mt_backend
            if args.mt_backend == "mllm" and args.caption_model:
                tr["mllm"] = {"family": args.caption_family, "model_path": args.caption_model}
        if args.mt_model:
            tr.setdefault("seq2seq", {})["model_path"] = args.mt_model
        if args.translate_to:
            tr["target_langs"] = [x.strip() for x in args.translate_to.split(",") if x.strip()]
    if args.num_gpus is not None:
        for block in (filters.setdefault("semantic", {}), filters.setdefault("moderation", {})):
            block["num_gpus"] = args.num_gpus
        if args.d_ling:
            for key in ("caption", "translate", "categorise"):
                data["d_ling"].setdefault(key, {})["num_gpus"] = args.num_gpus
    apply_overrides(data, [o for o in overrides if "=" in o and not o.startswith("-")])
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise SystemExit(f"unknown arguments: {bad}")
    return BuildConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo = None
    if not args.seeds and not args.warc:
        # Embedded default: serve the bundled demo web on 127.0.0.1 and crawl it.
        from mella.demo import DemoWeb  # noqa: PLC0415

        demo = DemoWeb(ROOT / "demo_web", port=args.demo_port).start()
        args.seeds = str(ROOT / "demo_web" / "seeds.txt")
        args.base_url = demo.base_url
        args.output = args.output or str(Path.cwd() / "mella_out")
        args.allow_private_hosts = args.allow_private_hosts or "127.0.0.1"
        overrides = ["crawl.politeness_delay_s=0", *overrides]
        print(f"demo web: {demo.base_url} (bundled pages from {ROOT / 'demo_web'})", flush=True)
    if not args.output:
        raise SystemExit("--output is required with --seeds/--warc")
    if args.seeds and args.warc:
        raise SystemExit("give --seeds or --warc, not both")
    try:
        cfg = build_config(args, overrides)
        from mella.runtime import init_ray  # noqa: PLC0415
        from mella.pipeline import BuildCorpus  # noqa: PLC0415
        from mella.funnel import format_table  # noqa: PLC0415

        init_ray(cfg.ray.num_cpus)
        funnel = BuildCorpus(cfg, seeds_base_url=args.base_url).run()
        print(format_table(funnel), flush=True)
        print(f"output: {os.path.abspath(cfg.output)}  (d_know/, rejects/, funnel.json, warc/)", flush=True)
    finally:
        if demo is not None:
            demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
