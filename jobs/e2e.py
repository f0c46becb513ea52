"""A whole MELLA loop on a laptop: corpus → one adapter per language → served endpoint → Table-3 report.

    python jobs/e2e.py --data mella_e2e/corpus --model mella_e2e/base --output mella_e2e   (what `make e2e` runs
    after `jobs/build_corpus.py` and `jobs/make_tiny_model.py`)

For every language with D_know rows in --data it runs jobs/train.py (LoRA, Ray Train + DeepSpeed ZeRO-2,
1 CPU worker, --steps optimizer steps at a high learning rate so the adapters move a tiny model), starts
the Serve app (mella.serving, the app of serve/config.yaml) on 127.0.0.1, runs jobs/evaluate.py against it
(base vs adapters on the held-out split, paper 4.1 / Table 3), stops the app and prints the report and
where everything is. All in one local Ray. With the tiny random model of make_tiny_model.py the numbers
are noise: they show the loop works, not what MELLA achieves (docs/training.md for a real run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _bootstrap import ROOT

from mella import cli, console, preflight

MIN_ROWS = 6  # a language needs this many D_know rows: 3 held out for evaluation, the rest to train on
TRAIN_SET = [
    "n_test=3",
    "test_max_fraction=0.5",
    "warmup_ratio=0.0",
    "batch_size=2",
    "grad_accum=1",
    "lora_rank=8",
    "lora_alpha=16",
    "lora_dropout=0",
    "max_seq_length=192",
    "cpus_per_worker=0.5",
    "materialize=true",
    "checkpoint_every=1000",
]


def _load_job(name: str):
    """``main`` of jobs/NAME.py (scripts, loaded by path so their names cannot clash with packages)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"mella_job_{name}", ROOT / "jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _verbosity() -> list[str]:
    return {console.QUIET: ["-q"], console.VERBOSE: ["-v"]}.get(console.level(), [])


@contextlib.contextmanager
def _log_to(path: Path):
    """Send stdout (a job's result JSON) to ``path`` instead of the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(args: dict, port: int):
    """The MELLA Serve app on 127.0.0.1:port in the current Ray; yields its base URL; shut down after."""
    from ray import serve

    from mella.serving.app import application

    quiet = {"log_level": "INFO" if console.level() == console.VERBOSE else "WARNING"}
    if console.level() < console.VERBOSE:  # the driver's own "Started Serve ..." INFO lines
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config=quiet)
    try:
        serve.run(application(args), name="mella", route_prefix="/", logging_config=quiet)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="build_corpus output (d_know/ [d_ling/])")
    ap.add_argument("--model", required=True, help="base model checkpoint dir (make_tiny_model.py output)")
    ap.add_argument("--output", required=True, help="where adapters/, eval/ go")
    ap.add_argument(
        "--langs",
        type=cli.comma_list,
        help="comma-separated languages (default: every language with enough D_know rows)",
    )
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per adapter (default 6)")
    ap.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 1e-2: a tiny model, few steps)")
    ap.add_argument("--num-cpus", type=int, help="local Ray CPUs (default: all)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="training runs at a time (default 1; 3 side by side on 2 CPUs stalled: their Ray Data "
        "reads found no free CPU)",
    )
    cli.add_config_flags(ap)
    console.add_console_flags(ap)
    a, _ = cli.parse(ap, argv, overrides=False)
    console.setup(a.quiet, a.verbose)
    return a


def _check(a: argparse.Namespace, train_job) -> tuple[Path, Path, dict, str, list[str]]:
    """Inputs before Ray: ``(data, output, model config, backbone, langs)``; raises console.UsageError."""
    data, out = Path(a.data).resolve(), Path(a.output).resolve()
    a.model, model_cfg = preflight.check_model(a.model, "--model")
    backbone = train_job.MODEL_TYPES.get(model_cfg.get("model_type"))
    if backbone is None:
        raise console.UsageError(
            f"--model {a.model} is a {model_cfg.get('model_type')!r} checkpoint: give a Qwen2-VL or InternVL2 (-hf) one"
        )
    present = train_job.rows_per_lang(data, "d_know")
    if not present:
        raise console.UsageError(
            f"--data {data} holds no d_know/*.parquet: run jobs/build_corpus.py --output {data} first"
        )
    langs = a.langs if a.langs else sorted(k for k, n in present.items() if n >= MIN_ROWS)
    preflight.check_langs(langs)
    few = [x for x in langs if present.get(x, 0) < MIN_ROWS]
    if few or not langs:
        raise console.UsageError(
            f"too few D_know rows (< {MIN_ROWS}) for {','.join(few) or 'every language'} in {data}: "
            f"rows per language {present}"
        )
    preflight.check_output(out)
    return data, out, model_cfg, backbone, langs


def _train_all(a, train_job, base_args: list[str], langs: list[str], out: Path, progress) -> dict[str, dict]:
    """One jobs/train.py run per language (``a.parallel`` at a time); adapters copied to OUT/adapters/mella-<lang>."""
    summaries: dict[str, dict] = {}

    def train(lang: str) -> dict:
        return train_job.main([*base_args, "--lang", lang, "--output", str(out / "train" / lang)])

    progress.start("train", f"{len(langs)} adapters ({','.join(langs)}), {a.steps} steps each, {a.parallel} at a time")
    # the jobs' summary JSON goes to train.log, not the console; runs share this Ray (Ray Train runs side by side)
    with _log_to(out / "train.log"), ThreadPoolExecutor(a.parallel) as pool:
        for lang, summary in zip(langs, pool.map(train, langs)):
            summaries[lang] = summary
            loss = summary.get("final_loss")
            progress.update(
                f"{len(summaries)}/{len(langs)} adapters done (last: {lang}"
                + (f", final loss {loss:.2f})" if isinstance(loss, float) else ")")
            )
    for lang, summary in summaries.items():
        dest = out / "adapters" / f"mella-{lang}"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(summary["adapter"], dest)
    return summaries


def _serve_and_evaluate(
    a, eval_job, serve_args: dict, data: Path, langs: list[str], out: Path, progress, timings: dict
) -> dict:
    """The Serve app on a free 127.0.0.1 port, jobs/evaluate.py against it, the app stopped; returns its result."""
    progress.start("serve", f"starting the Serve app ({len(langs)} adapters)")
    t = time.monotonic()
    with serving(serve_args, _free_port()) as url:
        timings["serve start"] = time.monotonic() - t
        progress.start("evaluate", f"base vs {len(langs)} adapters through {url}")
        t = time.monotonic()
        with _log_to(out / "eval.log"):
            result = eval_job.main(
                [
                    "--data",
                    str(data),
                    "--endpoint",
                    url,
                    "--langs",
                    ",".join(langs),
                    "--output",
                    str(out / "eval"),
                    "--n-test",
                    "3",
                    "--test-max-fraction",
                    "0.5",
                    "--max-tokens",
                    "16",
                    *_verbosity(),
                ]
            )
        timings["evaluate"] = time.monotonic() - t
        progress.end(f"done in {timings['evaluate']:.0f} s; Serve app stopped")
    return result


def _report(a, data: Path, out: Path, langs: list[str], result: dict, timings: dict, wall: float) -> None:
    """Print the Table-3 report, where everything is, and write OUT/e2e.json."""
    print("\n" + Path(result["paths"]["markdown"]).read_text(encoding="utf-8").strip() + "\n")
    print(
        "NOTE: the base model is a TINY RANDOM-WEIGHT Qwen2-VL (jobs/make_tiny_model.py), and so are make e2e's "
        "D_ling captioner, translator (Marian) and QE model (COMETKiwi): the scores above are noise "
        "and only show that every step ran. A real run trains Qwen2-VL-7B-Instruct or InternVL2-8B on GPU nodes "
        "(--use-gpu, cluster/ configs, the paper's Table 7 settings): docs/training.md."
    )
    adapters = out / "adapters"
    where = {
        "corpus (D_know, D_ling, rejects, funnel.json, WARCs)": data,
        "base model": Path(a.model),
        **{f"adapter {lang}": adapters / f"mella-{lang}" for lang in langs},
        "training logs": out / "train",
        "evaluation report (md, csv, json, png, outputs, pairs)": out / "eval",
    }
    print("where everything is:")
    for k, v in where.items():
        print(f"  {k:<55} {Path(v).resolve()}")
    (out / "e2e.json").write_text(
        json.dumps(
            {
                "langs": langs,
                "seconds": round(wall, 1),
                "timings_s": {k: round(v, 1) for k, v in timings.items()},
                "paths": {k: str(Path(v).resolve()) for k, v in where.items()},
                "aggregate": result["aggregate"],
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    print(f"train + serve + evaluate: {wall:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    if a.print_config:
        return cli.print_config(cli.flag_settings(a))
    train_job, eval_job = _load_job("train"), _load_job("evaluate")
    data, out, model_cfg, backbone, langs = _check(a, train_job)
    # inputs are valid: Ray from here on
    import ray

    from mella.runtime import init_ray

    t0 = time.monotonic()
    progress = console.Progress()
    progress.start("ray", "starting")
    console.quiet_ray()
    init_ray(a.num_cpus)
    timings: dict[str, float] = {}
    base_args = [
        "--data",
        str(data),
        "--backbone",
        backbone,
        "--model",
        str(a.model),
        "--mix",
        "dual",
        "--deepspeed",
        "zero2",
        "--num-workers",
        "1",
        *_verbosity(),
        *TRAIN_SET,
        f"max_steps={a.steps}",
        f"lr={a.lr}",
    ]
    serve_args = dict(
        model=str(Path(a.model).resolve()),
        backbone=backbone,
        adapters=str((out / "adapters").resolve()),
        max_adapters_per_replica=len(langs),
        auth_token_env="MELLA_E2E_NO_TOKEN",
    )
    if backbone == "qwen2-vl" and model_cfg.get("text_config", {}).get("hidden_size", 0) <= 256:  # the tiny model
        from mella.models.tiny import MAX_PIXELS, MIN_PIXELS

        base_args += [f"image_min_pixels={MIN_PIXELS}", f"image_max_pixels={MAX_PIXELS}"]
        serve_args.update(image_min_pixels=MIN_PIXELS, image_max_pixels=MAX_PIXELS)
    try:
        t = time.monotonic()
        _train_all(a, train_job, base_args, langs, out, progress)
        timings["train"] = time.monotonic() - t
        result = _serve_and_evaluate(a, eval_job, serve_args, data, langs, out, progress, timings)
    finally:
        progress.close()
        ray.shutdown()
    _report(a, data, out, langs, result, timings, time.monotonic() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(console.run_job(main))
