"""LoRA SFT of one language's adapter on D_know ∪ D_ling (paper 3.3, 4.1; Ray Train + DeepSpeed ZeRO).

    python jobs/train.py --data DIR --lang hu --model PATH|ORG/NAME[@REV] --output DIR [--backbone qwen2-vl|internvl2] \
        [--mix dual|ling-only|know-only|two-stage] [--deepspeed zero2|zero3] [--num-workers N] [--use-gpu] \
        [--config train.yaml] [--print-config] [lr=2e-5 max_steps=100 ...]

Writes OUTPUT/adapter (PEFT adapter + mella_train.json), OUTPUT/train_log.jsonl, Ray results under
OUTPUT/ray_results; prints the run summary as JSON. Hyperparameters: mella.train.config.TrainConfig.
Guide: docs/training.md. Inputs are checked before Ray starts (the corpus holds rows of --lang for the
mix, --model is a local checkpoint or a hub id in the Hugging Face cache, of the backbone): a bad one is one line on
stderr, exit code 2, never a Ray Train retry. --backbone defaults to the checkpoint's model_type.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

from _bootstrap import ROOT  # noqa: F401 - the import puts platform/ on sys.path

from mella import cli, console, preflight
from mella.models.hub import parse_hub_id

#: config.json model_type → --backbone (Qwen2-VL; InternVL2 converted to the transformers -hf layout)
MODEL_TYPES = {"qwen2_vl": "qwen2-vl", "internvl": "internvl2"}
MIX_SOURCES = {
    "dual": ("d_know", "d_ling"),
    "know-only": ("d_know",),
    "ling-only": ("d_ling",),
    "two-stage": ("d_know", "d_ling"),
}


def _abs(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def rows_per_lang(data: Path, source: str) -> dict[str, int]:
    """Rows per ``lang`` in ``data/source/*.parquet`` (reads the ``lang`` column only); {} when absent."""
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    for f in sorted(glob.glob(str(data / source / "*.parquet"))):
        for lang in pq.read_table(f, columns=["lang"])["lang"].to_pylist():
            counts[lang] = counts.get(lang, 0) + 1
    return counts


def check_inputs(cfg) -> None:
    """Corpus, language, model and output of a TrainConfig, before Ray; raises console.UsageError."""
    preflight.check_langs([cfg.lang])
    data = Path(cfg.data)
    if not data.is_dir():
        raise console.UsageError(f"--data {data} does not exist: give a build_corpus output directory (holds d_know/)")
    sources = MIX_SOURCES[cfg.mix]
    present = {s: rows_per_lang(data, s) for s in sources}
    if not any(present.values()):
        raise console.UsageError(
            f"--data {data} holds no {' or '.join(s + '/*.parquet' for s in sources)}: "
            "give a build_corpus output directory"
        )
    missing = [s for s in sources if not present[s].get(cfg.lang)]
    if cfg.mix in ("ling-only", "know-only", "two-stage") and missing:
        langs = sorted(set().union(*present.values()))
        raise console.UsageError(
            f"--data {data} has no {'/'.join(missing)} rows for --lang {cfg.lang} (mix {cfg.mix}); "
            f"languages present: {','.join(langs) or 'none'}"
        )
    if len(missing) == len(sources):
        langs = sorted(set().union(*present.values()))
        raise console.UsageError(
            f"--data {data} has no rows for --lang {cfg.lang}; languages present: {','.join(langs)}"
        )
    model_cfg = preflight.check_model_dir(cfg.model, "--model")
    kind = MODEL_TYPES.get(model_cfg.get("model_type"))
    if kind != cfg.backbone:
        raise console.UsageError(
            f"--model {cfg.model} is a {model_cfg.get('model_type')!r} checkpoint, not {cfg.backbone}: "
            f"pass the matching --backbone ({', '.join(f'{k} → {v}' for k, v in MODEL_TYPES.items())})"
        )
    preflight.check_output(cfg.output)


def main(argv: list[str] | None = None) -> dict:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="corpus dir with d_know/*.parquet [and d_ling/*.parquet]")
    ap.add_argument("--lang", required=True)
    ap.add_argument("--backbone", choices=["qwen2-vl", "internvl2"], help="default: from the checkpoint's config.json")
    ap.add_argument(
        "--model",
        required=True,
        help="base model: a local HF checkpoint dir or a hub id org/name[@rev] (resolved via HF_HOME)",
    )
    ap.add_argument("--output", required=True)
    ap.add_argument("--mix", choices=["dual", "ling-only", "know-only", "two-stage"])
    ap.add_argument("--deepspeed", choices=["zero2", "zero3"])
    ap.add_argument("--num-workers", type=int)
    ap.add_argument("--use-gpu", action="store_true", default=None)
    ap.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    cli.add_config_flags(ap, "TrainConfig")
    console.add_console_flags(ap)
    a, overrides = cli.parse(ap, argv)
    console.setup(a.quiet, a.verbose)
    cli.load_config(a.config)  # a missing or unreadable file: one line, exit 2
    backbone, model = a.backbone, a.model
    hub_id = not Path(a.model).expanduser().exists() and parse_hub_id(a.model)
    as_given = a.print_config and hub_id  # --print-config shows the id as typed; a run resolves it
    if not as_given and (Path(a.model, "config.json").is_file() or hub_id):
        # a hub id is resolved here, on the driver: Ray Train workers get the local snapshot directory
        model, model_cfg = preflight.check_model(a.model, "--model")
        backbone = backbone or MODEL_TYPES.get(model_cfg.get("model_type"))
    from mella.train.config import TrainConfig

    try:
        # absolute: Ray Train workers do not run in this directory
        cfg = TrainConfig.load(
            a.config,
            overrides,
            data=_abs(a.data),
            lang=a.lang,
            backbone=backbone,
            model=a.model if as_given else _abs(model),
            model_name=a.model,
            output=_abs(a.output),
            mix=a.mix,
            deepspeed=a.deepspeed,
            num_workers=a.num_workers,
            use_gpu=a.use_gpu,
        )
    except ValueError as e:
        if type(e).__name__ == "ValidationError":
            raise
        raise console.UsageError(str(e)) from e
    if a.print_config:
        return cli.print_config(cfg)
    check_inputs(cfg)
    # inputs are valid: Ray from here on
    import ray

    from mella.train.trainer import train

    console.quiet_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=a.ray_address or os.environ.get("RAY_ADDRESS") or "local",
            include_dashboard=False,
            **console.ray_init_kwargs(),
        )
        console.quiet_ray()
    try:
        summary = train(cfg)
    finally:
        if started:
            ray.shutdown()
    print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    return summary


if __name__ == "__main__":
    sys.exit(console.run_job(main))
