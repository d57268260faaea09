"""The Trainer's steps one at a time, on CPU without Ray: a fake shard, world size 1, reports kept in a list.

The end-to-end path through Ray Train is tests/orchestrator/test_train_e2e.py's; here each named step
(setup, train_step, log_step, end_epoch, evaluate, checkpoint, a resume) is checked alone.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from orchestrator.errors import NonFiniteLossError
from orchestrator.train.checkpoint import STATE_FILE, load_state_file
from orchestrator.train.env import WorkerEnv
from orchestrator.train.job import TrainJob
from orchestrator.train.trainer import Trainer
from workloads.augment.views import two_views
from workloads.config import Config

TINY = {
    "data.source": "synthetic", "data.image_size": 8, "model.widths": [8], "model.blocks": [1],
    "model.proj_dim": 8, "train.batch_size": 4, "train.workers": 1, "train.epochs": 2,
    "train.log_every_steps": 1, "optim.warmup_epochs": 0, "optim.name": "sgd", "optim.lr": 0.1,
}
STEPS = 3


class FakeShard:
    """What ``ray.train.get_dataset_shard("train")`` gives: batches of uint8 views, the same each epoch."""

    def __init__(self, columns: tuple[str, ...], batches: int, size: int, batch: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = [{c: torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
                      for c in columns} for _ in range(batches)]

    def iter_torch_batches(self, **kwargs: Any) -> Iterator[dict[str, torch.Tensor]]:
        yield from ({k: v.clone() for k, v in b.items()} for b in self.data)


class Reports:
    """Ray Train's report as a list; a checkpoint is copied where Ray would put it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.seen = run_dir, []  # type: ignore[var-annotated]

    def __call__(self, metrics: dict[str, float], folder: str, dir_name: str) -> None:
        if folder:
            shutil.copytree(folder, self.run_dir / dir_name)
        self.seen.append((dict(metrics), dir_name))


def local_env(shard: FakeShard, reports: Reports) -> WorkerEnv:
    def wrap(model: nn.Module, ddp_kwargs: Mapping[str, Any]) -> nn.Module:
        return model

    return WorkerEnv(rank=0, world=1, device=torch.device("cpu"), dataset=lambda name: shard, report=reports,
                     registered=None, wrap=wrap)


def make(tmp_path: Path, **overrides: Any) -> tuple[Trainer, Reports]:
    cfg = Config().replace({**TINY, "train.storage_path": str(tmp_path), "train.name": "run", **overrides})
    columns = ("view0", "view1")
    reports = Reports(tmp_path / "run")
    job = TrainJob(config=cfg, run_id="r", tracking_uri="", steps_per_epoch=STEPS)
    return Trainer(job, local_env(FakeShard(columns, STEPS, 8, 4), reports)), reports


def test_setup_builds_model_and_optimiser_from_scratch(tmp_path: Path) -> None:
    trainer, _ = make(tmp_path)
    trainer.setup()
    assert trainer.state.epoch == 0 and trainer.state.global_step == 0
    assert trainer.state.history == []  # no labelled data: no evaluation at initialisation


def test_train_step_updates_the_weights_and_counts_the_step(tmp_path: Path) -> None:
    trainer, _ = make(tmp_path)
    trainer.setup()
    before = [p.detach().clone() for p in trainer.core.parameters()]
    batch = next(iter(trainer.env.dataset("train").iter_torch_batches()))
    loss = trainer.train_step(batch, epoch=1, step=1)
    assert math.isfinite(loss.item()) and not loss.requires_grad
    assert trainer.state.global_step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.core.parameters(), strict=True))


def test_train_step_refuses_a_non_finite_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, _ = make(tmp_path)
    trainer.setup()
    monkeypatch.setattr(trainer.method, "loss", lambda net, batch, cfg: torch.tensor(float("nan")))
    batch = next(iter(trainer.env.dataset("train").iter_torch_batches()))
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        trainer.train_step(batch, epoch=1, step=1)
    assert trainer.state.global_step == 0


def test_a_non_finite_loss_is_told_to_the_driver_which_gets_time_to_end_the_run_before_the_worker_raises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised at once, Ray Train could restart the worker group before the driver's poll fails the run
    (a clean-clone CI run saw two worker-group starts)."""
    from orchestrator.train import stopflag
    from orchestrator.train.stopflag import FATAL_POLL_S

    told: list[tuple[str, float]] = []

    class Fail:
        def remote(self, message: str) -> str:
            told.append((message, time.monotonic()))
            return message

    class Flag:
        fail = Fail()

    monkeypatch.setattr(stopflag.ray, "get", lambda ref, timeout=None: ref)  # the fake's answer, as it is
    monkeypatch.setattr(stopflag, "FATAL_GRACE_S", 0.3)
    trainer, _ = make(tmp_path)
    trainer.setup()
    trainer.job = dataclasses.replace(trainer.job, stop_flag=Flag())
    monkeypatch.setattr(trainer.method, "loss", lambda net, batch, cfg: torch.tensor(float("inf")))
    batch = next(iter(trainer.env.dataset("train").iter_torch_batches()))
    with pytest.raises(NonFiniteLossError, match="epoch 3, step 7"):
        trainer.train_step(batch, epoch=3, step=7)
    raised = time.monotonic()
    ((message, at),) = told
    assert "non-finite loss (inf) at epoch 3, step 7" in message
    assert raised - at >= 0.3  # told first, raised only after the grace
    monkeypatch.undo()
    assert stopflag.FATAL_GRACE_S >= 10 * FATAL_POLL_S  # the driver ends the run a poll or two in
    assert trainer.state.global_step == 0


def test_log_step_records_the_step_loss_and_reads_no_stop_without_a_flag(tmp_path: Path) -> None:
    trainer, _ = make(tmp_path)
    trainer.setup()
    trainer.state.global_step = 5
    assert trainer.log_step(epoch=1, steps=5, loss=torch.tensor(1.25), start=0.0) is False
    assert trainer.state.step_history == [{"global_step": 5, "step_loss": 1.25}]


def test_run_epoch_reports_a_record_with_a_checkpoint(tmp_path: Path) -> None:
    trainer, reports = make(tmp_path)
    trainer.setup()
    assert trainer.run_epoch(1) is True
    assert trainer.state.epoch == 1 and trainer.state.global_step == STEPS
    assert [r["epoch"] for r in trainer.state.history] == [1]
    assert {"loss", "lr", "images_per_s", "data_wait_frac", "epoch_seconds"} <= set(trainer.state.history[0])
    assert len(trainer.state.step_history) == STEPS  # log_every_steps 1
    (metrics, dir_name), = reports.seen
    assert dir_name == "checkpoint_epoch_00001" and metrics == trainer.state.history[0]
    payload = load_state_file(str(tmp_path / "run" / dir_name))
    assert payload["epoch"] == 1 and payload["global_step"] == STEPS and payload["run_id"] == "r"


def test_checkpoint_without_save_reports_metrics_only(tmp_path: Path) -> None:
    trainer, reports = make(tmp_path)
    trainer.setup()
    trainer.checkpoint({"epoch": 1.0}, save=False)
    assert reports.seen == [({"epoch": 1.0}, "")]
    assert not (tmp_path / "run").exists()


def test_evaluate_without_labelled_data_returns_no_metrics(tmp_path: Path) -> None:
    trainer, _ = make(tmp_path)
    trainer.setup()
    assert trainer.evaluate(linear=True) == {}


def test_fit_stops_after_epoch_and_a_new_trainer_resumes_there(tmp_path: Path) -> None:
    first, _ = make(tmp_path, **{"train.stop_after_epoch": 1})
    first.fit()
    assert first.state.epoch == 1 and (tmp_path / "run" / "checkpoint_epoch_00001" / STATE_FILE).exists()
    second, reports = make(tmp_path)
    second.fit()
    assert [r["epoch"] for r in second.state.history] == [1, 2]
    assert second.state.global_step == 2 * STEPS
    assert [d for _, d in reports.seen] == ["checkpoint_epoch_00002"]


def test_before_optimizer_step_sees_the_gradients_and_can_freeze_a_parameter(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, _ = make(tmp_path)
    trainer.setup()
    frozen = next(p for p in trainer.core.parameters() if p.ndim > 1)
    before = frozen.detach().clone()
    calls: list[int] = []

    def freeze(model: nn.Module, step: int, cfg: Config) -> None:
        assert frozen.grad is not None  # after backward
        frozen.grad = None  # SwAV-style: this parameter skips the step
        calls.append(step)

    monkeypatch.setattr(trainer.method, "before_optimizer_step", freeze)
    batch = next(iter(trainer.env.dataset("train").iter_torch_batches()))
    trainer.train_step(batch, epoch=1, step=1)
    assert calls == [1] and torch.equal(frozen, before)


def test_train_step_runs_the_deferred_colour_stage_on_the_device_as_the_data_workers_would(tmp_path: Path) -> None:
    """aug.device=train: a batch of crops and colour parameters trains exactly as the same views
    finished on the data workers (same initial weights: same seed)."""
    images = torch.randint(0, 256, (4, 3, 12, 12), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    results = []
    for device in ("data", "train"):
        trainer, _ = make(tmp_path / device, **{"aug.device": device, "aug.blur_p": 0.5})
        trainer.setup()
        batch = two_views(images, trainer.cfg, torch.Generator().manual_seed(2))
        assert ("view0__flip" in batch) == (device == "train")
        loss = trainer.train_step(batch, epoch=1, step=1)
        results.append((loss, [p.detach().clone() for p in trainer.core.parameters()]))
    (loss_data, weights_data), (loss_device, weights_device) = results
    assert torch.equal(loss_data, loss_device)
    assert all(torch.equal(a, b) for a, b in zip(weights_data, weights_device, strict=True))


class _Remote:
    """An actor method as the driver calls it (``.remote()``), answering at once; counts the calls."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.calls = answer, 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1
        return self.answer


def test_driver_fails_the_run_as_soon_as_a_worker_reports_a_non_finite_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-finite loss would repeat after every restart: the driver's poll raises it at once instead of
    waiting for Ray Train to restart the worker group train.max_failures times; it asks every
    FATAL_POLL_S, not on every poll."""
    from orchestrator.train import stopflag

    monkeypatch.setattr(stopflag.ray, "get", lambda ref, timeout=None: ref)  # the fake's answers, as they are
    clock = [100.0]
    monkeypatch.setattr(stopflag.time, "monotonic", lambda: clock[0])

    class Flag:
        fatal_error = _Remote("")
        lines = _Remote([])

    poll = stopflag.poller(Flag, quiet=True)
    poll()
    poll()  # within FATAL_POLL_S: not asked again
    assert Flag.fatal_error.calls == 1 and Flag.lines.calls == 2
    Flag.fatal_error.answer = "non-finite loss (nan) at epoch 2, step 1; lower optim.lr"
    clock[0] += stopflag.FATAL_POLL_S
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 1"):
        poll()
