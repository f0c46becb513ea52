"""The cluster definitions users deploy (cluster/): structure, required fields, and that every command
and import path they name exists in this repo with flags the job's argparse accepts.

The autoscaler YAML is checked with Ray's own schema (``ray.autoscaler._private.util.validate_config``
after ``fillout_defaults``, what ``ray up`` runs); the KubeRay manifests against the fields of the
ray.io/v1 CRDs (RayCluster, RayJob, RayService) that the operator needs.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------------------------------- commands
def _load_job(script: Path):
    spec = importlib.util.spec_from_file_location(f"_job_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_job_argv(script: Path, argv: list[str]) -> dict:
    """Parse and validate ``argv`` with the real ``jobs/<script>`` without running it: ``--print-config``
    (every job has it) returns after the flags and the ``key=value`` overrides are parsed and the job's
    settings validated; the printed YAML is returned. Errors: ``SystemExit`` (argparse, UsageError) or
    pydantic's ``ValidationError``."""
    mod = _load_job(script)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = mod.main([*argv, "--print-config"])
    assert rc == 0, f"{script} {argv}: --print-config returned {rc}"
    return yaml.safe_load(out.getvalue())


def python_jobs(command: str) -> list[tuple[Path, list[str]]]:
    """``python jobs/X.py ARGS`` invocations in a shell command line → [(script path, ARGS)]."""
    found = []
    for part in re.split(r"&&|;|\|\|", command):
        words = shlex.split(part)
        for i, w in enumerate(words[:-1]):
            if re.fullmatch(r"(\S*/)?python3?(\.\d+)?", w) and words[i + 1].startswith("jobs/"):
                found.append((ROOT / words[i + 1], words[i + 2 :]))
    return found


def test_parse_job_argv_rejects_unknown_flags_and_bad_overrides():
    """The checker itself: it must fail on what argparse or BuildConfig rejects."""
    with pytest.raises(SystemExit):
        parse_job_argv(
            ROOT / "jobs/train.py",
            ["--data", "d", "--lang", "hu", "--model", "m", "--output", "o", "--deepspeed", "zero9"],
        )
    with pytest.raises(SystemExit):
        parse_job_argv(ROOT / "jobs/train.py", ["--data", "d", "--lang", "hu", "--output", "o"])  # --model missing
    with pytest.raises(SystemExit):
        parse_job_argv(ROOT / "jobs/build_corpus.py", ["--output", "o", "--no-such-flag"])
    with pytest.raises(Exception, match="pool_size"):
        parse_job_argv(ROOT / "jobs/build_corpus.py", ["--output", "o", "ray.image_pool.pool_size=0"])
    settings = parse_job_argv(
        ROOT / "jobs/train.py",
        [
            "--data",
            "d",
            "--lang",
            "hu",
            "--backbone",
            "qwen2-vl",
            "--model",
            "m",
            "--output",
            "o",
            "--num-workers",
            "8",
            "--use-gpu",
        ],
    )
    assert settings["num_workers"] == 8 and settings["use_gpu"] is True


def check_command(command: str) -> int:
    jobs = python_jobs(command)
    for script, argv in jobs:
        assert script.is_file(), f"{script.relative_to(ROOT)} (named in {command!r}) does not exist"
        parse_job_argv(script, argv)
    return len(jobs)


def check_import_path(import_path: str) -> None:
    module, _, attr = import_path.partition(":")
    sys.path.insert(0, str(ROOT))
    try:
        mod = importlib.import_module(module)
    finally:
        sys.path.remove(str(ROOT))
    assert callable(getattr(mod, attr, None)), f"{import_path}: no callable {attr!r} in {mod.__file__}"


# ------------------------------------------------------------------------------ Ray autoscaler (AWS)
def test_aws_autoscaler_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    cfg = load(CLUSTER / "aws.yaml")
    validate_config(fillout_defaults(cfg))  # raises jsonschema.ValidationError / ValueError


def test_aws_node_types():
    cfg = load(CLUSTER / "aws.yaml")
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "idle_timeout_minutes",
        "setup_commands",
        "max_workers",
    ):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert cfg["idle_timeout_minutes"] > 0
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for name, t in types.items():
        assert {"resources", "min_workers", "max_workers", "node_config"} <= t.keys(), name
        assert 0 <= t["min_workers"] <= t["max_workers"], name
        assert t["node_config"]["InstanceType"], name
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    assert cpu["min_workers"] == 0 and cpu["max_workers"] >= 1 and cpu["resources"]["CPU"] >= 1
    assert "GPU" not in cpu["resources"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["resources"]["GPU"] == 8 and gpu["node_config"]["InstanceType"].startswith("p4d")
    assert cfg["max_workers"] >= sum(t["max_workers"] for n, t in types.items() if n != cfg["head_node_type"])


def test_aws_setup_installs_pinned_torch_before_the_project():
    cfg = load(CLUSTER / "aws.yaml")

    def first(cmds, pattern):
        return next(i for i, c in enumerate(cmds) if re.search(pattern, c))

    cmds = cfg["setup_commands"]
    assert first(cmds, r"torch==2\.14\.1 torchvision==0\.29\.1") < first(cmds, r"pip install .*-e \.")
    assert "whl/cpu" in cmds[first(cmds, r"torch==2\.14\.1")]
    gpu_cmds = cfg["available_node_types"]["gpu_worker"]["worker_setup_commands"]
    # vLLM 0.33.0 pins torch==2.14.0: the GPU nodes install it with the extra, not under the CPU constraints
    gpu = gpu_cmds[first(gpu_cmds, r"-e '?\.\[gpu\]")]
    assert "torch==2.14.0" in gpu and "constraints" not in gpu
    # the project the nodes install is this checkout, synced by file_mounts from the repo root
    assert "." in cfg["file_mounts"].values() and (ROOT / "pyproject.toml").is_file()
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    py = (ROOT / "pyproject.toml").read_text()
    assert "gpu = [" in py  # the [gpu] extra the GPU nodes install


# -------------------------------------------------------------------------------------- KubeRay
def _groups_ok(spec: dict) -> dict:
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"], "head has no container"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for name, g in groups.items():
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], name
        assert g["template"]["spec"]["containers"], name
    return groups


def _gpu_limits(group: dict) -> int:
    c = group["template"]["spec"]["containers"][0]
    lim, req = c["resources"]["limits"], c["resources"]["requests"]
    assert lim.get("nvidia.com/gpu") == req.get("nvidia.com/gpu"), "GPU request must equal limit"
    return int(lim.get("nvidia.com/gpu", 0))


def test_raycluster_autoscales_cpu_and_gpu_groups():
    m = load(KUBERAY / "raycluster.yaml")
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayCluster" and m["metadata"]["name"]
    spec = m["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = _groups_ok(spec)
    assert set(groups) == {"cpu-worker", "gpu-worker"}
    assert groups["cpu-worker"]["minReplicas"] == 0 and groups["cpu-worker"]["maxReplicas"] >= 1
    assert _gpu_limits(groups["cpu-worker"]) == 0
    assert _gpu_limits(groups["gpu-worker"]) == 8
    for g in groups.values():
        c = g["template"]["spec"]["containers"][0]
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


@pytest.mark.parametrize(
    "name,script", [("rayjob-build-corpus.yaml", "jobs/build_corpus.py"), ("rayjob-train.yaml", "jobs/train.py")]
)
def test_rayjob_runs_a_job_of_this_repo(name, script):
    m = load(KUBERAY / name)
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayJob" and m["metadata"]["name"]
    spec = m["spec"]
    cluster = load(KUBERAY / "raycluster.yaml")
    if "clusterSelector" in spec:
        assert spec["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
        assert not spec.get("shutdownAfterJobFinishes"), "a RayJob must not tear down a selected cluster"
    else:
        _groups_ok(spec["rayClusterSpec"])
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))
    jobs = python_jobs(spec["entrypoint"])
    assert [j[0] for j in jobs] == [ROOT / script]
    assert check_command(spec["entrypoint"]) == 1


def test_rayjob_build_corpus_uses_the_bundled_seeds():
    m = load(KUBERAY / "rayjob-build-corpus.yaml")
    ((_, argv),) = python_jobs(m["spec"]["entrypoint"])
    seeds = argv[argv.index("--seeds") + 1]
    assert (ROOT / seeds).is_file()


def test_rayservice_runs_the_serve_app():
    m = load(KUBERAY / "rayservice.yaml")
    assert m["apiVersion"] == "ray.io/v1" and m["kind"] == "RayService"
    serve_cfg = yaml.safe_load(m["spec"]["serveConfigV2"])
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.parse_obj(serve_cfg)  # Ray Serve's own config schema (what `serve deploy` checks)
    groups = _groups_ok(m["spec"]["rayClusterConfig"])
    assert sum(_gpu_limits(g) for g in groups.values()) >= 1
    from mella.serving.config import ServeConfig

    reference = load(ROOT / "serve" / "config.yaml")["applications"][0]
    (app,) = serve_cfg["applications"]
    assert app["import_path"] == reference["import_path"] == "serve.app:build_app"
    check_import_path(app["import_path"])
    unknown = set(app["args"]) - set(ServeConfig.model_fields)
    assert not unknown, f"args that ServeConfig does not define: {unknown}"
    import mella.serving.app as served

    for d in app["deployments"]:
        assert hasattr(served, d["name"]), f"no deployment {d['name']} in mella.serving.app"
    gpus = {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in app["deployments"]}
    assert gpus["VLMDeployment"] >= 1


# ----------------------------------------------------------------------------------------- README
def test_readme_commands_exist():
    """Every ``python jobs/X.py ...`` line in cluster/README.md names a job with flags it accepts."""
    text = (CLUSTER / "README.md").read_text(encoding="utf-8")
    n = 0
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split("#", 1)[0]
            if "jobs/" in cmd and "python" in cmd:
                n += check_command(cmd.split(" -- ", 1)[-1])
    assert n >= 3
    for rel in re.findall(r"`(cluster/[\w/.-]+\.yaml)`", text):
        assert (ROOT / rel).is_file(), rel
