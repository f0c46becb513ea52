"""The job as users run it: `python jobs/build_corpus.py` (embedded demo), killed midway and rerun,
and `ray job submit` against a local `ray start --head` on loopback."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_WEB, ROOT, job_env
from helpers import build, pair_keys
from oracle import recall
from ports import free_port
from webserver import serve_directory

pytestmark = [pytest.mark.slow]
PY = sys.executable


def _job_cmd(url: str, out: Path) -> list[str]:
    return [
        PY,
        str(ROOT / "jobs" / "build_corpus.py"),
        "--seeds",
        str(DEMO_WEB / "seeds.txt"),
        "--base-url",
        url,
        "--output",
        str(out),
        "--allow-private-hosts",
        "127.0.0.1",
        "--num-cpus",
        "2",
        "-q",
        "crawl.politeness_delay_s=0",
        "ray.files_per_group=1",
    ]


def test_demo_default_command(tmp_path):
    """README command 1: no arguments → bundled demo web on 127.0.0.1 → ./mella_out."""
    proc = subprocess.run(
        [PY, str(ROOT / "jobs" / "build_corpus.py"), "--num-cpus", "2"],
        cwd=tmp_path,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "D_know total:" in proc.stdout and "langid" in proc.stdout
    out = tmp_path / "mella_out"
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["d_know_total"] > 50
    base = next(line.split()[2] for line in proc.stdout.splitlines() if line.startswith("demo web:"))
    r, missing = recall(str(out), str(DEMO_WEB / "PAIRS_expected.tsv"), base)
    assert r >= 0.95, missing


def test_kill_midway_then_rerun_equals_uninterrupted(tmp_path, ray_session):
    with serve_directory(DEMO_WEB) as url:
        # reference: an uninterrupted run (in-process)
        build(
            tmp_path / "ref",
            seeds=DEMO_WEB / "seeds.txt",
            base_url=url,
            ray={"files_per_group": 1},
            crawl={"read_timeout_s": 30.0, "total_timeout_s": 90.0},
            models=True,
        )  # the job's defaults: all filters
        reference = pair_keys(tmp_path / "ref")
        out = tmp_path / "out"
        proc = subprocess.Popen(
            _job_cmd(url, out),
            env=job_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        # kill once the image stage has closed at least one WARC shard (phase 1 is under way)
        while time.time() < deadline and not glob.glob(str(out / "warc" / "images-*.warc")):
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert not (out / "funnel.json").exists()
        proc = subprocess.run(_job_cmd(url, out), env=job_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert pair_keys(out) == reference
    ids = [
        r
        for p in glob.glob(str(out / "d_know" / "*.parquet"))
        for r in __import__("pyarrow.parquet").parquet.read_table(p, columns=["id"]).column("id").to_pylist()
    ]
    assert len(ids) == len(set(ids)), "duplicated rows after resume"
    assert not glob.glob(str(out / "**" / "*.tmp-*"), recursive=True)
    assert not glob.glob(str(out / "warc" / "*.open"))


def _head_flags(temp_dir: Path, dash: int) -> list[str]:
    """What a test adds to `ray start --head`: --block (torn down with its process group), loopback, free ports."""
    return [
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        f"--dashboard-port={dash}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


@contextlib.contextmanager
def _ray_head(start: list[str], env: dict, tmp_path: Path):
    """Run ``start`` (a `ray start --head` command line) plus :func:`_head_flags` in its own process group.

    Yields ``{"address": job API URL, "log": path}``. Torn down by signalling that group only — never
    `ray stop`, which would kill every Ray on the machine, including the test session's own.
    """
    import urllib.error
    import urllib.request

    dash = free_port()
    temp_dir = Path("/tmp") / f"rayhead-{os.getpid()}-{dash}"
    log = open(tmp_path / "ray_head.log", "w")
    proc = subprocess.Popen(
        start + _head_flags(temp_dir, dash), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    try:
        while True:
            try:
                urllib.request.urlopen(address + "/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:  # it answers (401 with token authentication): up
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("ray head did not start: " + (tmp_path / "ray_head.log").read_text()[-3000:])
                time.sleep(1)
        yield {"address": address, "log": tmp_path / "ray_head.log"}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=60)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()


def _submit(cmd, env: dict) -> subprocess.CompletedProcess:
    for _attempt in range(12):  # the head's job agent registers a few seconds after the dashboard answers
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT, shell=isinstance(cmd, str)
        )
        if "No available agent" not in proc.stdout + proc.stderr:
            return proc
        time.sleep(5)
    return proc


@pytest.fixture()
def ray_head(tmp_path):
    """`ray start --head` on loopback without token authentication (RAY_AUTH_MODE=disabled)."""
    env = job_env()
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    with _ray_head([str(Path(PY).parent / "ray"), "start", "--head", "--dashboard-host=127.0.0.1"], env, tmp_path) as h:
        yield {**h, "env": env}


def readme_cluster_commands() -> list[str]:
    """The command lines of the README's "Run on a Ray cluster" block (comments stripped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Run on a Ray cluster", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_cluster_commands_run_as_written(tmp_path):
    """The README's cluster lines, run in order against a local `ray start --head` with token authentication.

    Changed for a shared test machine only: `ray start` gets --block, free ports and its own temp dir (the
    job API's port replaces 8265 in `ray job submit`); the output goes to tmp_path and the demo web to a free
    port; `ray stop` (it would stop every Ray of the machine) is replaced by ending the head's process group.
    """
    import shlex

    lines = readme_cluster_commands()
    assert [shlex.split(x)[:2] for x in lines] == [
        ["export", "RAY_AUTH_MODE=token"],
        ["ray", "get-auth-token"],
        ["ray", "start"],
        ["ray", "job"],
        ["ray", "stop"],
    ], lines
    env = {**job_env(), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_AUTH_MODE", None)
    key, value = shlex.split(lines[0])[1].split("=", 1)
    env[key] = value
    gen = subprocess.run(lines[1], shell=True, env=env, capture_output=True, text=True, timeout=120)
    assert gen.returncode == 0, gen.stderr
    ray_bin = str(Path(PY).parent / "ray")
    with _ray_head([ray_bin, *shlex.split(lines[2])[1:]], env, tmp_path) as head:
        out = tmp_path / "mella_cluster"
        submit = (
            lines[3]
            .replace("http://127.0.0.1:8265", head["address"])
            .replace('"$PWD/mella_cluster"', str(out))
            .replace("ray job submit", f"{ray_bin} job submit", 1)
            + f" --demo-port {free_port()}"
        )
        assert str(out) in submit and head["address"] in submit
        unauthenticated = subprocess.run(
            f"{ray_bin} job list --address {head['address']}",
            shell=True,
            cwd=ROOT,
            env={**env, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert unauthenticated.returncode != 0  # token authentication is on: a client without it is refused
        proc = _submit(submit, env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert json.loads((out / "funnel.json").read_text())["d_know_total"] > 50
    assert (out / "report" / "index.html").is_file() and (out / "README.md").is_file()


def test_ray_job_submit_against_local_head(ray_head, tmp_path):
    out = tmp_path / "out"
    with serve_directory(DEMO_WEB) as url:
        cmd = [
            str(Path(PY).parent / "ray"),
            "job",
            "submit",
            "--address",
            ray_head["address"],
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "jobs/build_corpus.py",
            "--seeds",
            "demo_web/seeds.txt",
            "--base-url",
            url,
            "--output",
            str(out),
            "--allow-private-hosts",
            "127.0.0.1",
            "crawl.politeness_delay_s=0",
        ]
        proc = _submit(cmd, ray_head["env"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["d_know_total"] > 50
    r, missing = recall(str(out), str(DEMO_WEB / "PAIRS_expected.tsv"), str(url))
    assert r >= 0.95, missing
