"""DINO through the real Trainer (on CPU without Ray, as tests/orchestrator/test_trainer.py): the weight decay the
Trainer writes before each step follows DINO's cosine, the last layer stays put in the frozen epoch and moves after
it, and a run stopped after epoch 1 and resumed ends exactly where an uninterrupted run ends (the teacher, the
centre, the optimiser and the schedules' step all come back from the checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from test_trainer import STEPS, TINY, FakeShard, Reports, local_env

from orchestrator.train.checkpoint import STATE_FILE
from orchestrator.train.job import TrainJob
from orchestrator.train.trainer import Trainer
from workloads.config import Config
from workloads.dino.method import DINO

DINO_TINY = {
    **TINY, "method": "dino", "model.proj_hidden_dim": 16, "model.proj_layers": 3, "multicrop.small_crops": 0,
    "dino.out_dim": 16, "dino.freeze_last_layer": 1, "dino.warmup_teacher_temp_epochs": 2,
    "optim.name": "adamw", "optim.lr": 1e-3, "optim.weight_decay": 0.04, "dino.weight_decay_end": 0.4,
}


def _trainer(tmp_path: Path, name: str, **overrides: Any) -> tuple[Trainer, Reports]:
    cfg = Config().replace({**DINO_TINY, "train.storage_path": str(tmp_path), "train.name": name, **overrides})
    reports = Reports(tmp_path / name)
    job = TrainJob(config=cfg, run_id="r", tracking_uri="", steps_per_epoch=STEPS)
    return Trainer(job, local_env(FakeShard(("view0", "view1"), STEPS, 8, 4), reports)), reports


def test_the_trainer_writes_dinos_weight_decay_and_freezes_the_last_layer_in_epoch_one(tmp_path: Path) -> None:
    trainer, _ = _trainer(tmp_path, "run")
    trainer.setup()
    last = trainer.core.student_head.last_layer.weight_v
    start = last.detach().clone()
    decay, no_decay = trainer.optimizer.param_groups
    assert trainer.run_epoch(1) and trainer.core.epoch == 1
    assert torch.equal(last, start)  # frozen: no step, no decay
    total = STEPS * 2
    # the decay written before the epoch's last step (0-based STEPS - 1), the cosine from 0.04 to 0.4
    assert decay["weight_decay"] == DINO().weight_decay(STEPS - 1, total, trainer.cfg) > 0.04
    assert no_decay["weight_decay"] == 0.0
    assert trainer.run_epoch(2)
    assert not torch.equal(last, start)
    assert decay["weight_decay"] == DINO().weight_decay(total - 1, total, trainer.cfg)


def test_a_stopped_and_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    whole, _ = _trainer(tmp_path, "whole")
    whole.fit()
    first, _ = _trainer(tmp_path, "resumed", **{"train.stop_after_epoch": 1})
    first.fit()
    saved = torch.load(tmp_path / "resumed" / "checkpoint_epoch_00001" / STATE_FILE, weights_only=True)
    assert saved["model"]["center"].any() and any(k.startswith("teacher_head.") for k in saved["model"])
    second, _ = _trainer(tmp_path, "resumed")
    second.fit()
    assert second.state.global_step == whole.state.global_step == 2 * STEPS
    state, expected = second.core.state_dict(), whole.core.state_dict()
    assert state.keys() == expected.keys()
    for name, value in expected.items():  # student, teacher and centre
        assert torch.equal(state[name], value), name
    assert [g["weight_decay"] for g in second.optimizer.param_groups] == [
        g["weight_decay"] for g in whole.optimizer.param_groups]


def test_with_the_vit_the_run_gets_the_teachers_attention_picture(tmp_path: Path) -> None:
    """The Trainer draws the method's pictures after the last epoch and logs them to the run's plots/."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("dino", str(tmp_path / "artifacts"))).info.run_id
    vit = {"model.arch": "vit", "model.patch_size": 2, "model.vit_dim": 16, "model.vit_depth": 2, "model.vit_heads": 2,
           "train.epochs": 1, "train.storage_path": str(tmp_path), "train.name": "vit"}
    cfg = Config().replace({**DINO_TINY, **vit})
    job = TrainJob(config=cfg, run_id=run_id, tracking_uri=uri, steps_per_epoch=STEPS)
    Trainer(job, local_env(FakeShard(("view0", "view1"), STEPS, 8, 4), Reports(tmp_path / "vit"))).fit()
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/dino_attention.png"]
    local = client.download_artifacts(run_id, "plots/dino_attention.png", str(tmp_path))
    assert Path(local).stat().st_size > 1000
