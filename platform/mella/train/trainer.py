"""LoRA SFT with Ray Train (TorchTrainer) + DeepSpeed ZeRO, fed by Ray Data (paper 3.3, 4.1.4, appendix C).

Driver (:func:`train`): read the corpus (``DIR/d_know``, ``DIR/d_ling``), split by image
(:mod:`mella.split`), build a Ray Data pipeline (filter → sample building), run a ``TorchTrainer``
whose workers wrap the PEFT model in ``deepspeed.initialize`` (ZeRO-2 or ZeRO-3; bf16 on GPU, fp32 on
CPU), then copy the final adapter out of the last checkpoint and write its metadata.

Mixes (paper Table 4): ``dual`` = D_know ∪ D_ling in one run (the paper's method; D_ling is used when
present), ``know-only``, ``ling-only``, ``two-stage`` = LoRA on D_ling, merge it into the weights,
then a new LoRA on D_know on top of the merged model (the final adapter applies to that merged model,
saved under ``OUTPUT/stage1_merged``; the merge runs in a Ray task in the checkpoint's dtype, never on the
driver: :func:`merge_adapter`).

Fault tolerance: every ``checkpoint_every`` optimizer steps all ranks call ``engine.save_checkpoint``
(LoRA weights, optimizer and scheduler state; frozen weights excluded) and rank 0 adds the PEFT adapter
and the step log; ``ray.train.report`` persists it. After a worker failure Ray Train restarts the group
(``FailureConfig.max_failures``), the loop loads the latest checkpoint and skips the micro-batches
already consumed (Ray Data order is made deterministic with ``preserve_order`` and a fixed shuffle seed).

Logged per optimizer step (``OUTPUT/train_log.jsonl``, rank 0 stdout): loss (mean over the step's answer tokens on all ranks), tokens/s (all
non-pad tokens, all ranks), estimated MFU = tokens/s × FLOPs/token / (world × peak FLOP/s) with
FLOPs/token ≈ 4·N + 2·N_trainable (forward 2N, activation gradients 2N, weight gradients only for the
trainable LoRA weights; the 6N rule of Kaplan et al. 2020 / PaLM appendix B adapted to frozen
weights; attention FLOPs ignored), peak RSS and peak GPU memory of rank 0; and, to see where a step's
time goes, rank 0's wait on the Ray Data iterator (``data_wait_s``), its process CPU seconds
(``cpu_time_s``, all threads), its torch intra-op thread count and the step's end (``end_unix_s``).
Threads: a worker gets ``floor(cpus_per_worker)`` (at least 1) torch threads through Ray's OMP_NUM_THREADS
default. Priority: Ray starts workers at niceness 15 (``RAY_worker_niceness``); where the machine is shared
with processes outside Ray at niceness 0 in the same scheduling group, training gets a small CPU share:
start Ray with ``RAY_worker_niceness=0`` there (tests/benchmarks/bench_train.py does).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mella.split import SOURCES, split_by_image
from mella.train import artifacts
from mella.train.config import TrainConfig
from mella.train.samples import ANSWER_COLUMN, build_batch

MIX_SOURCES = {"dual": ("d_know", "d_ling"), "know-only": ("d_know",), "ling-only": ("d_ling",)}
#: Dense bf16 peak TFLOP/s per GPU (vendor datasheets), for MFU when ``peak_tflops`` is not given.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


@ray.remote(num_cpus=0)
class SampleCounter:
    """Outcome of sample building per sample (``source:sha256`` → status), filled by the Ray Data tasks.

    Keyed by sample so that re-reading the data (later epochs, a restart after a failure) does not
    count a sample twice; ``totals`` gives ``source/status`` → count.
    """

    def __init__(self):
        self.status: dict[str, str] = {}

    def add(self, outcomes: dict[str, str]) -> None:
        self.status.update(outcomes)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for key, status in self.status.items():
            name = f"{key.split(':', 1)[0]}/{status}"
            out[name] = out.get(name, 0) + 1
        return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------- data
def _files(data: Path, source: str) -> list[str]:
    return sorted(str(p) for p in (Path(data) / source).glob("*.parquet"))


def select_training_rows(cfg: TrainConfig, sources: tuple[str, ...]) -> tuple[dict, dict]:
    """The training rows of ``sources`` for ``cfg.lang`` (no Ray: parquet columns ``id, lang, sha256`` only).

    The test images of *both* sources are held out whatever the mix, so every mix is evaluated on the same
    test set; ``cfg.train_rows`` fixes the number of samples (:func:`sample_rows`, seed ``cfg.sample_seed``).
    Returns ``(selection, info)``: selection ``{"files": {source: [parquet]}, "held": sha256 array,
    "keep": {source: id array}}``; info ``rows`` per source (drawn), ``pool_rows``, ``epoch_scale``,
    ``held_out`` image counts, ``snapshot`` (hash of the drawn rows) and ``sources_used``.

    Raises:
        FileNotFoundError: a source the mix needs has no parquet files (``d_ling`` is optional in ``dual``).
        ValueError: no training rows are left for ``cfg.lang``.
    """
    present = {s: _files(cfg.data, s) for s in SOURCES}
    for s in sources:
        if not present[s] and not (s == "d_ling" and cfg.mix == "dual"):
            raise FileNotFoundError(f"mix {cfg.mix!r} needs {Path(cfg.data) / s}/*.parquet")
    meta = {s: pq.read_table(f, columns=["id", "lang", "sha256"]) for s, f in present.items() if f}
    splits = split_by_image(meta, cfg.lang, cfg.n_test, cfg.test_max_fraction)
    held = pa.array(sorted(set().union(*(set(sp.test["sha256"].to_pylist()) for sp in splits.values()))), pa.string())
    used = [s for s in sources if s in splits and splits[s].train.num_rows]
    if not used:
        raise ValueError(f"no training rows for lang={cfg.lang!r} in {list(sources)} under {cfg.data}")
    pool = [
        (s, r, h)
        for s in used
        for r, h in zip(splits[s].train["id"].to_pylist(), splits[s].train["sha256"].to_pylist())
    ]
    rows, repeat = sample_rows(pool, cfg.train_rows, cfg.sample_seed)
    keep = {s: pa.array(sorted({r for src, r, _ in rows if src == s}), pa.string()) for s in used}
    info = {
        "rows": {s: sum(1 for src, _, _ in rows if src == s) for s in used},
        "sources_used": used,
        "pool_rows": {s: splits[s].train.num_rows for s in used},
        "epoch_scale": repeat,
        "held_out": {s: splits[s].test.num_rows for s in splits},
        "snapshot": artifacts.snapshot_hash(rows),
    }
    return {"files": present, "held": held, "keep": keep}, info


def prepare_data(cfg: TrainConfig, sources: tuple[str, ...], counter: str | None):
    """The training dataset of ``sources`` for ``cfg.lang`` (:func:`select_training_rows`) as a Ray Dataset of
    built samples; returns ``(dataset, info)``. Raises what :func:`select_training_rows` raises."""
    sel, info = select_training_rows(cfg, sources)
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # resume skips by position
    parts = []
    for s in info["sources_used"]:
        ds = ray.data.read_parquet(sel["files"][s]).select_columns(["id", "lang", "sha256", "image", ANSWER_COLUMN[s]])
        parts.append(
            ds.map_batches(
                _select,
                fn_kwargs={"lang": cfg.lang, "held": sel["held"], "source": s, "keep": sel["keep"][s]},
                batch_format="pyarrow",
                num_cpus=0.25,
            )
        )
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    kwargs = dict(
        backbone=cfg.backbone,
        model=str(cfg.model),
        lang=cfg.lang,
        max_seq_length=cfg.max_seq_length,
        seed=cfg.seed,
        min_pixels=cfg.image_min_pixels,
        max_pixels=cfg.image_max_pixels,
        max_tiles=cfg.max_tiles,
        counter=counter,
    )
    ds = ds.map_batches(build_batch, fn_kwargs=kwargs, batch_size=8, batch_format="numpy", num_cpus=0.25)
    return (ds.materialize() if cfg.materialize else ds), info


def sample_rows(pool: list[tuple[str, str, str]], n: int | None, seed: int) -> tuple[list[tuple[str, str, str]], float]:
    """A training set of ``n`` samples drawn from ``pool`` (``(source, id, sha256)`` rows) with ``seed``.

    Paper Table 4: the ablations train on as many samples as the main experiment. ``n`` None or equal to
    the pool: the whole pool, scale 1. ``n`` smaller: ``n`` rows drawn without replacement (``random.Random(seed)``
    over the sorted pool, so the draw depends only on the rows and the seed). ``n`` larger: the whole pool,
    and the returned epoch scale ``n / len(pool)`` (> 1) repeats it until ``n`` samples are seen.
    Returns ``(rows, epoch_scale)``. Raises ``ValueError`` for ``n < 1``.
    """
    import random

    if n is not None and n < 1:
        raise ValueError(f"train_rows must be >= 1, got {n}")
    pool = sorted(pool)
    if n is None or n == len(pool):
        return pool, 1.0
    if n > len(pool):
        return pool, n / len(pool)
    return sorted(random.Random(seed).sample(pool, n)), 1.0


def _select(t: pa.Table, lang: str, held: pa.Array, source: str, keep: pa.Array | None = None) -> pa.Table:
    mask = pc.and_(pc.equal(t["lang"], lang), pc.invert(pc.is_in(t["sha256"], value_set=held)))
    t = t.filter(mask)
    if keep is not None:
        t = t.filter(pc.is_in(t["id"], value_set=keep))
    return pa.table(
        {
            "image": t["image"],
            "answer": t[ANSWER_COLUMN[source]],
            "sha256": t["sha256"],
            "source": pa.array([source] * t.num_rows, pa.string()),
        }
    )


# --------------------------------------------------------------------------------------------- worker
def _ds_config(cfg: TrainConfig, world: int) -> dict:
    """DeepSpeed config: ZeRO stage, micro-batch/accumulation, clipping; bf16 only on GPU."""
    zero = {"stage": cfg.ds_stage, "overlap_comm": False, "contiguous_gradients": True}
    if cfg.ds_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.use_gpu},
        # a torch AdamW is passed in: avoids compiling DeepSpeed's CPU Adam op (STACK.md)
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _peak_flops(cfg: TrainConfig) -> float | None:
    if cfg.peak_tflops:
        return cfg.peak_tflops * 1e12
    import torch

    if cfg.use_gpu and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tf in PEAK_TFLOPS.items():
            if key in name:
                return tf * 1e12
    return None


def _save(engine, cfg: TrainConfig, rank: int, state: dict, history: list[dict], metrics: dict) -> None:
    """Checkpoint on all ranks (DeepSpeed state + rank 0's adapter and log) and report it to Ray Train."""
    import deepspeed

    tmp = Path(tempfile.mkdtemp(prefix=f"mella-ckpt-r{rank}-"))
    engine.save_checkpoint(str(tmp), tag="ds", exclude_frozen_parameters=True)
    model = engine.module
    lora = [p for p in model.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(lora, enabled=cfg.ds_stage == 3):
        if rank == 0:
            model.save_pretrained(str(tmp / "adapter"))
    if rank == 0:
        (tmp / "train_state.json").write_text(json.dumps(state))
        (tmp / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
        checkpoint_dir_name=f"checkpoint_{state['step']:08d}",
    )
    shutil.rmtree(tmp, ignore_errors=True)


def _setup(cfg: TrainConfig, model_path: str, total_steps: int, world: int):
    """PEFT LoRA model wrapped by ``deepspeed.initialize``; returns ``(backbone, engine, scheduler, n_total, n_train)``."""
    import deepspeed
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    from mella.models.backbones import load_backbone, load_model

    torch.manual_seed(cfg.seed)  # same LoRA init on every rank
    bb = load_backbone(
        cfg.backbone,
        model_path,
        min_pixels=cfg.image_min_pixels,
        max_pixels=cfg.image_max_pixels,
        max_tiles=cfg.max_tiles,
    )
    model = load_model(cfg.backbone, model_path, torch.bfloat16 if cfg.use_gpu else torch.float32)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=cfg.lora_target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(total_steps * cfg.warmup_ratio),
        num_training_steps=total_steps,
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=_ds_config(cfg, world)
    )
    return bb, engine, scheduler, n_total, n_train


def _restore(engine) -> tuple[int, list[dict], int | None]:
    """Load Ray Train's latest checkpoint into ``engine``; returns ``(step, history, resumed_from)``."""
    ckpt = ray.train.get_checkpoint()
    if not ckpt:
        return 0, [], None
    with ckpt.as_directory() as d:
        engine.load_checkpoint(d, tag="ds", load_module_strict=False)
        state = json.loads((Path(d) / "train_state.json").read_text())
        history = [json.loads(line) for line in (Path(d) / "log.jsonl").read_text().splitlines()]
    return state["step"], history, state["step"]


class _StepLog:
    """Per-optimizer-step accounting: loss × answer tokens, answer tokens, all tokens, and timers."""

    def __init__(self, cfg: TrainConfig, device, world: int, flops_per_token: float, peak: float | None):
        import torch

        self.cfg, self.world, self.flops_per_token, self.peak = cfg, world, flops_per_token, peak
        self.acc = torch.zeros(3, dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.t0, self.c0, self.data_wait = time.perf_counter(), time.process_time(), 0.0
        self.acc.zero_()

    def add(self, loss: float, inputs: dict) -> None:
        import torch

        n_ans = int((inputs["labels"][:, 1:] != -100).sum())  # shifted, as the model's loss counts them
        self.acc += torch.tensor(
            [loss * n_ans, n_ans, int(inputs["attention_mask"].sum())], dtype=torch.float64, device=self.acc.device
        )

    def record(self, step: int, epoch: int, lr: float) -> dict:
        import torch
        import torch.distributed as dist

        dist.all_reduce(self.acc)
        dt = time.perf_counter() - self.t0
        tok_s = self.acc[2].item() / dt
        use_gpu = self.cfg.use_gpu
        return {
            "step": step,
            "epoch": epoch,
            "loss": self.acc[0].item() / max(self.acc[1].item(), 1.0),
            "tokens": int(self.acc[2].item()),
            "step_time_s": dt,
            "tokens_per_s": tok_s,
            "data_wait_s": self.data_wait,
            "cpu_time_s": time.process_time() - self.c0,
            "end_unix_s": time.time(),
            "torch_threads": torch.get_num_threads(),
            "lr": lr,
            "mfu": tok_s * self.flops_per_token / (self.world * self.peak) if self.peak else None,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if use_gpu else None,
        }


def _batches(shard, cfg: TrainConfig, epoch: int, log: _StepLog):
    """The shard's micro-batches of one epoch (seeded local shuffle); time spent waiting goes to ``log``."""
    it = iter(
        shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=cfg.shuffle_buffer or None,
            local_shuffle_seed=cfg.seed + epoch,
        )
    )
    while True:
        tw = time.perf_counter()
        batch = next(it, None)
        log.data_wait += time.perf_counter() - tw
        if batch is None:
            return
        yield batch


def train_loop(config: dict) -> None:
    """Ray Train worker loop (one process per rank).

    ``config``: ``cfg`` (TrainConfig dict), ``model``, ``total_steps``, ``epoch_scale`` (passes over the
    data per configured epoch, > 1 when a fixed training size repeats a smaller pool).
    """
    import ray.train.torch
    import torch

    cfg = TrainConfig(**config["cfg"])
    total_steps, model_path = config["total_steps"], config["model"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    bb, engine, scheduler, n_total, n_train = _setup(cfg, model_path, total_steps, world)
    step, history, resumed_from = _restore(engine)
    skip = step * cfg.grad_accum  # micro-batches already consumed (over all epochs)
    log = _StepLog(cfg, device, world, 4 * n_total + 2 * n_train, _peak_flops(cfg))
    shard = ray.train.get_dataset_shard("train")
    scale = config.get("epoch_scale", 1.0)
    max_epochs = math.ceil(cfg.epochs * scale) if cfg.max_steps is None else 10**9
    extra = {"n_params": n_total, "n_trainable": n_train}
    micro, last_saved, epoch = 0, step, 0
    while step < total_steps and epoch < max_epochs:
        batches = 0
        for batch in _batches(shard, cfg, epoch, log):
            batches += 1
            if skip:
                skip -= 1
                continue
            inputs = {k: v.to(device) for k, v in bb.collate(batch).items()}
            if cfg.use_gpu:
                inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
            loss = engine(**inputs).loss
            engine.backward(loss)
            engine.step()
            log.add(loss.item(), inputs)
            micro += 1
            if micro % cfg.grad_accum:
                continue
            step += 1
            rec = log.record(step, epoch, scheduler.get_last_lr()[0])
            if resumed_from is not None and step == resumed_from + 1:
                rec["resumed_from"] = resumed_from
            history.append(rec)
            if rank == 0:
                print(json.dumps({"mella_train_step": rec}), flush=True)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                _save(engine, cfg, rank, {"step": step, "epoch": epoch}, history, {**rec, **extra})
                last_saved = step
            log.reset()
            if step >= total_steps:
                break
        if batches == 0:
            raise RuntimeError(f"rank {rank}: empty dataset shard (too few samples for {world} workers?)")
        epoch += 1
    if last_saved != step or not history:  # data ran out before total_steps: save what we have
        _save(
            engine,
            cfg,
            rank,
            {"step": step, "epoch": epoch},
            history,
            {**(history[-1] if history else {"step": step}), **extra},
        )


# --------------------------------------------------------------------------------------------- driver
def _steps(cfg: TrainConfig, n_rows: int, epoch_scale: float = 1.0) -> int:
    """Optimizer steps of a run: ``max_steps``, else ``epochs × epoch_scale`` passes over ``n_rows``."""
    if cfg.max_steps:
        return cfg.max_steps
    per_worker = n_rows // cfg.num_workers  # Ray Train's equal split drops the remainder
    micro = math.ceil(per_worker / cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * epoch_scale * micro / cfg.grad_accum))


def run_stage(cfg: TrainConfig, sources: tuple[str, ...], model: Path, output: Path, name: str) -> dict:
    """One Ray Train run of LoRA SFT on ``sources`` from base ``model``; the adapter lands in ``output/adapter``.

    Returns a summary dict (steps, final loss, rows, sample counts, snapshot ...).
    Raises ``ray.train.TrainingFailedError`` when the run fails beyond ``max_failures``.
    """
    from ray.train.torch import TorchTrainer

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    counter_name = f"mella-samples-{name}-{os.getpid()}-{time.monotonic_ns()}"
    # on the driver's node, as Ray Train pins its controller: sample-building tasks re-run after a
    # worker node is lost (lineage reconstruction of the dataset) must still find the counter
    counter = SampleCounter.options(
        name=counter_name,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
    ).remote()
    ds, info = prepare_data(cfg, sources, counter_name)
    total_steps = _steps(cfg, sum(info["rows"].values()), info["epoch_scale"])
    stage_cfg = cfg.model_copy(update={"model": Path(model)})
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": stage_cfg.model_dump(mode="json"),
            "model": str(model),
            "total_steps": total_steps,
            "epoch_scale": info["epoch_scale"],
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(output / "ray_results"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            worker_runtime_env={"env_vars": {"TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"]}},
        ),
        datasets={"train": ds},
    )
    result = trainer.fit()
    counts = ray.get(counter.totals.remote())
    ray.kill(counter)
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} produced no checkpoint")
    adapter = output / "adapter"
    with result.checkpoint.as_directory() as d:
        shutil.rmtree(adapter, ignore_errors=True)
        shutil.copytree(Path(d) / "adapter", adapter)
        shutil.copy(Path(d) / "log.jsonl", output / "train_log.jsonl")
        state = json.loads((Path(d) / "train_state.json").read_text())
    history = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return {
        "adapter": str(adapter),
        "base_model": str(model),
        "steps": state["step"],
        "total_steps": total_steps,
        "final_loss": history[-1]["loss"] if history else None,
        "samples": counts,
        "ray_results": str(result.path),
        "resumed": any("resumed_from" in h for h in history),
        **info,
    }


def checkpoint_dtype(model: Path):
    """The torch dtype a checkpoint's weights are stored in (``config.json`` ``dtype`` / ``torch_dtype``; float32
    when absent or ``auto``)."""
    import torch

    cfg = json.loads((Path(model) / "config.json").read_text())
    name = cfg.get("dtype") or cfg.get("torch_dtype") or cfg.get("text_config", {}).get("dtype") or "float32"
    return (
        getattr(torch, name)
        if name != "auto" and isinstance(getattr(torch, name, None), torch.dtype)
        else torch.float32
    )


def _merge(backbone: str, base: str, adapter: str, out: str, image_kw: dict) -> dict:
    """Worker side of :func:`merge_adapter`: load in the checkpoint's dtype, merge, save. Returns facts of the run."""
    import torch
    from peft import PeftModel

    from mella.models.backbones import load_backbone, load_model

    dtype = checkpoint_dtype(Path(base))
    model = PeftModel.from_pretrained(load_model(backbone, base, dtype), adapter).merge_and_unload()
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(out)
    del model
    bb = load_backbone(backbone, base, **image_kw)
    bb.tokenizer.save_pretrained(out)
    bb.image_processor.save_pretrained(out)
    return {
        "pid": os.getpid(),
        "node": ray.get_runtime_context().get_node_id(),
        "dtype": str(dtype).removeprefix("torch."),
        "weights_gib": n_bytes / 2**30,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "torch_threads": torch.get_num_threads(),
    }


def merge_adapter(backbone: str, base: Path, adapter: Path, out: Path, cfg: TrainConfig) -> dict:
    """Merge a LoRA adapter into its base weights (PEFT ``merge_and_unload``) and save a full checkpoint
    (model + tokenizer + image processor) to ``out`` — in a Ray task, not on the driver.

    The task loads the base in the checkpoint's own dtype (:func:`checkpoint_dtype`: bf16 for Qwen2-VL-7B /
    InternVL2-8B, so ~15-16 GiB of weights, not ~30 GiB in fp32) in the CPU memory of a worker with
    ``cpus_per_worker`` CPUs (no GPU: merge_and_unload adds ``B·A·alpha/r`` to each LoRA-wrapped weight in place,
    so peak memory ≈ the weights + one module's delta). The driver only
    passes paths. Returns the task's facts: ``pid``, ``node``, ``dtype``, ``weights_gib``, ``peak_rss_gib``.
    Raises ``ray.exceptions.RayTaskError`` when the task fails (e.g. out of memory on the worker).
    """
    task = ray.remote(_merge).options(num_cpus=cfg.cpus_per_worker, max_retries=0)
    image_kw = dict(min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels, max_tiles=cfg.max_tiles)
    Path(out).mkdir(parents=True, exist_ok=True)
    return ray.get(task.remote(backbone, str(base), str(adapter), str(out), image_kw))


def train(cfg: TrainConfig) -> dict:
    """Train one language's adapter with ``cfg.mix``; write ``OUTPUT/adapter`` + metadata; return the summary."""
    out = Path(cfg.output).resolve()
    if cfg.mix == "two-stage":
        s1 = run_stage(cfg, ("d_ling",), cfg.model, out / "stage1", "stage1-ling")
        merged = out / "stage1_merged"
        s1["merge"] = merge_adapter(cfg.backbone, cfg.model, Path(s1["adapter"]), merged, cfg)
        summary = run_stage(cfg, ("d_know",), merged, out, "stage2-know")
        summary["stage1"] = s1
    else:
        summary = run_stage(cfg, MIX_SOURCES[cfg.mix], cfg.model, out, cfg.mix)
    meta = {
        "lang": cfg.lang,
        "backbone": cfg.backbone,
        "mix": cfg.mix,
        "seed": cfg.seed,
        "base_model": summary["base_model"],
        "original_model": str(cfg.model),
        "steps": summary["steps"],
        "data_snapshot": summary["snapshot"],
        "rows": summary["rows"],
        "held_out": summary["held_out"],
        "samples": summary["samples"],
        "final_loss": summary["final_loss"],
        "hyperparameters": cfg.model_dump(mode="json", exclude={"data", "output", "model"}),
    }
    if cfg.mix == "two-stage":
        meta["stage1"] = {
            k: summary["stage1"][k] for k in ("adapter", "steps", "snapshot", "rows", "final_loss", "merge")
        }
    artifacts.write_metadata(Path(summary["adapter"]), meta)
    return summary
