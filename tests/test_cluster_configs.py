"""The shipped cluster configs (cluster/): they parse, have the keys their tools need, and install the
Ray that pyproject pins -- a cluster with mixed Ray versions does not start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_UP = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = [CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml"]

# every place a config names a Ray version
IMAGE_TAG = re.compile(r"rayproject/ray:(\d+\.\d+\.\d+)")
PIP_PIN = re.compile(r"""["']?ray\[([a-z,]+)\]==([0-9.*]+)["']?""")


def pinned_ray() -> Requirement:
    """pyproject's Ray requirement."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray")


def ray_versions(text: str) -> list[tuple[str, str]]:
    """(where, version) for every Ray version named in a config's text: image tags, pip pins, rayVersion."""
    found = [("image", v) for v in IMAGE_TAG.findall(text)]
    found += [(f"pip ray[{extras}]", v) for extras, v in PIP_PIN.findall(text)]
    found += [("rayVersion", v) for v in re.findall(r"rayVersion:\s*[\"']?([0-9.]+)", text)]
    return found


def version_problems(text: str, requirement: Requirement) -> list[str]:
    """Every Ray version named in `text` that pyproject's pin does not allow, or that differs from the rest,
    and pip pins that drop pyproject's extras."""
    found = ray_versions(text)
    problems = [f"{where}: {v} not allowed by {requirement}" for where, v in found
                if not requirement.specifier.contains(Version(v.replace("*", "0")))]
    if len({v for _, v in found}) > 1:
        problems.append(f"more than one Ray version: {sorted({v for _, v in found})}")
    for extras, _ in PIP_PIN.findall(text):
        if not requirement.extras <= set(extras.split(",")):
            problems.append(f"pip ray[{extras}] lacks pyproject's extras {sorted(requirement.extras)}")
    return problems


def all_config_files() -> list[Path]:
    return sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("path", all_config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_parses_into_mappings(path):
    docs = load_docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_the_expected_configs_are_shipped():
    assert set(RAY_UP + KUBERAY) <= set(all_config_files())
    assert (CLUSTER / "Dockerfile").exists() and (CLUSTER / "README.md").exists()


@pytest.mark.parametrize("path", RAY_UP + KUBERAY + [CLUSTER / "Dockerfile"], ids=lambda p: p.name)
def test_ray_version_matches_pyproject(path):
    text = path.read_text()
    assert ray_versions(text), f"{path.name} names no Ray version"
    assert version_problems(text, pinned_ray()) == []


def test_the_version_check_catches_drift():
    requirement = Requirement("ray[tune]==2.60.*")
    good = 'image: rayproject/ray:2.60.0-py311\n- pip install "ray[tune,default]==2.60.0"\nrayVersion: "2.60.0"'
    assert version_problems(good, requirement) == []
    assert version_problems(good.replace("ray:2.60.0", "ray:2.59.1"), requirement)  # an old image
    assert version_problems(good.replace("==2.60.0", "==2.60.1"), requirement)  # two versions at once
    assert version_problems(good.replace("ray[tune,default]", "ray[default]"), requirement)  # no tune
    assert version_problems('rayVersion: "2.61.0"', requirement)


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_config_passes_rays_own_schema(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # what `ray up` does before touching a cloud
    for key in ("cluster_name", "max_workers", "provider", "available_node_types", "head_node_type",
                "setup_commands", "file_mounts", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # trials never land on the head
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert workers and all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in workers)  # autoscaling
    node_config = str(workers[0]["node_config"])
    assert "spot" in node_config.lower() and ("g5." in node_config or "nvidia" in node_config)
    assert "-gpu" in config["docker"]["worker_image"]


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_config_installs_groksweep_and_carries_the_token(path):
    config = yaml.safe_load(path.read_text())
    assert config["file_mounts"]["~/groksweep"] == "."  # this repository, on every node
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for phase in ("head_setup_commands", "worker_setup_commands"):
        assert any("pip install" in c and "-e ~/groksweep" in c for c in config[phase]), phase
    assert any("ray[tune" in c for c in config["setup_commands"])  # the pin, on every node, first
    run_options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in run_options
    assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1" in run_options  # gpu: 0 trials see no GPU
    results = re.search(r"GROKSWEEP_RESULTS=(\S+)", run_options).group(1)
    assert results.startswith(("s3://", "gs://"))  # shared storage: checkpoints move between nodes
    assert any("--head" in c for c in config["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:6379" in c for c in config["worker_start_ray_commands"])


def _ray_cluster_spec(path: Path) -> tuple[dict, list[dict]]:
    docs = load_docs(path)
    kinds = {d["kind"]: d for d in docs}
    if "RayCluster" in kinds:
        return kinds["RayCluster"]["spec"], docs
    return kinds["RayJob"]["spec"]["rayClusterSpec"], docs


def _ray_containers(spec: dict) -> list[dict]:
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["spec"]["containers"]]


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_has_the_required_keys(path):
    spec, docs = _ray_cluster_spec(path)
    assert all(d["apiVersion"] in ("ray.io/v1", "v1") and d["metadata"]["name"] for d in docs)
    assert spec["rayVersion"] and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu_group,) = spec["workerGroupSpecs"]
    assert gpu_group["minReplicas"] == 0 < gpu_group["maxReplicas"]
    for key in ("groupName", "replicas", "rayStartParams", "template"):
        assert key in gpu_group
    worker = gpu_group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "spot" in str(gpu_group["template"]["spec"].get("nodeSelector", {}))
    images = {c["image"] for c in _ray_containers(spec)}
    assert len(images) == 1 and images.pop().endswith(":ray" + spec["rayVersion"])


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_token_and_shared_results_reach_every_ray_container(path):
    spec, docs = _ray_cluster_spec(path)
    claims = [d for d in load_docs(KUBERAY[0]) if d["kind"] == "PersistentVolumeClaim"]
    assert claims and claims[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        for container in pod["spec"]["containers"]:
            env = env_of(container)
            assert env["RAY_AUTH_MODE"] == "token"
            assert env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"  # gpu: 0 trials see no GPU
            assert env["RAY_AUTH_TOKEN"]["secretKeyRef"] == {"name": "groksweep-ray-token", "key": "auth_token"}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            claim = volumes[mounts[env["GROKSWEEP_RESULTS"]]]["persistentVolumeClaim"]["claimName"]
            assert claim == claims[0]["metadata"]["name"]


def test_rayjob_runs_a_valid_sweep_spec_with_the_token():
    from orchestrator.spec import parse_spec

    docs = load_docs(KUBERAY[1])
    job = next(d for d in docs if d["kind"] == "RayJob")["spec"]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert job["shutdownAfterJobFinishes"] is True
    entry = job["entrypoint"].split()
    assert entry[:2] == ["groksweep", "sweep"]
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == "spec")
    volume = next(v for v in head["volumes"] if v["name"] == "spec")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    key = entry[2].removeprefix(mount["mountPath"] + "/")
    spec = parse_spec(yaml.safe_load(config_map["data"][key]))  # raises on an invalid spec
    assert spec.gpu == 0.25 and spec.max_failures >= 1
    submitter = env_of(job["submitterPodTemplate"]["spec"]["containers"][0])
    assert submitter["RAY_AUTH_MODE"] == "token" and "secretKeyRef" in submitter["RAY_AUTH_TOKEN"]


def test_dockerfile_installs_groksweep_on_the_pinned_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM \$\{RAY_IMAGE\}", text, re.M)
    assert re.search(r"pip install .*ray\[tune,default\]==[0-9.]+.* -e /home/ray/groksweep", text)
    for needed in ("pyproject.toml", "trainers", "orchestrator"):
        assert re.search(rf"^COPY .*\b{needed}\b", text, re.M), needed
