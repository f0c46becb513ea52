"""Bad invocations of the jobs fail cleanly and early (issue 14): exit code 2, at most 3 lines on stderr naming
the problem, no traceback (unless --debug), no output folder, and before Ray or the demo web server starts.

Every job runs as a user runs it (a subprocess). ``RAY_ADDRESS`` points at a closed port: a job that reached
``ray.init`` would fail with a Ray connection error instead of the expected message, so each test also proves
the check ran before Ray.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import DEMO_WEB, ROOT, job_env
from ports import free_port

from mella.schema import record_id, to_table

PY = sys.executable


def _env() -> dict:
    return {**job_env(), "RAY_ADDRESS": "127.0.0.1:9"}  # discard port: nothing listens; ray.init would fail loudly


def _run(job: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, str(ROOT / "jobs" / job), *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=180
    )


def _assert_clean_failure(proc: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert 1 <= len(err) <= 3, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "demo web:" not in proc.stdout  # the demo server never started
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)
    assert not out.exists(), f"{out} was created"


def _corpus(root: Path) -> Path:
    """A one-row D_know corpus (hu) in the build_corpus layout."""
    row = {
        "id": record_id("hu", "http://x.test/p", "http://x.test/i.png"),
        "lang": "hu",
        "page_url": "http://x.test/p",
        "image_url": "http://x.test/i.png",
        "alt_text": "Egy kép",
        "source": "crawl",
    }
    (root / "d_know").mkdir(parents=True)
    pq.write_table(to_table([row]), root / "d_know" / "part-0.parquet")
    return root


def test_missing_seeds_file(tmp_path):
    out = tmp_path / "out"
    proc = _run("build_corpus.py", "--seeds", str(tmp_path / "nope.txt"), "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, "nope.txt does not exist", "--seeds")


def test_malformed_seed_url(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("https://example.org/ok\nhttp://exa mple.org/\n")
    out = tmp_path / "out"
    proc = _run("build_corpus.py", "--seeds", str(seeds), "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, "'http://exa mple.org/' is not a valid http(s) URL")


def test_seed_that_is_not_a_url(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("htp:/example.org\n")
    out = tmp_path / "out"
    proc = _run("build_corpus.py", "--seeds", str(seeds), "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, "is not an http(s) URL")


def test_warc_glob_matching_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _run("build_corpus.py", "--warc", str(tmp_path / "crawl" / "*.warc.gz"), "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, "no WARC file matches")


def test_unknown_language(tmp_path):
    out = tmp_path / "out"
    proc = _run(
        "build_corpus.py",
        "--seeds",
        str(DEMO_WEB / "seeds.txt"),
        "--base-url",
        "http://127.0.0.1:1",
        "--langs",
        "hu,xx",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "xx", "Add a language")


def test_d_ling_without_caption_model(tmp_path):
    out = tmp_path / "out"
    # a free --demo-port: the check under test must not depend on the default demo port being free
    proc = _run("build_corpus.py", "--d-ling", "--demo-port", str(free_port()), "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, "--d-ling needs --caption-model")


def test_d_ling_caption_model_missing(tmp_path):
    out = tmp_path / "out"
    proc = _run(
        "build_corpus.py",
        "--d-ling",
        "--caption-model",
        str(tmp_path / "qwen"),
        "--mt-backend",
        "mllm",
        "--demo-port",
        str(free_port()),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "--caption-model", "does not exist")


def test_unknown_flag(tmp_path):
    out = tmp_path / "out"
    proc = _run("build_corpus.py", "--bogus", "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, "unrecognized arguments: --bogus")


def test_stage_flag_lands_in_the_config_and_the_plan(tmp_path):
    """``--stage MODULE:CLASS@AFTER`` (issue 11) becomes ``stages.extra`` and a plan step right after AFTER."""
    import build_corpus

    from mella.plan import build_plan, stage_names

    args, rest = build_corpus.parse_args(
        [
            "--seeds",
            str(DEMO_WEB / "seeds.txt"),
            "--output",
            str(tmp_path / "out"),
            "--stage",
            "test_user_stage:AspectRatioFilter@resolution",
        ]
    )
    cfg = build_corpus.build_config(args, rest)
    assert cfg.stages.extra == ["test_user_stage:AspectRatioFilter@resolution"]
    plan = build_plan(cfg)
    names = stage_names(plan)
    assert names.index("aspect_ratio") == names.index("resolution") + 1
    assert [s.name for s in plan].index("aspect_ratio") == [s.name for s in plan].index("ImageStages") + 1


def test_stage_flag_unknown_module(tmp_path):
    out = tmp_path / "out"
    proc = _run(
        "build_corpus.py",
        "--seeds",
        str(DEMO_WEB / "seeds.txt"),
        "--base-url",
        "http://127.0.0.1:1",
        "--stage",
        "nosuch.mod:X",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "nosuch.mod", "--stage")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_plan_that_cannot_be_scheduled_is_refused_before_ray(tmp_path):
    """``ray.image_pool.pool_size=4`` on 2 CPUs: four image actors (4 x 0.25) and the model pool (1) would hold every
    CPU and the extract tasks never start. A local Ray's CPUs are known before it starts: one line naming the pool
    to shrink, exit 2 (no RAY_ADDRESS here: a check that let the plan through would start a local Ray and build)."""
    out = tmp_path / "out"
    env = {k: v for k, v in job_env().items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [
            PY,
            str(ROOT / "jobs" / "build_corpus.py"),
            "--seeds",
            str(DEMO_WEB / "seeds.txt"),
            "--base-url",
            "http://127.0.0.1:1",
            "--output",
            str(out),
            "--num-cpus",
            "2",
            "ray.image_pool.pool_size=4",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    _assert_clean_failure(
        proc, out, "cannot run", "needs 2.5 CPUs", "ImageStages 4 x 0.25", "shrink ray.image_pool.pool_size to 2"
    )
    assert len(proc.stderr.strip().splitlines()) == 1


def test_demo_port_busy(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = tmp_path / "out"
        proc = _run("build_corpus.py", "--demo-port", str(port), "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, f"port {port}", "--demo-port")


def test_train_model_path_missing(tmp_path):
    data = _corpus(tmp_path / "corpus")
    out = tmp_path / "train"
    proc = _run(
        "train.py",
        "--data",
        str(data),
        "--lang",
        "hu",
        "--model",
        str(tmp_path / "nonexistent"),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "--model", "does not exist", "make_tiny_model.py")


def test_train_model_dir_without_config(tmp_path):
    data = _corpus(tmp_path / "corpus")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "train"
    proc = _run(
        "train.py",
        "--data",
        str(data),
        "--lang",
        "hu",
        "--backbone",
        "qwen2-vl",
        "--model",
        str(tmp_path / "empty"),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "holds no config.json")


def test_train_model_dir_without_weights(tmp_path):
    """A checkpoint folder with its config.json but no weights (an interrupted download) fails before Ray."""
    data = _corpus(tmp_path / "corpus")
    model = tmp_path / "qwen"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (model / "tokenizer.json").write_text("{}")
    out = tmp_path / "train"
    proc = _run(
        "train.py", "--data", str(data), "--lang", "hu", "--model", str(model), "--output", str(out), cwd=tmp_path
    )
    _assert_clean_failure(proc, out, "has a config.json but no weights", "*.safetensors")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_evaluate_model_dir_without_weights(tmp_path):
    data = _corpus(tmp_path / "corpus")
    model = tmp_path / "qwen"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_vl"}')
    out = tmp_path / "eval"
    proc = _run(
        "evaluate.py", "--data", str(data), "--langs", "hu", "--model", str(model), "--output", str(out), cwd=tmp_path
    )
    _assert_clean_failure(proc, out, "--model", "no weights")


def test_model_hub_id_absent_from_the_cache_is_one_line(tmp_path):
    """``--model Qwen/Qwen2-VL-2B-Instruct`` not in the (offline) HF cache: one line naming the cache and the
    download command, not 4 retries and 430 lines."""
    data = _corpus(tmp_path / "corpus")
    out = tmp_path / "train"
    env = {**_env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
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
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    _assert_clean_failure(
        proc,
        out,
        "not in the Hugging Face cache",
        str(tmp_path / "hf" / "hub"),
        "hf download Qwen/Qwen2-VL-2B-Instruct",
    )
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "weights",
    ["model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json"],
)
def test_model_dir_with_weights_passes(tmp_path, weights):
    from mella.preflight import check_model_dir

    (tmp_path / "config.json").write_text('{"model_type": "qwen2_vl"}')
    (tmp_path / weights).write_bytes(b"x")
    assert check_model_dir(tmp_path, "--model") == {"model_type": "qwen2_vl"}


def test_train_language_not_in_corpus(tmp_path):
    data = _corpus(tmp_path / "corpus")
    out = tmp_path / "train"
    proc = _run(
        "train.py",
        "--data",
        str(data),
        "--lang",
        "ko",
        "--model",
        str(tmp_path / "m"),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "no rows for --lang ko", "languages present: hu")


def test_train_bad_setting(tmp_path):
    data = _corpus(tmp_path / "corpus")
    out = tmp_path / "train"
    proc = _run(
        "train.py",
        "--data",
        str(data),
        "--lang",
        "hu",
        "--model",
        str(tmp_path / "m"),
        "--output",
        str(out),
        "grad_accum=0",
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "grad_accum")


def test_evaluate_bad_endpoint(tmp_path):
    data = _corpus(tmp_path / "corpus")
    out = tmp_path / "eval"
    proc = _run(
        "evaluate.py",
        "--data",
        str(data),
        "--langs",
        "hu",
        "--endpoint",
        "localhost:8000",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "--endpoint", "not a valid http(s) URL")


def test_make_tiny_model_unknown_backbone(tmp_path):
    out = tmp_path / "m"
    proc = _run("make_tiny_model.py", "--backbone", "llava", "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, "invalid choice: 'llava'")


def test_debug_shows_the_traceback(tmp_path):
    out = tmp_path / "out"
    proc = _run("build_corpus.py", "--seeds", str(tmp_path / "nope.txt"), "--output", str(out), "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UsageError" in proc.stderr
    assert not out.exists()


JOBS = sorted(p.name for p in (ROOT / "jobs").glob("*.py") if p.name != "_bootstrap.py")


def test_the_job_list_is_the_folder():
    assert {"build_corpus.py", "train.py", "evaluate.py", "inspect_corpus.py"} <= set(JOBS)


@pytest.mark.parametrize("job", JOBS)
def test_every_job_shares_the_bootstrap(job):
    """Issue 11: every job puts platform/ on sys.path through jobs/_bootstrap.py, and nothing else does it;
    and every job parses with the one-line-error parser and runs under console.run_job (issue 14)."""
    text = (ROOT / "jobs" / job).read_text(encoding="utf-8")
    assert "from _bootstrap import" in text and "sys.path.insert" not in text
    assert "console.ArgumentParser(" in text and "argparse.ArgumentParser(" not in text
    assert "console.run_job(main)" in text


@pytest.mark.parametrize("job", JOBS)
def test_every_job_refuses_an_unknown_flag_in_one_line(job, tmp_path):
    out = tmp_path / "out"
    proc = _run(job, "--bogus", "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, f"{job}: error: ")
    # argparse names missing required arguments before unknown ones
    assert "unrecognized arguments: --bogus" in proc.stderr or "arguments are required" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ the eight bad invocations of a new user
def _bad_invocation(case: str, tmp: Path) -> tuple[str, list[str], tuple[str, ...]]:
    """``(job, args, needles)`` of one bad invocation (files it needs are made under ``tmp``)."""
    seeds = tmp / "seeds.txt"
    if case == "missing_seeds_file":
        return "build_corpus.py", ["--seeds", str(tmp / "nope.txt")], ("nope.txt does not exist",)
    if case == "malformed_url":
        seeds.write_text("https://example.org/ok\nhttp://exa mple.org/\n")
        return "build_corpus.py", ["--seeds", str(seeds)], ("is not a valid http(s) URL",)
    if case == "warc_glob_matching_nothing":
        return "build_corpus.py", ["--warc", str(tmp / "crawl" / "*.warc.gz")], ("no WARC file matches",)
    if case == "unknown_language":
        seeds.write_text("https://example.org/\n")
        return "build_corpus.py", ["--seeds", str(seeds), "--langs", "hu,xx"], ("xx", "Add a language")
    if case == "unknown_flag":
        return "build_corpus.py", ["--seeds", str(seeds), "--bogus"], ("unrecognized arguments: --bogus",)
    if case == "missing_config_file":
        return "build_corpus.py", ["--config", str(tmp / "missing.yaml")], ("--config", "missing.yaml does not exist")
    if case == "private_only_seeds":
        seeds.write_text("http://127.0.0.1:8080/\nhttp://10.1.2.3/page.html\n")
        return "build_corpus.py", ["--seeds", str(seeds)], ("SSRF guard", "--allow-private-hosts")
    if case == "missing_model":
        data = _corpus(tmp / "corpus")
        return (
            "train.py",
            ["--data", str(data), "--lang", "hu", "--model", str(tmp / "no-model")],
            ("--model", "does not exist"),
        )
    raise AssertionError(case)


EIGHT = [
    "missing_seeds_file",
    "malformed_url",
    "warc_glob_matching_nothing",
    "unknown_language",
    "unknown_flag",
    "missing_config_file",
    "private_only_seeds",
    "missing_model",
]


@pytest.mark.parametrize("case", EIGHT)
def test_bad_invocation_is_one_line_exit_2_no_output(case, tmp_path):
    """Each: one line on stderr, exit 2, no traceback, no output folder, before Ray (RAY_ADDRESS is a dead port)."""
    job, args, needles = _bad_invocation(case, tmp_path)
    out = tmp_path / "out"
    proc = _run(job, *args, "--output", str(out), cwd=tmp_path)
    _assert_clean_failure(proc, out, *needles)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ------------------------------------------------------------------ one grammar
def _print_config_args(job: str, tmp: Path) -> list[str]:
    data = tmp / "corpus"
    if not data.exists():
        _corpus(data)
    return {
        "build_corpus.py": [
            "--seeds",
            str(DEMO_WEB / "seeds.txt"),
            "--base-url",
            "http://127.0.0.1:1",
            "--output",
            str(tmp / "o"),
            "--langs",
            "hu,cs",
            "crawl.max_depth=2",
        ],
        "train.py": [
            "--data",
            str(data),
            "--lang",
            "hu",
            "--backbone",
            "qwen2-vl",
            "--model",
            str(tmp / "m"),
            "--output",
            str(tmp / "o"),
            "lr=2e-5",
            "max_steps=7",
        ],
        "evaluate.py": [
            "--data",
            str(data),
            "--langs",
            "hu,ko",
            "--endpoint",
            "http://127.0.0.1:1",
            "--output",
            str(tmp / "o"),
            "--seeds",
            "0,1",
            "n_test=5",
        ],
        "e2e.py": ["--data", str(data), "--model", str(tmp / "m"), "--output", str(tmp / "o"), "--langs", "hu,cs"],
        "inspect_corpus.py": [str(data)],
        "corpus_stats.py": ["--data", str(data)],
        "make_tiny_model.py": ["--output", str(tmp / "m")],
        "reproduce.py": ["--config", str(ROOT / "experiments" / "paper.yaml"), "--langs", "hu,cs", "seeds=[0,1]"],
    }.get(job, [])


@pytest.mark.parametrize("job", JOBS)
def test_every_job_prints_its_effective_config(job, tmp_path):
    import yaml

    proc = _run(job, *_print_config_args(job, tmp_path), "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    settings = yaml.safe_load(proc.stdout)
    assert isinstance(settings, dict) and settings, proc.stdout
    assert not (tmp_path / "o").exists()
    expect = {
        "build_corpus.py": lambda s: s["langs"] == ["hu", "cs"] and s["crawl"]["max_depth"] == 2,
        "train.py": lambda s: s["lr"] == 2e-5 and s["max_steps"] == 7,
        "evaluate.py": lambda s: s["langs"] == ["hu", "ko"] and s["seeds"] == [0, 1] and s["n_test"] == 5,
        "e2e.py": lambda s: s["langs"] == ["hu", "cs"],
        "reproduce.py": lambda s: s["langs"] == ["hu", "cs"] and s["seeds"] == [0, 1],
    }
    assert expect.get(job, lambda s: True)(settings), settings


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_configurations_print(example, tmp_path):
    import yaml

    proc = _run("build_corpus.py", "--config", str(ROOT / "examples" / example), "--print-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    settings = yaml.safe_load(proc.stdout)
    assert settings["seeds"] or settings["warc"]
    assert "demo_web" not in str(settings["seeds"])  # the file's input, not the bundled demo


def test_examples_cover_paper_scale_cluster_and_common_crawl():
    assert {"paper_scale.yaml", "cluster.yaml", "common_crawl.yaml"} <= {
        p.name for p in (ROOT / "examples").glob("*.yaml")
    }


@pytest.mark.parametrize("job", ["build_corpus.py", "train.py", "evaluate.py"])
def test_set_flag_names_the_key_value_form(job, tmp_path):
    out = tmp_path / "o"
    proc = _run(job, *_print_config_args(job, tmp_path), "--set", "lr=1", cwd=tmp_path)
    _assert_clean_failure(proc, out, "--set is not a flag", "key=value")


def test_space_separated_list_names_the_comma_form(tmp_path):
    data = _corpus(tmp_path / "corpus")
    out = tmp_path / "o"
    proc = _run(
        "evaluate.py",
        "--data",
        str(data),
        "--langs",
        "hu",
        "ko",
        "--endpoint",
        "http://127.0.0.1:1",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    _assert_clean_failure(proc, out, "unrecognized arguments: ko", "--langs hu,ko")
