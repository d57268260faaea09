"""SwAV through the real Trainer (on CPU without Ray, as tests/orchestrator/test_trainer.py): the Trainer
tells the method each epoch, the prototypes stay put in the frozen epoch and move after it, and stay unit
rows; the checkpoint carries them and the queue."""

from __future__ import annotations

from pathlib import Path

import torch
from test_trainer import STEPS, TINY, FakeShard, Reports, local_env

from orchestrator.train.checkpoint import STATE_FILE
from orchestrator.train.job import TrainJob
from orchestrator.train.trainer import Trainer
from workloads.config import Config


def test_swav_freezes_its_prototypes_in_the_first_epoch_then_trains_them(tmp_path: Path) -> None:
    cfg = Config().replace({"method": "swav",
        **TINY, "train.storage_path": str(tmp_path), "train.name": "run", "multicrop.small_crops": 0,
        "swav.num_prototypes": 12, "swav.queue_length": 8, "swav.epoch_queue_starts": 1})
    job = TrainJob(config=cfg, run_id="r", tracking_uri="", steps_per_epoch=STEPS)
    trainer = Trainer(job, local_env(FakeShard(("view0", "view1"), STEPS, 8, 4), Reports(tmp_path / "run")))
    trainer.setup()
    start = trainer.core.prototypes.weight.detach().clone()
    assert trainer.run_epoch(1) and trainer.core.epoch == 1
    # frozen: no step, no decay (only the renormalisation's rounding)
    torch.testing.assert_close(trainer.core.prototypes.weight.detach(), start, rtol=0, atol=1e-6)
    assert not trainer.core.queue.any()  # the queue starts after epoch 1
    assert trainer.run_epoch(2) and trainer.core.epoch == 2
    assert (trainer.core.prototypes.weight.detach() - start).abs().max() > 1e-4  # trained (the frozen epoch: < 1e-6)
    torch.testing.assert_close(trainer.core.prototypes.weight.norm(dim=1), torch.ones(12))
    assert trainer.core.queue.any()
    state = torch.load(tmp_path / "run" / "checkpoint_epoch_00002" / STATE_FILE, weights_only=True)
    assert torch.equal(state["model"]["queue"], trainer.core.queue)
    assert torch.equal(state["model"]["prototypes.weight"], trainer.core.prototypes.weight)
