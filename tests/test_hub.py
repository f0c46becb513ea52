"""Model ids as users type them (``org/name[@rev]``), resolved through huggingface_hub's cache with
``HF_HUB_OFFLINE=1``: a temporary ``HF_HOME`` holds tiny checkpoints in the published layouts under their real
ids (tests/hf_cache.py). Real components: huggingface_hub's ``snapshot_download``, transformers' loaders and
processors, PEFT, the jobs as subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, job_env
from hf_cache import INTERNVL2, QWEN2_VL, available, hf_home, hub_env, offline_hub  # noqa: F401 - pytest fixtures requested by name

from mella.console import UsageError
from mella.models.hub import hub_cache_dir, resolve_model, snapshot_commit

PY = sys.executable
QWEN_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
    "chat_template.json",
}


def test_cache_layout_is_the_hubs(hf_home):
    repo = hf_home / "hub" / "models--Qwen--Qwen2-VL-7B-Instruct"
    commit = (repo / "refs" / "main").read_text()
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and commit == snapshot_commit(QWEN2_VL)
    snap = repo / "snapshots" / commit
    assert {p.name for p in snap.iterdir()} == QWEN_FILES
    for f in snap.iterdir():  # relative symlinks into blobs/<sha256>, as hf download writes them
        assert f.is_symlink() and not os.path.isabs(os.readlink(f)) and f.resolve().parent == repo / "blobs"


def test_transformers_finds_the_id_in_the_cache_by_itself(hf_home):
    """The layout is the hub's: transformers' own resolution (no mella code) finds the id offline (a fresh
    process: huggingface_hub reads HF_HOME when imported)."""
    code = (
        "from transformers import AutoConfig, AutoTokenizer; "
        f"print(AutoConfig.from_pretrained('{QWEN2_VL}').model_type, "
        f"AutoTokenizer.from_pretrained('{QWEN2_VL}').convert_tokens_to_ids('<|image_pad|>'))"
    )
    proc = subprocess.run(
        [PY, "-c", code], env=hub_env(hf_home, job_env()), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.split() == ["qwen2_vl", "151655"], proc.stderr[-2000:]


def test_make_tiny_model_hf_home_refuses_unknown_ids(tmp_path):
    proc = subprocess.run(
        [PY, str(ROOT / "jobs" / "make_tiny_model.py"), "--hf-home", str(tmp_path / "h"), "--ids", "nobody/nothing"],
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "no tiny writer" in proc.stderr and QWEN2_VL in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "h").exists()


def test_id_resolves_offline_to_the_snapshot(offline_hub):
    snap = resolve_model(QWEN2_VL)
    assert snap == offline_hub / "hub" / "models--Qwen--Qwen2-VL-7B-Instruct" / "snapshots" / snapshot_commit(QWEN2_VL)
    assert resolve_model(f"{QWEN2_VL}@main") == snap
    assert hub_cache_dir() == offline_hub / "hub"


def test_local_directory_is_returned_absolute(offline_hub, tmp_path, monkeypatch):
    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("ckpt") == tmp_path / "ckpt"


@pytest.mark.parametrize("name", ["Qwen/Qwen2-VL-2B-Instruct", f"{QWEN2_VL}@v9.9", "nobody/nothing"])
def test_absent_id_is_one_line_naming_the_cache_and_the_download(offline_hub, name):
    with pytest.raises(UsageError) as e:
        resolve_model(name, flag="--caption-model")
    msg = str(e.value)
    repo, _, rev = name.partition("@")
    assert "\n" not in msg and msg.startswith(f"--caption-model {name} ")
    assert str(offline_hub / "hub") in msg and f"hf download {repo}" in msg and "HF_HUB_OFFLINE=1" in msg
    assert (f"--revision {rev}" in msg) == bool(rev)


@pytest.mark.parametrize("name", ["no_such_dir", "a/b/c", "/abs/missing"])
def test_neither_directory_nor_id(offline_hub, name):
    with pytest.raises(UsageError, match="does not exist and is no hub id"):
        resolve_model(name)


def test_published_internvl_format_needs_the_converter(offline_hub, tmp_path):
    """A remote-code InternVL2 checkpoint (model_type internvl_chat) is converted, or refused in one line."""
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "internvl_chat", "architectures": ["InternVLChatModel"]})
    )
    try:
        import mella.models.internvl2  # noqa: F401 - the import is the check
    except ImportError:
        with pytest.raises(UsageError, match="published remote-code format"):
            resolve_model(tmp_path)
    else:
        pytest.skip("mella.models.internvl2 is present: its own tests cover the conversion")


def test_published_qwen2vl_loads_with_its_processor_and_lora_targets(offline_hub):
    """The published weight names load into transformers 5's classes with nothing missing or unexpected, the
    processor is the real Qwen2VLProcessor, and the LoRA regex picks exactly the LM projections."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    from mella.train.config import LORA_TARGETS

    snap = resolve_model(QWEN2_VL)
    model, info = Qwen2VLForConditionalGeneration.from_pretrained(snap, output_loading_info=True, dtype=torch.float32)
    assert not any(info.values()), info
    proc = AutoProcessor.from_pretrained(snap)
    assert type(proc).__name__ == "Qwen2VLProcessor" and proc.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    layers = model.config.text_config.num_hidden_layers
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=LORA_TARGETS["qwen2-vl"]))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft.named_parameters() if ".lora_A" in n}
    names = {n.split(".")[-1] for n in adapted}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(adapted) == 7 * layers and not any("visual" in n for n in adapted)


def test_train_job_with_an_absent_id_fails_in_one_line(hf_home, tmp_path):
    from conftest_train import write_corpus

    data = write_corpus(tmp_path / "corpus", "hu", n_know=3, n_ling=0)
    proc = subprocess.run(
        [
            PY,
            str(ROOT / "jobs" / "train.py"),
            "--data",
            str(data),
            "--lang",
            "hu",
            "--model",
            "Qwen/Qwen2-VL-2B-Instruct",
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=tmp_path,
        env=hub_env(hf_home, job_env()),
        capture_output=True,
        text=True,
        timeout=180,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert str(hf_home / "hub") in err[0] and "hf download Qwen/Qwen2-VL-2B-Instruct" in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repo_id", [QWEN2_VL, INTERNVL2])
def test_train_job_takes_a_hub_id_and_writes_an_adapter(hf_home, tmp_path, repo_id):
    """Acceptance: ``jobs/train.py --model <id>`` with only the HF cache (offline) writes an adapter; the run
    summary names the id, the backbone read from the checkpoint and Table 7's values for that backbone."""
    if not available(hf_home, repo_id):
        pytest.skip(f"no writer for {repo_id} in this build")
    from conftest_train import MAX_PIXELS, MIN_PIXELS, write_corpus

    data = write_corpus(tmp_path / "corpus", "hu", n_know=4, n_ling=0)
    out = tmp_path / "out"
    sets = [
        "max_steps=1",
        "batch_size=1",
        "cpus_per_worker=0.5",
        "n_test=1",
        "max_seq_length=512",
        "max_tiles=2",
        f"image_min_pixels={MIN_PIXELS}",
        f"image_max_pixels={MAX_PIXELS}",
    ]
    cmd = [
        PY,
        str(ROOT / "jobs" / "train.py"),
        "--data",
        str(data),
        "--lang",
        "hu",
        "--model",
        repo_id,
        "--output",
        str(out),
        "--mix",
        "know-only",
        *sets,
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=hub_env(hf_home, job_env()), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "adapter" / "mella_train.json").read_text())
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    hp = meta["hyperparameters"]
    assert hp["model_name"] == repo_id
    assert meta["original_model"].startswith(str(hf_home / "hub")) or repo_id == INTERNVL2
    want = {"qwen2-vl": (0.0, "linear", 0.0, 1), "internvl2": (0.03, "cosine", 0.01, 2)}[meta["backbone"]]
    assert (hp["warmup_ratio"], hp["lr_scheduler"], hp["weight_decay"], hp["grad_accum"]) == want


# ------------------------------------------------------------------ build_corpus: ids, categories, placement
MARIAN_ID = "mella-test/tiny-opus-mt-en-mul"  # a tiny Marian under a hub id (tests/test_dling.py's model)


def _build_corpus_job():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mella_job_build_corpus", ROOT / "jobs" / "build_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def with_marian(hf_home):
    from test_dling import tiny_marian

    from mella.models.hub import write_cache_entry

    write_cache_entry(hf_home / "hub", MARIAN_ID, tiny_marian)
    return hf_home


def _checked(job, argv):
    args, overrides = job.parse_args(argv)
    cfg = job.build_config(args, overrides)
    job.check_inputs(args, cfg)
    return cfg


def test_build_corpus_takes_ids_for_caption_and_mt(with_marian, offline_hub, tmp_path):
    job = _build_corpus_job()
    cfg = _checked(
        job,
        [
            "--seeds",
            str(ROOT / "demo_web" / "seeds.txt"),
            "--base-url",
            "http://127.0.0.1:9",
            "--allow-private-hosts",
            "127.0.0.1",
            "--output",
            str(tmp_path / "o"),
            "--d-ling",
            "--caption-model",
            QWEN2_VL,
            "--mt-model",
            MARIAN_ID,
            "--categoriser",
            "mllm",
        ],
    )
    d, hub = cfg.d_ling, offline_hub / "hub"
    assert Path(
        d.caption.mllm.model_path
    ) == hub / "models--Qwen--Qwen2-VL-7B-Instruct" / "snapshots" / snapshot_commit(QWEN2_VL)
    assert d.categorise.mllm.model_path == d.caption.mllm.model_path
    assert Path(d.translate.seq2seq.model_path).parent.parent.name == "models--mella-test--tiny-opus-mt-en-mul"
    cfg = _checked(
        job,
        [
            "--seeds",
            str(ROOT / "demo_web" / "seeds.txt"),
            "--base-url",
            "http://127.0.0.1:9",
            "--allow-private-hosts",
            "127.0.0.1",
            "--output",
            str(tmp_path / "o"),
            "--d-ling",
            "--caption-model",
            QWEN2_VL,
            "--mt-backend",
            "mllm",
        ],
    )
    assert cfg.d_ling.translate.mllm.model_path == d.caption.mllm.model_path
    with pytest.raises(UsageError, match="hf download facebook/nllb-200-distilled-600M"):
        _checked(
            job,
            [
                "--seeds",
                str(ROOT / "demo_web" / "seeds.txt"),
                "--base-url",
                "http://127.0.0.1:9",
                "--allow-private-hosts",
                "127.0.0.1",
                "--output",
                str(tmp_path / "o"),
                "--d-ling",
                "--caption-model",
                QWEN2_VL,
                "--mt-model",
                "facebook/nllb-200-distilled-600M",
            ],
        )


def test_mllm_categories_without_d_ling_and_gpu_placement(offline_hub, tmp_path):
    """``--categoriser mllm`` categorises D_know without ``--d-ling`` (paper 3.1: every image); ``--num-gpus``
    reaches every model stage that runs, and the job's placement line says where each runs."""
    from mella.plan import build_plan, model_placement, stage_names

    job = _build_corpus_job()
    seeds = [
        "--seeds",
        str(ROOT / "demo_web" / "seeds.txt"),
        "--base-url",
        "http://127.0.0.1:9",
        "--allow-private-hosts",
        "127.0.0.1",
        "--output",
        str(tmp_path / "o"),
    ]
    cfg = _checked(job, [*seeds, "--categoriser", "mllm", "--caption-model", QWEN2_VL, "--num-gpus", "1"])
    assert not cfg.d_ling.enabled and cfg.d_ling.categorise.backend == "mllm"
    plan = build_plan(cfg)
    cat = [s for step in plan for s in getattr(step, "stages", [step]) if s.name == "categorise"]
    assert type(cat[0]).__name__ == "MLLMCategoriser" and "caption" not in stage_names(plan)
    assert (cfg.filters.moderation.num_gpus, cfg.filters.semantic.num_gpus, cfg.d_ling.categorise.num_gpus) == (1, 1, 1)
    line = model_placement(cfg)
    assert "embed GPU (1/actor)" in line and "categorise[qwen2-vl] GPU (1/actor)" in line
    import onnxruntime as ort

    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert ("nsfw GPU (1/actor)" in line) == cuda and ("no CUDAExecutionProvider" in line) == (not cuda)
    cfg = _checked(job, seeds)
    assert model_placement(cfg) == "nsfw CPU, embed CPU, categorise[efficientnet-lite0] CPU"
    with pytest.raises(UsageError, match="--categoriser mllm needs --caption-model"):
        _checked(job, [*seeds, "--categoriser", "mllm"])


def test_serve_config_takes_an_id(offline_hub, tmp_path):
    """serve's ``model:`` may be an id: the replicas get the snapshot directory, the base model keeps the id's name."""
    from mella.serving.app import resolved
    from mella.serving.config import ServeConfig

    cfg = resolved(ServeConfig(model=QWEN2_VL))
    assert cfg.model == resolve_model(QWEN2_VL) and cfg.base_name == "Qwen2-VL-7B-Instruct"
    assert resolved(ServeConfig(model=f"{QWEN2_VL}@main")).base_name == "Qwen2-VL-7B-Instruct"
    assert resolved(ServeConfig(model=QWEN2_VL, base_model_name="base")).base_name == "base"
    with pytest.raises(UsageError, match="hf download Qwen/Qwen2-VL-72B-Instruct"):
        resolved(ServeConfig(model="Qwen/Qwen2-VL-72B-Instruct"))
