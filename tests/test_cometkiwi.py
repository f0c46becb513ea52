"""COMETKiwi (mella.models.cometkiwi) scores exactly as unbabel-comet does, on a tiny random checkpoint in the
published Unbabel/wmt22-cometkiwi-da layout, its encoder (microsoft/infoxlm-large: config + a sentencepiece
tokenizer trained offline) in a hub cache with HF_HUB_OFFLINE=1. unbabel-comet runs in its own environment
(tests/comet_env.py: numpy<2, transformers 4), built once from PyPI."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest

from mella.models import cometkiwi as ck

PAIRS = [
    {"src": "A dog runs across the green park.", "mt": "Mbwa anakimbia katika bustani."},
    {"src": "Two children play football on the beach at sunset.", "mt": "Hai đứa trẻ chơi bóng đá trên bãi biển."},
    {"src": "A red car.", "mt": ""},
    {"src": "", "mt": "สุนัขวิ่งข้ามสวนสีเขียว"},
    # both bodies over max_positions - 5 = 33 tokens together: COMET's pair truncation path
    {"src": "The market sells fresh fruit and vegetables. " * 4, "mt": "Un chien court dans le parc. " * 5},
    {"src": "Mountains covered in snow behind a quiet lake. " * 9, "mt": "개가 초록 공원을 가로질러 달린다."},
    {"src": "A woman reads a book under a tree.", "mt": "Una mujer lee un libro bajo un árbol. ɮ ⛵ 𝔛"},
]
VARIANTS = {  # the published hparams (sparsemax_patch: softmax in unbabel-comet >= 2.2.4), and the other paths
    "published": {},
    "sparsemax_layer_norm": {"layer_transformation": "sparsemax", "layer_norm": True, "seed": 1},
    "softmax_final_sigmoid": {"layer_transformation": "softmax", "final_activation": "Sigmoid", "seed": 2},
}


def cache_entry(hub: Path, repo_id: str, writer) -> Path:
    """A repository in huggingface_hub's cache layout: refs/main names a 40-hex commit, files under
    snapshots/<commit>/ (what snapshot_download(local_files_only=True) reads)."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    writer(repo / "snapshots" / commit)
    return repo / "snapshots" / commit


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    cache_entry(home / "hub", ck.ENCODER, ck.write_tiny_infoxlm)
    cache_entry(home / "hub", ck.PUBLISHED, ck.write_tiny_published)
    models = {}
    for name, over in VARIANTS.items():
        over = dict(over)
        models[name] = ck.write_tiny_published(home / "models" / name, seed=over.pop("seed", 0), **over)
    old = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    os.environ.pop("HF_HUB_CACHE", None)
    yield home, models
    for k, v in old.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


REFERENCE = textwrap.dedent("""
    import json, sys
    from comet import load_from_checkpoint
    pairs, ckpts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    out = {}
    for name, path in ckpts.items():
        model = load_from_checkpoint(path)
        ids = [model.prepare_sample([p], stage="predict")[0]["input_ids"][0].tolist() for p in pairs]
        pred = model.predict(pairs, batch_size=3, gpus=0, progress_bar=False)
        out[name] = {"scores": [float(s) for s in pred.scores], "ids": ids}
    print("RESULT " + json.dumps(out))
""")


def reference_scores(home: Path, models: dict[str, Path]) -> dict:
    from comet_env import comet_python

    try:
        py = comet_python()
    except (RuntimeError, subprocess.SubprocessError) as e:
        if not pypi_reachable():
            pytest.skip(f"PyPI unreachable: cannot build the unbabel-comet environment ({e})")
        raise
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    ckpts = {n: str(d / "checkpoints" / "model.ckpt") for n, d in models.items()}
    p = subprocess.run(
        [str(py), "-c", REFERENCE, json.dumps(PAIRS), json.dumps(ckpts)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    assert p.returncode == 0 and line, p.stderr[-3000:]
    return json.loads(line[0][len("RESULT ") :])


def test_scores_equal_unbabel_comet(hf_home):
    home, models = hf_home
    ref = reference_scores(home, models)
    for name, d in models.items():
        model = ck.COMETKiwi.load(d)
        ids = model.tokenize(PAIRS)
        mine = [row[mask].tolist() for row, mask in zip(ids["input_ids"], ids["attention_mask"])]
        assert mine == ref[name]["ids"], name  # tokenization, concatenation and truncation token for token
        assert max(len(r) for r in mine) == model.max_positions  # the truncation path ran
        scores = model.score(PAIRS, batch_size=2)
        assert scores == pytest.approx(ref[name]["scores"], abs=2e-5), name
        assert max(scores) - min(scores) > 0.05, name  # the pairs are told apart: the test can fail


def test_load_by_dir_ckpt_and_hub_id(hf_home):
    _, models = hf_home
    a = ck.COMETKiwi.load(models["published"]).score(PAIRS[:3])
    b = ck.COMETKiwi.load(models["published"] / "checkpoints" / "model.ckpt").score(PAIRS[:3])
    c = ck.COMETKiwi.load(ck.PUBLISHED).score(PAIRS[:3])  # hub id, from the offline cache
    assert a == b == c


@pytest.mark.usefixtures("hf_home")
def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoints/model.ckpt"):
        ck.COMETKiwi.load(tmp_path)
    bad = ck.write_tiny_published(tmp_path / "bad", hidden_sizes=[7])
    (bad / "hparams.yaml").write_text((bad / "hparams.yaml").read_text().replace("- 7", "- 8"))
    import torch

    sd = torch.load(bad / "checkpoints" / "model.ckpt", weights_only=True)
    sd["hyper_parameters"]["hidden_sizes"] = [8]
    torch.save(sd, bad / "checkpoints" / "model.ckpt")
    with pytest.raises(ValueError, match="not a COMETKiwi state_dict"):
        ck.COMETKiwi.load(bad)  # estimator shapes differ
    sd["hyper_parameters"]["hidden_sizes"] = [7]
    del sd["state_dict"]["layerwise_attention.gamma"]
    torch.save(sd, bad / "checkpoints" / "model.ckpt")
    with pytest.raises(ValueError, match="missing.*layerwise_attention.gamma"):
        ck.COMETKiwi.load(bad)
    ref = ck.write_tiny_published(tmp_path / "ref")  # then made a reference-based COMET (regression_metric)
    sd = torch.load(ref / "checkpoints" / "model.ckpt", weights_only=True)
    sd["hyper_parameters"]["class_identifier"] = "regression_metric"
    torch.save(sd, ref / "checkpoints" / "model.ckpt")
    with pytest.raises(ValueError, match="only unified_metric"):
        ck.COMETKiwi.load(ref)


def test_sparsemax_projects_onto_the_simplex():
    import torch

    z = torch.tensor([0.0, 0.5, 1.0])
    assert ck.sparsemax(z).tolist() == pytest.approx([0.0, 0.25, 0.75])
    assert ck.sparsemax(torch.tensor([3.0, 0.0, -1.0])).tolist() == [1.0, 0.0, 0.0]
