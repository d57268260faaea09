"""`simclr train` end to end: Ray Data -> Ray Train (2 workers, DDP) -> MLflow, then `simclr eval`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient
from photos import image_folder
from services import S3, TrackingServer
from simclr_testing import RAY, tiny_sets

from orchestrator import cli
from orchestrator.data import sources
from orchestrator.evaluation.driver import evaluate_checkpoint
from orchestrator.tracking.tags import CHECKPOINT_TAG, COMPLETE_TAG, REGISTERED_TAG
from orchestrator.train.checkpoint import read_checkpoint
from orchestrator.train.model import build_model
from workloads.config import Config
from workloads.method import normalize


def load_elsewhere(uri: str, model_uri: str, cwd: Path) -> str:
    """Load the logged encoder in a fresh process with only the tracking URI; the features' shape."""
    code = (f"import mlflow, mlflow.pytorch, torch; mlflow.set_tracking_uri({uri!r}); "
            f"m = mlflow.pytorch.load_model({model_uri!r}); "
            "print(tuple(m(torch.zeros(2, 3, 16, 16, dtype=torch.uint8)).shape))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path or None):
        found |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return found


@pytest.mark.slow
def test_train_cli_two_workers_logs_a_complete_finished_mlflow_run(
        tmp_path: Path, s3: S3, tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """Users' data where teams keep it: a class-sorted ImageFolder of JPEG photos in a bucket, the kNN
    monitor from a separate labelled tree there (data.eval_root, nothing held out), 2 DDP workers, tracked
    on the team's MLflow server (PostgreSQL, artifacts proxied to a bucket); then `simclr eval` of its
    checkpoint, kept in the bucket too, logs to the same run. The run says where its data and checkpoint
    are, and the bucket's credentials are nowhere in what it records or prints. (A stopped run resuming
    by name: tests/cluster/test_submit_node_loss.py.)"""
    for key, value in s3.env().items():  # this process reads the bucket too (the checkpoint, `simclr eval`)
        monkeypatch.setenv(key, value)
    uri = tracking_server.uri
    bucket = s3.bucket()
    train_root, val_root = f"{bucket}/photos/train", f"{bucket}/photos/val"
    s3.upload(image_folder(tmp_path / "train", 8, 32), train_root)
    s3.upload(image_folder(tmp_path / "val", 8, 5, seed=1), val_root)
    photos = ["--set", "data.source=imagefolder", "--set", f"data.root={train_root}",
              "--set", f"data.eval_root={val_root}", "--set", "data.holdout_fraction=0", "--set", "data.decode_size=20"]
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", *tiny_sets(), *photos, "--workers", "2", "--name", "e2e",
           "--tracking-uri", uri, "--set", f"train.storage_path={bucket}/runs",
           "--num-cpus", "2", "--object-store-mb", "300", "--register", "ssl-encoder", "--json"]
    # a client with the bucket's endpoint and credentials for the data, and none for MLflow's artifacts:
    # the tracking server stores those
    client_s3 = {k: v for k, v in s3.env().items() if k != "MLFLOW_S3_ENDPOINT_URL"}
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")} | client_s3
    env["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "1"  # a point a second: the run is short
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)  # stdout holds exactly one JSON object
    assert out["complete"] is True and out["run_name"] == "e2e"
    assert out["checkpoint"] == f"{bucket}/runs/e2e/checkpoint_epoch_00002"
    state = read_checkpoint(out["checkpoint"])  # complete, in the bucket
    # the console: a header, the epoch lines, nothing of Ray's (MLflow may announce a new database)
    console = proc.stderr.splitlines()
    assert "epoch 1/2 done" in proc.stderr  # progress goes to the terminal (stderr)
    assert len(console) <= 3 + 1 + 2 + 2, proc.stderr
    assert "RayTrainWorker" not in proc.stderr and "Ray instance" not in proc.stderr
    # ... and Ray's output is in the run's log file (a local file, as the checkpoints are in a bucket),
    # also an artifact of the run
    log = Path(re.findall(r"  Ray's output: (\S+)", proc.stderr)[0])
    text = log.read_text()
    assert "Started a local Ray instance" in text and "(RayTrainWorker pid=" in text and "epoch 2/2 done" in text
    assert "Failed to query Ray Train Controller actor state" not in text  # local Ray has its dashboard
    # the finished name is refused before Ray starts: one line, exit 2
    refused = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = [ln for ln in refused.stderr.splitlines() if ln.startswith("simclr: ")]
    assert "already finished" in line and "Started a local Ray" not in refused.stderr

    client = MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    # params: the whole resolved config, flattened
    params = run.data.params
    assert set(Config().to_flat_dict()) <= set(params)
    assert params["train.workers"] == "2" and params["data.source"] == "imagefolder"
    assert params["dataset.num_train"] == "256" and params["dataset.num_classes"] == "8"
    # per-epoch metrics, kNN also at initialisation (epoch 0), step loss every N steps
    for key in ("loss", "lr", "images_per_s", "data_wait_frac", "epoch_seconds"):
        assert steps(client, run.info.run_id, key) == [1, 2], key
    assert steps(client, run.info.run_id, "knn_top1") == [0, 1, 2]
    assert steps(client, run.info.run_id, "linear_probe_top1") == [0, 2]
    assert len(steps(client, run.info.run_id, "step_loss")) >= 2
    assert 0.0 <= run.data.metrics["knn_top1"] <= 1.0
    # tags
    tags = run.data.tags
    assert tags["world_size"] == "2" and tags["ray_version"] and tags["torch_version"]
    assert len(tags.get("git_commit", "")) == 40
    assert tags[COMPLETE_TAG] == "true"
    # artifacts
    assert {"config.yaml", "plots/augmented_views.png", "plots/curves.png", "plots/embedding.png"} <= artifact_paths(
        client, run.info.run_id)
    assert f"logs/{log.name}" in artifact_paths(client, run.info.run_id)
    # the dataset as an MLflow dataset input, its source the bucket, and system metrics
    (used,) = run.inputs.dataset_inputs
    assert used.dataset.name == "imagefolder" and used.dataset.digest
    assert json.loads(used.dataset.source) == {"uri": train_root}
    assert json.loads(used.dataset.profile)["num_images"] == int(params["dataset.num_train"])
    # ... from the node that trains (one local node: its first worker's monitor, named by the node)
    nodes = {k.split("/")[1] for k in run.data.metrics if k.startswith("system/")}
    assert len(nodes) == 1 and re.fullmatch(r"[0-9.]+-[0-9a-f]{8}", next(iter(nodes))), run.data.metrics.keys()
    (node,) = nodes
    assert client.get_metric_history(run.info.run_id, f"system/{node}/cpu_utilization_percentage")
    assert client.get_metric_history(run.info.run_id, f"system/{node}/system_memory_usage_megabytes")
    # the final encoder as an MLflow model, linked to the run, that takes uint8 images and gives the
    # checkpoint's features without any of our code
    models = client.search_logged_models(experiment_ids=[out["experiment_id"]])
    model = next(m for m in models if m.source_run_id == run.info.run_id)
    # models:/ URIs resolve against the current tracking store. MLflow also puts it in MLFLOW_TRACKING_URI,
    # which the tests after this one (and the CLIs they run) would read: monkeypatch takes it out after.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    assert mlflow.models.get_model_info(model.model_uri).signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] \
        == "uint8"
    encoder = mlflow.pytorch.load_model(model.model_uri)
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    features = encoder(images)
    assert features.shape == (3, 16)  # widths [8, 16]: 16 features before the head
    # ... also from another process that has the tracking server and nothing else (no bucket credentials)
    assert load_elsewhere(uri, model.model_uri, tmp_path) == "(2, 16)"
    # --register: the encoder is version 1 of the registered model, the alias a team picks it by on it
    assert out["registered"] == tags[REGISTERED_TAG] == "ssl-encoder/1"
    version = client.get_model_version_by_alias("ssl-encoder", "candidate")
    assert version.run_id == run.info.run_id and model.model_id in version.source
    # the run's artifacts and its model are in the bucket behind the tracking server
    stored = s3.files(tracking_server.artifacts)
    assert f"{out['experiment_id']}/{run.info.run_id}/artifacts/config.yaml" in stored
    assert any(f.endswith("/MLmodel") and model.model_id in f for f in stored), stored
    trained = build_model(Config.from_dict(state["config"]))
    trained.load_state_dict(state["model"])
    with torch.no_grad():
        expected = trained.get_submodule("encoder").eval()(normalize(images))
    assert torch.allclose(features.detach(), expected, atol=1e-5)

    # where things are: the checkpoint in a tag; data and checkpoint in `simclr runs`; the server's own UI
    assert tags[CHECKPOINT_TAG] == out["checkpoint"]
    capfd.readouterr()
    assert cli.main(["runs", "--tracking-uri", uri, "--where", "--json", "--limit", "1000"]) == 0
    (listed,) = [r for r in json.loads(capfd.readouterr().out) if r["run_id"] == run.info.run_id]
    assert listed["data"] == train_root and listed["checkpoint"] == out["checkpoint"]
    assert cli.main(["runs", "--tracking-uri", uri, "--where"]) == 0
    assert train_root in capfd.readouterr().out
    assert cli.main(["ui", "--tracking-uri", uri]) == 0
    assert f"{uri}/#/experiments/{out['experiment_id']}/runs" in capfd.readouterr().out
    # no credential of the bucket in what the run records or prints
    secret = s3.server.secret
    assert secret not in proc.stdout + proc.stderr + text
    assert all(secret not in v for v in [*params.values(), *tags.values(), used.dataset.source])
    assert secret not in Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()

    # the run kept its listings of both trees, as manifests in its folder in the bucket; `simclr eval` of its
    # checkpoint (a new driver of the same run, as a resumed run's is) lists neither again
    kept = s3.files(f"{bucket}/runs/e2e/manifests")
    assert sorted(f.split("-")[0] for f in kept) == ["data.eval_root", "data.root"], kept

    def no_listing(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"listed again: {args}")

    monkeypatch.setattr(sources, "list_image_folder", no_listing)
    capfd.readouterr()
    result = evaluate_checkpoint(out["checkpoint"], ["eval.linear_probe_epochs=5"], None, RAY, quiet=True)
    assert result["run_id"] == out["run_id"] and result["epoch"] == 2
    assert "Running Dataset" not in capfd.readouterr().err  # Ray Data's output is in the eval's log file
    assert any(p.startswith("logs/eval-") for p in artifact_paths(client, out["run_id"]))
    assert steps(client, out["run_id"], "eval_knn_top1") == [2]
    assert 0.0 <= result["metrics"]["eval_linear_probe_top1"] <= 1.0
    assert "plots/eval_embedding.png" in artifact_paths(client, out["run_id"])
