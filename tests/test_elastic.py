"""Elasticity on one machine (issue 7): build_corpus and training on a multi-node Ray cluster whose
worker nodes come and go.

``ray.cluster_utils.Cluster`` starts a head and worker raylets on this machine, all bound to
127.0.0.1 with free ports: a real multi-node Ray cluster (one raylet, object store and worker pool
per node). The head has 0 CPUs, as on a KubeRay head (``num-cpus: "0"``): it hosts the drivers and
the actors Ray pins to a driver's node, all work runs on worker nodes. The single-node reference
run is the same job on one worker node. Each job is its own driver
process, ``python jobs/build_corpus.py`` / ``python jobs/train.py`` with ``RAY_ADDRESS`` set, as
``ray job submit`` starts it. The test process never joins the cluster: it adds and kills nodes
(``Cluster.add_node`` / ``remove_node``) and reads Ray's state API over the dashboard's HTTP port.

* build_corpus on the demo web, served by a web server that can hold image requests: while it
  holds them the job is parked in image fetch, with fetch-actor tasks in flight, so nodes change at
  a known point of the job and the job cannot end first. (a) A worker node added then receives
  work (tasks of the job ran on its node id, from the state API). (b) The only worker node, which
  runs all of the job's work, is killed after a second one joined: fetch actors die mid-batch and
  the blocks in its object store are lost; the job does not fail (actors restart on the other node,
  their batches are retried, lost blocks are rebuilt from lineage). In both cases D_know equals
  the single-node run's row for row (a multiset, so a retried task must not have added rows).
* training: once Ray Train has committed the first checkpoint, its worker processes are frozen
  (SIGSTOP, so the run cannot end first) and the node hosting them is killed; Ray Train
  (``FailureConfig``) restarts the worker group on the other node, which resumes from that
  checkpoint and finishes.

Environment of everything the module starts (cluster processes and drivers inherit it):

* ``RAY_TMPDIR``: a private directory. ``Cluster`` records its address in
  ``$RAY_TMPDIR/ray/ray_current_cluster``, and a plain ``ray.init()`` joins the cluster recorded
  there: in the shared ``/tmp/ray`` it would pull other processes on this machine into this cluster.
* ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: with it Ray keeps 127.0.0.1 as the address of a local
  node instead of rewriting it to the host's network address (read when ``ray`` is imported, so it
  only acts on the processes started here, which is why drivers are separate processes).
* ``RAY_AUTH_MODE``: the value this process already runs with. A local ``ray.init`` (earlier test
  modules) turns token authentication on for the whole process and its children (Ray >= 2.59); a
  driver or node with another mode than the rest rejects their calls ("Missing authorization
  header"), and the GCS then destroys new actors as out of scope: Ray Data fails with
  ``ActorDiedError`` ("all references to the actor were removed") in its first actor pool.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from aiohttp import web
from conftest import DEMO_WEB, ROOT
from conftest_train import MAX_PIXELS, MIN_PIXELS, checkpoint_committed, tiny_qwen2vl, write_corpus
from helpers import FAST_CRAWL, path_of, read_dir
from ports import free_port
from ray.cluster_utils import Cluster
from webserver import ALLOW_ALL, _running

pytestmark = pytest.mark.slow

JOB_TASK = re.compile(r"MapBatches|MapWorker|crawl_shard|ReadFiles|ListFiles|Aggregat|Shuffle|Partition")
# test_train.py's fast settings, but streamed samples (materialize=false): Ray Train workers only
# borrow the blocks of a materialized dataset, and a borrower cannot rebuild a block lost with a
# node (Ray: OBJECT_UNRECONSTRUCTABLE_BORROWED), so a run on materialized samples fails on node loss
TRAIN_FAST = [
    "batch_size=1",
    "grad_accum=1",
    "cpus_per_worker=0.5",
    "materialize=false",
    "warmup_ratio=0.0",
    f"image_min_pixels={MIN_PIXELS}",
    f"image_max_pixels={MAX_PIXELS}",
    "n_test=2",
    "max_tiles=4",
]


# ------------------------------------------------------------------------------------------ drivers
class Job:
    """A driver process (``python jobs/<script> ...``), its output in ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]):
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def finish(self, timeout_s: float = 600.0) -> None:
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"job still running after {timeout_s:.0f} s:\n{self.tail()}")
        assert rc == 0, f"job failed (exit {rc}):\n{self.tail()}"

    def stop(self) -> None:
        if self.running():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# demo-web settings of the other tests, but timeouts that outlast a hold of the web server
CRAWL = {**FAST_CRAWL, "read_timeout_s": 600.0, "total_timeout_s": 900.0, "url_deadline_s": 900.0}  # requests are held


def build_args(out: Path, base_url: str, *extra: str) -> list[str]:
    crawl = [f"crawl.{k}={v}" for k, v in CRAWL.items() if k != "allow_private_hosts"]
    return [
        "jobs/build_corpus.py",
        "--seeds",
        str(DEMO_WEB / "seeds.txt"),
        "--base-url",
        base_url,
        "--output",
        str(out),
        "--allow-private-hosts",
        "127.0.0.1",
        "-q",
        *crawl,
        *extra,
    ]


def wait_for(predicate, job: Job | None, what: str, timeout_s: float = 300.0, poll_s: float = 0.2):
    """Poll ``predicate`` until it returns something true and return that; fail if ``job`` ends
    first or after ``timeout_s``."""
    t0 = time.monotonic()
    while not (value := predicate()):
        if job is not None:
            assert job.running(), f"the job ended before {what}:\n{job.tail()}"
        if time.monotonic() - t0 > timeout_s:
            if job is not None:
                job.stop()
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}" + (f":\n{job.tail()}" if job else ""))
        time.sleep(poll_s)
    return value


def d_know_rows(out) -> list[tuple]:
    """D_know rows (lang, page path, image path, alt-text, sha256), sorted; duplicates kept."""
    rows = read_dir(Path(out) / "d_know", ["lang", "page_url", "image_url", "alt_text", "sha256"])
    return sorted(
        (r["lang"], path_of(r["page_url"]), path_of(r["image_url"]), r["alt_text"], r["sha256"]) for r in rows
    )


# ------------------------------------------------------------------------------------------ cluster


def _node_args(num_cpus: int, **extra) -> dict:
    """A raylet on 127.0.0.1 with its own free ports (other Ray clusters share this machine)."""
    return {
        "num_cpus": num_cpus,
        "object_store_memory": 100 * 2**20,
        "node_ip_address": "127.0.0.1",
        "object_manager_port": free_port(),
        "dashboard_agent_listen_port": free_port(),
        "metrics_agent_port": free_port(),
        "metrics_export_port": free_port(),
        "runtime_env_agent_port": free_port(),
        **extra,
    }


def _start(make, attempts: int = 3):
    """``make()`` a Ray node, again if it fails to start: Ray gives a new raylet 30 s to register
    (``ray/_private/node.py``), and the raylet first waits for its dashboard and runtime-env agents,
    Python processes that can take longer than that to start on a loaded 2-core machine."""
    for attempt in range(1, attempts + 1):
        try:
            return make()
        except Exception as e:
            if "timed out during startup" not in str(e) or attempt == attempts:
                raise


class LocalCluster:
    """A ``Cluster`` with a 0-CPU head, plus the environment of its drivers and its state API."""

    def __init__(self, env: dict[str, str]):
        port = free_port()
        self.dashboard = f"http://127.0.0.1:{port}"
        self.cluster = _start(
            lambda: Cluster(
                initialize_head=True,
                head_node_args=_node_args(
                    0,
                    include_dashboard=True,
                    dashboard_host="127.0.0.1",
                    dashboard_port=port,
                    gcs_server_port=free_port(),
                    ray_client_server_port=free_port(),
                    # the GCS declares a node dead after 5 failed health checks: 1 s apart instead of 3 s
                    # (a killed raylet fails each at once; a slow one still has 10 s to answer each)
                    _system_config={"health_check_period_ms": 1000},
                ),
            )
        )
        self.env = {**env, "RAY_ADDRESS": self.cluster.address}

    def add_worker(self, num_cpus: int = 2):
        node = _start(lambda: self.cluster.add_node(**_node_args(num_cpus)))
        self.cluster.wait_for_nodes()
        return node

    def kill(self, node) -> None:
        """Kill a worker node's raylet, object store and workers (no graceful drain)."""
        self.cluster.remove_node(node, allow_graceful=False)

    def alive_nodes(self) -> set[str]:
        from ray.util.state import list_nodes

        return {
            n.node_id for n in list_nodes(address=self.dashboard, raise_on_missing_output=False) if n.state == "ALIVE"
        }

    def job_work_on(self, node_id: str, running_only: bool = False) -> list[str]:
        """Names of build_corpus tasks (and actors, when ``running_only``) on ``node_id``."""
        from ray.util.state import list_actors, list_tasks

        filters = [("node_id", "=", node_id)] + ([("state", "=", "RUNNING")] if running_only else [])
        names = [
            t.name
            for t in list_tasks(address=self.dashboard, filters=filters, limit=10_000, raise_on_missing_output=False)
        ]
        if running_only:
            names += [
                a.class_name
                for a in list_actors(
                    address=self.dashboard,
                    raise_on_missing_output=False,
                    filters=[("node_id", "=", node_id), ("state", "=", "ALIVE")],
                )
            ]
        return sorted({n for n in names if JOB_TASK.search(n)})

    def train_worker_nodes(self) -> set[str]:
        from ray.util.state import list_actors

        actors = list_actors(
            address=self.dashboard,
            raise_on_missing_output=False,
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
        )
        return {a.node_id for a in actors}

    def remove_workers(self) -> None:
        for node in list(self.cluster.worker_nodes):
            self.kill(node)

    def shutdown(self) -> None:
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def ray_env(request):
    """Environment for everything this module starts (module docstring); restored afterwards.
    Ray's logs stay in ``$RAY_TMPDIR`` when a test failed."""
    tmp = tempfile.mkdtemp(prefix="ray-el-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    failed_before = request.session.testsfailed
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")]))
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        yield dict(os.environ)
    if request.session.testsfailed == failed_before:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"Ray logs of {__name__}: {tmp}")


class HeldWeb:
    """The demo web on 127.0.0.1 (``url``). Between ``hold()`` and ``release()`` image requests wait
    (pages, robots.txt and the crawler's ``/.well-known/tdmrep.json`` are answered); ``held`` counts the
    requests that had to wait."""

    def __init__(self):
        self.url = ""
        self._open = threading.Event()
        self._open.set()
        self.held = 0

    @web.middleware
    async def _gate(self, request: web.Request, handler):
        page = request.path.endswith((".html", ".txt")) or request.path.startswith("/.well-known/")  # + TDMRep
        if not page and not self._open.is_set():
            self.held += 1  # handlers run on the server's one event loop thread
            while not self._open.is_set():
                await asyncio.sleep(0.05)
        return await handler(request)

    def hold(self) -> None:
        self.held = 0
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def serve(self):
        app = web.Application(middlewares=[self._gate])

        async def robots(_request):
            return web.Response(text=ALLOW_ALL, content_type="text/plain")

        app.router.add_get("/robots.txt", robots)
        app.router.add_static("/", DEMO_WEB, show_index=False, follow_symlinks=False)
        return _running(app)


@pytest.fixture(scope="module")
def demo_web():
    held_web = HeldWeb()
    with held_web.serve() as url:
        held_web.url = url
        yield held_web


@pytest.fixture(scope="module")
def cluster(ray_env):
    c = LocalCluster(ray_env)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def single_node_rows(cluster, demo_web, tmp_path_factory):
    """D_know of the demo web built by the same job on one node (one 2-CPU worker node, nothing
    added or removed)."""
    out = tmp_path_factory.mktemp("single") / "out"
    cluster.add_worker()
    try:
        job = Job(build_args(out, demo_web.url), out.parent / "job.log", cluster.env)
        job.finish()
    finally:
        cluster.remove_workers()
    rows = d_know_rows(out)
    assert len(rows) > 50
    return rows


@pytest.fixture
def workers(cluster):
    """The cluster; the worker nodes a test adds are all removed after it."""
    yield cluster
    cluster.remove_workers()


# ---------------------------------------------------------------------------------- build_corpus
@pytest.fixture
def held(demo_web):
    """The demo web holding image requests; released after the test whatever happens."""
    demo_web.hold()
    yield demo_web
    demo_web.release()


def test_added_node_receives_work(single_node_rows, workers, held, tmp_path):
    workers.add_worker()
    out = tmp_path / "out"
    job = Job(build_args(out, held.url), tmp_path / "job.log", workers.env)
    try:
        wait_for(lambda: held.held > 0, job, "image fetch to start")
        node = workers.add_worker()
        held.release()
        job.finish()
    finally:
        job.stop()

    # task events reach the GCS within a second or so (Ray's task-event flush interval)
    work = wait_for(lambda: workers.job_work_on(node.node_id), None, "a task of the job on the added node", 20.0, 0.5)
    print("work on the added node:", work)
    assert d_know_rows(out) == single_node_rows


def test_removed_node_does_not_fail_the_job(single_node_rows, workers, held, tmp_path):
    doomed = workers.add_worker()
    out = tmp_path / "out"
    job = Job(build_args(out, held.url), tmp_path / "job.log", workers.env)
    try:
        wait_for(lambda: held.held > 0, job, "image fetch to start")
        fetching = wait_for(
            lambda: [n for n in workers.job_work_on(doomed.node_id, running_only=True) if "ImageStages" in n],
            job,
            "the fetch actors in the state API",
            60.0,
            0.5,
        )
        workers.add_worker()
        workers.kill(doomed)
        held.release()
        job.finish()
    finally:
        job.stop()

    print("running on the removed node when it was killed:", fetching)
    assert doomed.node_id not in workers.alive_nodes()
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["d_know_total"] == len(single_node_rows)
    assert d_know_rows(out) == single_node_rows


# -------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    # 14 images: 12 train (n_test=2), 6 per worker, so the 6 steps of a run are one pass over the data
    return {"corpus": write_corpus(root / "corpus", "hu", n_know=14), "qwen": tiny_qwen2vl(root / "qwen")}


def freeze_train_workers() -> list[psutil.Process]:
    """SIGSTOP this test's Ray Train worker processes (descendants of the cluster's raylets)."""
    frozen = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                proc.suspend()
                frozen.append(proc)
        except psutil.Error:
            continue
    assert frozen, "no Ray Train worker process found"
    return frozen


def thaw(procs: list[psutil.Process]) -> None:
    for proc in procs:
        try:
            proc.resume()
        except psutil.Error:  # died with its node
            pass


def test_training_resumes_after_losing_a_worker_node(tiny, workers, tmp_path):
    nodes = {n.node_id: n for n in (workers.add_worker(), workers.add_worker())}
    out = tmp_path / "run"
    sets = TRAIN_FAST + ["max_steps=6", "checkpoint_every=2", "max_failures=1", "lr=1e-3"]
    args = [
        "jobs/train.py",
        "--data",
        str(tiny["corpus"]),
        "--lang",
        "hu",
        "--backbone",
        "qwen2-vl",
        "--model",
        str(tiny["qwen"]),
        "--output",
        str(out),
        "--mix",
        "know-only",
        "--deepspeed",
        "zero2",
        "--num-workers",
        "2",
        *sets,
    ]
    env = {
        **workers.env,
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")),
    }
    job = Job(args, tmp_path / "job.log", env)
    frozen: list[psutil.Process] = []
    try:
        wait_for(lambda: checkpoint_committed(out / "ray_results"), job, "the first checkpoint", poll_s=0.05)
        frozen = freeze_train_workers()
        hosts = workers.train_worker_nodes()
        assert hosts and hosts <= set(nodes), f"Ray Train workers on {hosts}, not on the worker nodes {set(nodes)}"
        lost = sorted(hosts)[0]
        workers.kill(nodes[lost])
        thaw(frozen)  # a worker on the surviving node, if Ray Train had placed one there
        job.finish()
    finally:
        thaw(frozen)
        job.stop()

    assert lost not in workers.alive_nodes()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))  # each step once: resumed, not restarted
    resumed = [r["resumed_from"] for r in log if "resumed_from" in r]
    assert len(resumed) == 1 and resumed[0] >= 2 and resumed[0] % 2 == 0
    meta = json.loads((out / "adapter" / "mella_train.json").read_text())
    assert meta["steps"] == 6
