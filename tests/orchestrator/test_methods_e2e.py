"""Every method beyond SimCLR end to end: `simclr train --method M` on digits with 2 workers, and a
2-trial `simclr tune --method M` sweep. SimCLR's own runs are in test_train_e2e.py and test_tune.py."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from orchestrator import cli, tune
from orchestrator.train_loop import STATE_FILE
from workloads.methods import method

METHODS = ("moco", "mae", "inpaint")
# The method's own digits recipe, shortened for CI: fewer epochs of a narrower model. The kNN at the
# end must beat the kNN at initialisation (epoch 0) of the same run.
TRAIN_SETS: dict[str, list[str]] = {
    "moco": ["model.widths=[16, 32]", "model.blocks=[1, 1]", "moco.queue_size=1024"],
    "mae": ["model.vit_dim=64", "model.vit_depth=2", "mae.decoder_dim=32", "mae.decoder_depth=1"],
    "inpaint": ["model.widths=[16, 32]", "model.blocks=[1, 1]"],
}
TRAIN_EPOCHS = {"moco": 4, "mae": 4, "inpaint": 4}
COMMON_SETS = ["eval.linear_probe_epochs=10"]
# Sweeps: two trials at once, one worker each, one epoch of synthetic images without labels (no
# evaluation; the metric is the loss).
SWEEP_SETS = {"data.source": "synthetic", "data.num_samples": 256, "data.image_size": 16,
              "data.augment_batch_size": 64, "data.holdout_fraction": 0.0, "train.batch_size": 32,
              "train.workers": 1, "train.log_every_steps": 2, "optim.warmup_epochs": 0}
SWEEP_MODEL = {"moco": {"model.widths": [8, 16], "model.blocks": [1, 1], "model.proj_dim": 16,
                        "moco.queue_size": 256},
               "mae": {"model.vit_dim": 32, "model.vit_depth": 1, "model.vit_heads": 2, "mae.decoder_dim": 16,
                       "mae.decoder_depth": 1, "mae.decoder_heads": 2},
               "inpaint": {"model.widths": [8, 16], "model.blocks": [1, 1]}}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_method_trains_on_digits_with_two_workers_and_beats_its_initial_knn(name: str, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = [arg for s in [*TRAIN_SETS[name], *COMMON_SETS] for arg in ("--set", s)]
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", "--method", name, "--recipe", "digits", *sets,
           "--epochs", str(TRAIN_EPOCHS[name]), "--workers", "2", "--name", f"e2e-{name}", "--tracking-uri", uri,
           "--set", f"train.storage_path={tmp_path}/runs", "--num-cpus", "2", "--object-store-mb", "300", "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert out["complete"] is True

    client = MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == name and run.data.tags["method"] == name
    assert run.data.tags["world_size"] == "2"
    knn = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "knn_top1")}
    assert {0, TRAIN_EPOCHS[name]} <= set(knn)  # at initialisation and at the end (MAE: every 5 epochs)
    assert knn[TRAIN_EPOCHS[name]] > knn[0], f"{name}: kNN top-1 by epoch {knn}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/augmented_views.png", "plots/curves.png", "plots/embedding.png"} <= artifacts
    if name in ("mae", "inpaint"):
        assert any(a.endswith("reconstructions.png") for a in artifacts)  # input, masked input, reconstruction
    state = torch.load(os.path.join(out["checkpoint"], STATE_FILE), map_location="cpu", weights_only=True)
    if name == "moco":  # the checkpoint carries the key encoder and the queue
        assert any(k.startswith("key_encoder.") for k in state["model"])
        assert state["model"]["queue"].shape[0] == 1024
    print(f"{name}: kNN top-1 {knn}", file=sys.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_two_trial_sweep_of_the_methods_default_space(name: str, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["tune", "--method", name, "--name", f"sw-{name}", "--epochs", "1", "--tracking-uri", uri,
            "--set", f"train.storage_path={tmp_path}/runs", "--num-samples", "2", "--scheduler", "none",
            "--max-concurrent", "2", "--json"]
    for key, value in {**SWEEP_SETS, **SWEEP_MODEL[name]}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    ns = cli.build_parser().parse_args(args)
    out = io.StringIO()
    tune.start_ray_for_tune(num_cpus=2, object_store_mb=300)
    try:
        code = ns.func(ns, out)
    finally:
        ray.shutdown()
    assert code == 0, out.getvalue()
    result: dict[str, Any] = json.loads(out.getvalue())
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2
    searched = [text.split("=", 1)[0] for text in method(name).search]  # the method's default space
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["method"] == name and child.data.tags["method"] == name
        assert all(k in child.data.params for k in searched)
        assert "loss" in child.data.metrics
    assert len({tuple(c.data.params[k] for k in searched) for c in children}) == 2  # two different samples
