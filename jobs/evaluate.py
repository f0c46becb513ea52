"""Evaluate the base model and the per-language adapters (paper 4.1, Table 3; Table 5 with --seeds).

Against a running endpoint (serve/config.yaml):
    python jobs/evaluate.py --data DIR --langs hu,ko,ar --endpoint http://127.0.0.1:8000 --output OUT

Or as Ray Data batch inference (same engine, no server):
    python jobs/evaluate.py --data DIR --langs hu --model BASE_DIR --adapters ADAPTER_DIR --output OUT

Options: --method NAME=TEMPLATE (repeatable; default MELLA=mella-{lang}; {seed} allowed), --seeds 0,1,2,
--temperature, --max-tokens, --keyword-top-k, --n-test, --test-max-fraction, --token-env (bearer token
variable, default MELLA_SERVE_TOKEN), --config FILE and key=value words (any EvalConfig field, YAML-typed),
--print-config.
Writes OUT/report.md, report.csv, report.json, chart.png, outputs.jsonl, pairs.csv, pairs.html and prints
the paths and the aggregate as JSON. Settings: mella.evaluation.EvalConfig.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _bootstrap import ROOT  # noqa: F401 - the import puts platform/ on sys.path

from mella import cli, console, preflight


def check_inputs(a: argparse.Namespace) -> None:
    """Corpus, languages, endpoint URL or model/adapter dirs, before Ray or any request; raises console.UsageError."""
    data = Path(a.data)
    if not data.is_dir() or not any((data / s).is_dir() for s in ("d_know", "d_ling")):
        raise console.UsageError(
            f"--data {data} holds neither d_know/ nor d_ling/: give a build_corpus output directory"
        )
    preflight.check_langs(a.langs)
    if a.endpoint and a.model:
        raise console.UsageError("give --endpoint URL or --model DIR (Ray Data mode), not both")
    if not a.endpoint and not a.model:
        raise console.UsageError("give --endpoint URL (a running serve app) or --model DIR --adapters DIR")
    if a.endpoint:
        preflight.check_url(a.endpoint, "--endpoint")
    if a.model:
        a.model = preflight.check_model(a.model, "--model")[0]  # a hub id → its local snapshot, for the workers
        if a.adapters and not Path(a.adapters).is_dir():
            raise console.UsageError(
                f"--adapters {a.adapters} does not exist: give the directory holding mella-<lang>/ adapters"
            )
    preflight.check_output(a.output)


def _int_list(value: str) -> list[int]:
    try:
        return [int(x) for x in cli.comma_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of integers") from None


def eval_config(a: argparse.Namespace, overrides: list[str]):
    """The EvalConfig of ``--config``, the flags, then the ``key=value`` overrides (pydantic errors: exit 2)."""
    from mella.evaluation import EvalConfig

    values = cli.load_config(a.config)
    flags = dict(
        data=a.data,
        langs=a.langs,
        output=a.output,
        endpoint=a.endpoint,
        token=os.environ.get(a.token_env),
        model=a.model,
        adapters=a.adapters,
        backbone=a.backbone,
        seeds=a.seeds,
        temperature=a.temperature,
        max_tokens=a.max_tokens,
        keyword_top_k=a.keyword_top_k,
        n_test=a.n_test,
        test_max_fraction=a.test_max_fraction,
    )
    values.update({k: v for k, v in flags.items() if v is not None})
    if a.method:
        if any("=" not in m for m in a.method):
            raise console.UsageError("--method needs NAME=TEMPLATE")
        values["methods"] = dict(m.split("=", 1) for m in a.method)
    return EvalConfig(**cli.set_dotted(values, overrides))


def main(argv: list[str] | None = None) -> dict:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="corpus dir with d_know/*.parquet and d_ling/*.parquet")
    ap.add_argument("--langs", type=cli.comma_list, required=True, help="comma-separated languages")
    ap.add_argument("--output", required=True)
    ap.add_argument("--endpoint", help="base URL of an OpenAI-compatible MELLA endpoint")
    ap.add_argument("--token-env", default="MELLA_SERVE_TOKEN", help="env variable holding the bearer token")
    ap.add_argument("--model", help="base model dir (Ray Data mode)")
    ap.add_argument("--adapters", help="adapter dir (Ray Data mode)")
    ap.add_argument("--backbone", help="default qwen2-vl")
    ap.add_argument("--method", action="append", default=[], metavar="NAME=TEMPLATE")
    ap.add_argument("--seeds", type=_int_list, help="comma-separated seeds (paper Table 5: 0,1,2)")
    ap.add_argument("--temperature", type=float, help="default 0.0")
    ap.add_argument("--max-tokens", type=int, help="default 256")
    ap.add_argument("--keyword-top-k", type=int, help="default 5")
    ap.add_argument("--n-test", type=int, help="default 100")
    ap.add_argument("--test-max-fraction", type=float, help="default 0.2")
    ap.add_argument("--ray-address", help="Ray cluster address for Ray Data mode (default: local)")
    cli.add_config_flags(ap, "EvalConfig")
    console.add_console_flags(ap)
    a, overrides = cli.parse(ap, argv)
    console.setup(a.quiet, a.verbose)
    cfg = eval_config(a, overrides)
    if a.print_config:
        return cli.print_config(cfg.model_copy(update={"token": None}))
    check_inputs(a)
    from mella.evaluation import run

    started = False
    if cfg.model is not None:
        import ray

        from mella.runtime import init_ray

        console.quiet_ray()
        if a.ray_address:
            ray.init(address=a.ray_address, **console.ray_init_kwargs())
        started = not ray.is_initialized()
        init_ray()
    try:
        result = run(cfg)
    finally:
        if started:
            import ray

            ray.shutdown()
    print(
        json.dumps(
            {"paths": result["paths"], "missing": result["missing"], "aggregate": result["aggregate"]},
            indent=2,
            ensure_ascii=False,
        )
    )
    return result


if __name__ == "__main__":
    sys.exit(console.run_job(main))
