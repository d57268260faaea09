"""Barlow Twins and VICReg through the real Trainer (on CPU without Ray, as tests/orchestrator/test_trainer.py):
the checkpoint holds the whole network, and a run stopped after its first epoch and resumed from that
checkpoint ends with the weights and optimiser state of a run that was never stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_trainer import STEPS, TINY, FakeShard, Reports, local_env

from orchestrator.train.checkpoint import load_state_file
from orchestrator.train.job import TrainJob
from orchestrator.train.trainer import Trainer
from workloads.config import Config


def _trainer(root: Path, name: str, **overrides: Any) -> tuple[Trainer, Reports]:
    cfg = Config().replace({"method": name, **TINY, "train.storage_path": str(root), "train.name": "run",
                            "model.proj_hidden_dim": 12, "model.proj_layers": 3, "optim.name": "lars",
                            "optim.warmup_epochs": 1, **overrides})
    reports = Reports(root / "run")
    job = TrainJob(config=cfg, run_id="r", tracking_uri="", steps_per_epoch=STEPS)
    return Trainer(job, local_env(FakeShard(("view0", "view1"), STEPS, 8, 4), reports)), reports


@pytest.mark.parametrize("name", ["barlowtwins", "vicreg"])
def test_a_run_resumed_after_its_first_epoch_ends_as_one_never_stopped(tmp_path: Path, name: str) -> None:
    straight, _ = _trainer(tmp_path / "straight", name)
    straight.fit()

    first, _ = _trainer(tmp_path / "resumed", name, **{"train.stop_after_epoch": 1})
    first.fit()
    assert first.state.epoch == 1
    after_one = {k: v.clone() for k, v in first.core.state_dict().items()}
    second, reports = _trainer(tmp_path / "resumed", name)
    second.fit()
    assert [d for _, d in reports.seen] == ["checkpoint_epoch_00002"]  # epoch 2 only: it resumed
    assert second.state.global_step == 2 * STEPS

    a = load_state_file(str(tmp_path / "straight" / "run" / "checkpoint_epoch_00002"))
    b = load_state_file(str(tmp_path / "resumed" / "run" / "checkpoint_epoch_00002"))
    assert any(k.startswith("projector.") for k in a["model"]) and any(k.startswith("encoder.") for k in a["model"])
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
        assert torch.equal(second.core.state_dict()[key], value), key
    assert any(not torch.equal(after_one[k], v) for k, v in a["model"].items())  # epoch 2 moved the weights
    moments = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    resumed = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(moments) == len(resumed) > 0 and all(torch.equal(x, y) for x, y in zip(moments, resumed, strict=True))
