"""Stage resources (mella.resources): declarations, the map_batches arguments they give, and the Ray
Data fault tolerance the stages rely on (a pool actor that dies mid-batch is recreated and the batch
retried), on a real local Ray."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from mella.resources import StageResources


def test_task_stage_args():
    assert StageResources().map_batches_args() == {"num_cpus": 1.0}
    assert StageResources(num_cpus=0.25, memory=2**30).map_batches_args() == {"num_cpus": 0.25, "memory": 2**30}


def test_fixed_and_elastic_pools():
    gpu = StageResources(num_cpus=2, num_gpus=0.5, pool_size=3).map_batches_args()
    assert (gpu["num_cpus"], gpu["num_gpus"]) == (2, 0.5)
    assert (gpu["compute"].min_size, gpu["compute"].max_size) == (3, 3)
    cpu = StageResources(num_cpus=0.5, pool_size=1, max_pool_size=8).map_batches_args()
    assert (cpu["compute"].min_size, cpu["compute"].max_size) == (1, 8)
    assert "num_gpus" not in cpu
    threaded = StageResources(num_cpus=0.25, pool_size=2, batches_per_actor=3).map_batches_args()["compute"]
    assert (threaded.max_concurrent_calls_per_actor, threaded.enable_true_multi_threading) == (3, True)
    assert cpu["compute"].max_concurrent_calls_per_actor is None


@pytest.mark.parametrize(
    "bad",
    [
        {"max_pool_size": 2},
        {"pool_size": 4, "max_pool_size": 2},
        {"pool_size": 0},
        {"num_gpus": -1},
        {"cpus": 1},
        {"batches_per_actor": 2},
        {"pool_size": 1, "batches_per_actor": 0},
    ],
)
def test_bad_declarations_are_rejected(bad):
    with pytest.raises(ValidationError):
        StageResources(**bad)


def test_pool_actor_lost_mid_batch_is_recreated_and_the_batch_retried(ray_session, tmp_path):
    import ray

    class DiesOnce:  # defined here so that Ray ships it by value (workers cannot import test modules)
        """Doubles ``id``; the first call anywhere kills its actor process, as a node loss would."""

        def __init__(self, marker: str):
            self.marker = marker

        def __call__(self, batch):
            if not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
            return {"id": batch["id"] * 2}

    marker = tmp_path / "died"
    ds = ray.data.range(40, override_num_blocks=4).map_batches(
        DiesOnce,
        fn_constructor_kwargs={"marker": str(marker)},
        batch_size=10,
        **StageResources(num_cpus=0.5, pool_size=1, max_pool_size=2).map_batches_args(),
    )
    assert sorted(r["id"] for r in ds.take_all()) == [2 * i for i in range(40)]
    assert marker.exists()  # an actor did die


def test_a_pool_actor_runs_batches_per_actor_batches_at_once(ray_session):
    """With ``batches_per_actor=2`` one actor runs two batches at the same time: each call waits at a
    two-party barrier, which only a second concurrent call can open (one at a time, it times out)."""
    import threading

    import ray

    class Meets:
        def __init__(self):
            self.barrier = threading.Barrier(2, timeout=120)
            self.threads = set()

        def __call__(self, batch):
            self.barrier.wait()
            self.threads.add(threading.get_ident())
            return {"id": batch["id"], "threads": [len(self.threads)] * len(batch["id"])}

    ds = ray.data.range(8, override_num_blocks=4).map_batches(
        Meets, batch_size=2, **StageResources(num_cpus=0.5, pool_size=1, batches_per_actor=2).map_batches_args()
    )
    rows = ds.take_all()
    assert sorted(r["id"] for r in rows) == list(range(8))
    assert max(r["threads"] for r in rows) == 2


def test_stage_cpu_counts_the_threads_a_stage_starts(tmp_path):
    """A stage's ``cpu_s`` counts CPU its own worker threads burn (a model library's intra-op threads), not only
    the calling thread's: the process clock when batches run one at a time, as they do by default."""
    import glob
    import json
    import threading
    import time

    from mella.executor import TaskRunner
    from mella.schema import REJECT_SCHEMA, to_table
    from mella.stages.base import Stage

    class Spins(Stage):
        name = "spins"

        def process(self, rows):
            def burn():
                end = time.thread_time() + 0.3
                while time.thread_time() < end:
                    pass

            t = threading.Thread(target=burn)
            t.start()
            t.join()

    batch = to_table([{"id": "a", "lang": "hu"}], REJECT_SCHEMA)
    TaskRunner([Spins()], str(tmp_path)).run(batch)
    (path,) = glob.glob(str(tmp_path / "stage-*.json"))
    assert json.load(open(path))["spins"]["cpu_s"] >= 0.25
