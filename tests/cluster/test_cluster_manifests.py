"""ray_cluster.yaml and the KubeRay manifest: valid for the tools that read them, and safe as shipped."""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.cli.jobs import check_train_args

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    return config


@pytest.fixture(scope="module")
def rayjob() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((ROOT / "cluster" / "rayjob.yaml").read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    job: dict[str, Any] = jobs[0]
    return job


def test_ray_cluster_yaml_validates_against_the_installed_ray_schema(cluster_config: dict[str, Any]) -> None:
    jsonschema.validate(cluster_config, json.loads(SCHEMA.read_text()))


def test_ray_cluster_yaml_passes_the_cluster_launchers_own_checks(cluster_config: dict[str, Any]) -> None:
    prepared = prepare_config(copy.deepcopy(cluster_config))  # what `ray up` does before talking to AWS
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"


def test_a_misspelt_field_fails_the_schema(cluster_config: dict[str, Any]) -> None:
    broken = copy.deepcopy(cluster_config)
    broken["available_node_types"]["gpu_spot"]["min_worker"] = 1  # the schema allows no unknown keys
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_gpu_workers_prefer_spot_and_fall_back_to_on_demand(cluster_config: dict[str, Any]) -> None:
    types = cluster_config["available_node_types"]
    spot, ondemand = types["gpu_spot"], types["gpu_ondemand"]
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in ondemand["node_config"]
    assert spot["node_config"]["InstanceType"] == ondemand["node_config"]["InstanceType"]
    assert spot["node_config"]["InstanceType"].split(".")[0] in ("g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en")
    assert spot["priority"] > ondemand["priority"]
    assert types["cpu_data"]["node_config"]["InstanceType"].split(".")[0][0] in "cmr"  # CPU-only family
    for node_type in types.values():
        assert node_type.get("min_workers", 0) <= node_type.get("max_workers", 0)


def test_every_node_runs_token_auth_with_the_token_file_and_the_project_installed(
        cluster_config: dict[str, Any]) -> None:
    for command in cluster_config["head_start_ray_commands"][-1:] + cluster_config["worker_start_ray_commands"][-1:]:
        assert "RAY_AUTH_MODE=token" in command and "ray start" in command
    assert cluster_config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert cluster_config["file_mounts"]["~/simclr"] == "."
    setup = " ".join(cluster_config["setup_commands"])
    assert "venv" in setup and "pip install -q -e ~/simclr" in setup


def test_nothing_but_ssh_is_exposed_and_no_keys_are_in_the_file(cluster_config: dict[str, Any]) -> None:
    assert cluster_config["provider"]["security_group"]["IpPermissions"] == []
    head_start = cluster_config["head_start_ray_commands"][-1]
    assert "--dashboard-host=127.0.0.1" in head_start
    text = (ROOT / "ray_cluster.yaml").read_text()
    for secret in ("aws_access_key_id", "aws_secret_access_key", "AWS_SECRET", "AKIA"):
        assert secret not in text
    for node_type in cluster_config["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"]  # credentials come from the node's role


def test_rayjob_has_the_fields_kuberay_requires(rayjob: dict[str, Any]) -> None:
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert "orchestrator.cli train" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].startswith("2.60")
    assert cluster["authOptions"]["mode"] == "token"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and any(p["containerPort"] == 8265 for p in head["ports"])
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in groups["cpu-data"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")


def test_rayjob_entrypoint_is_a_valid_train_command_waiting_for_its_gpus(rayjob: dict[str, Any]) -> None:
    wait, train = (shlex.split(part) for part in rayjob["spec"]["entrypoint"].split(" && "))
    assert wait[:3] == ["python", "-m", "cluster.resources"]
    assert train[:4] == ["python", "-m", "orchestrator.cli", "train"]
    _, need, notes = check_train_args(train[4:])  # the project's own config resolution
    assert need == {"GPU": float(wait[wait.index("--gpus") + 1])}
    assert notes == []  # S3 storage: nothing to warn about
