"""Ray start-up shared by the jobs: join a cluster when one is given, else start a local one."""

from __future__ import annotations

import logging
import os

import ray

from mella import console
from mella.languages import ENV_VAR


def init_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once: ``RAY_ADDRESS`` (set by ``ray job submit``) joins that cluster; otherwise a
    new local Ray with ``num_cpus`` CPUs (default: all), dashboard off, logs to the driver — never a
    cluster that happens to run on this machine (``address="local"``; set ``RAY_ADDRESS`` to join one).
    The ``platform/`` directory is put on workers' ``PYTHONPATH`` so ``mella`` imports everywhere, and
    ``$MELLA_LANGUAGES`` (a user's language files, :mod:`mella.languages`) is passed on, as absolute paths.
    Console: Ray Data progress bars and workers' INFO logs only with ``-v`` (:mod:`mella.console`).
    """
    if ray.is_initialized():
        return
    platform_dir = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    env = {"env_vars": {"PYTHONPATH": platform_dir + os.pathsep + os.environ.get("PYTHONPATH", "")}}
    if os.environ.get(ENV_VAR):
        paths = (os.path.abspath(p) for p in os.environ[ENV_VAR].split(os.pathsep) if p.strip())
        env["env_vars"][ENV_VAR] = os.pathsep.join(paths)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = console.level() == console.VERBOSE  # else the job's own progress line
    ctx.execution_options.preserve_order = False
    extra = console.ray_init_kwargs()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env, logging_level=logging.WARNING, **extra)
    else:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=env,
            logging_level=logging.WARNING,
            **extra,
        )
    console.quiet_ray()  # ray.init may have reconfigured Ray's loggers
