"""The job as users run it: `python jobs/build_corpus.py` (embedded demo), killed midway and rerun,
and `ray job submit` against a local `ray start --head` on loopback."""

from __future__ import annotations

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
    return [PY, str(ROOT / "jobs" / "build_corpus.py"), "--seeds", str(DEMO_WEB / "seeds.txt"), "--base-url", url,
            "--output", str(out), "--allow-private-hosts", "127.0.0.1", "--num-cpus", "2", "-q",
            "crawl.politeness_delay_s=0", "ray.files_per_group=1"]


def test_demo_default_command(tmp_path):
    """README command 1: no arguments → bundled demo web on 127.0.0.1 → ./mella_out."""
    proc = subprocess.run([PY, str(ROOT / "jobs" / "build_corpus.py"), "--num-cpus", "2"], cwd=tmp_path, env=job_env(),
                          capture_output=True, text=True, timeout=600)
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
        build(tmp_path / "ref", seeds=DEMO_WEB / "seeds.txt", base_url=url, ray={"files_per_group": 1},
              crawl={"read_timeout_s": 30.0, "total_timeout_s": 90.0}, models=True)  # the job's defaults: all filters
        reference = pair_keys(tmp_path / "ref")
        out = tmp_path / "out"
        proc = subprocess.Popen(_job_cmd(url, out), env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
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
    ids = [r for p in glob.glob(str(out / "d_know" / "*.parquet")) for r in __import__("pyarrow.parquet").parquet.read_table(p, columns=["id"]).column("id").to_pylist()]
    assert len(ids) == len(set(ids)), "duplicated rows after resume"
    assert not glob.glob(str(out / "**" / "*.tmp-*"), recursive=True)
    assert not glob.glob(str(out / "warc" / "*.open"))




@pytest.fixture()
def ray_head(tmp_path):
    """`ray start --head --block` bound to 127.0.0.1 (job server on a free port), in its own process group.

    Torn down by signalling that group only — never `ray stop`, which would kill every Ray on the
    machine, including the test session's own.
    """
    import urllib.request

    env = job_env()
    env.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    gcs, dash = free_port(), free_port()
    temp_dir = Path("/tmp") / f"rayhead-{os.getpid()}-{gcs}"
    cmd = [str(Path(PY).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
           "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
           f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    log = open(tmp_path / "ray_head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(address + "/api/version", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.close()
                pytest.fail("ray head did not start: " + (tmp_path / "ray_head.log").read_text()[-3000:])
            time.sleep(1)
    try:
        yield {"address": address, "env": env, "log": tmp_path / "ray_head.log"}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=60)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()


def test_ray_job_submit_against_local_head(ray_head, tmp_path):
    out = tmp_path / "out"
    with serve_directory(DEMO_WEB) as url:
        cmd = [str(Path(PY).parent / "ray"), "job", "submit", "--address", ray_head["address"], "--working-dir", str(ROOT),
               "--", "python", "jobs/build_corpus.py", "--seeds", "demo_web/seeds.txt", "--base-url", url,
               "--output", str(out), "--allow-private-hosts", "127.0.0.1", "crawl.politeness_delay_s=0"]
        for _attempt in range(12):  # the head's job agent registers a few seconds after the dashboard answers
            proc = subprocess.run(cmd, env=ray_head["env"], capture_output=True, text=True, timeout=900, cwd=ROOT)
            if "No available agent" not in proc.stdout + proc.stderr:
                break
            time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["d_know_total"] > 50
    r, missing = recall(str(out), str(DEMO_WEB / "PAIRS_expected.tsv"), str(url))
    assert r >= 0.95, missing
