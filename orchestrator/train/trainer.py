"""The Trainer: one training of the configured method on one worker, in small named steps.

``setup`` builds model and optimiser and restores the newest checkpoint; ``train_step`` is one
optimiser step; ``log_step`` shares the step loss and the driver's stop request; ``end_epoch`` turns an
epoch into its record; ``evaluate`` runs the kNN monitor; ``checkpoint`` reports (and saves). Every rank
runs every step and keeps the same ``TrainState``; rank 0 alone does I/O: lines, MLflow, files.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from typing import Any

import ray
import torch
import torch.distributed as dist
from torch import nn

from orchestrator import tracking
from orchestrator.errors import NonFiniteLossError
from orchestrator.evaluation.monitor import LabelledImages, evaluate
from orchestrator.tracking.record import log_pictures
from orchestrator.train import faults, stopflag
from orchestrator.train.checkpoint import TrainState, latest_checkpoint, optimizer_to, restore, save_state
from orchestrator.train.env import WorkerEnv
from orchestrator.train.job import TrainJob
from orchestrator.train.model import unwrap, use_bf16, use_channels_last
from orchestrator.train.progress import flush, start_attempt
from orchestrator.train.stopflag import say
from workloads.method import Net, normalize
from workloads.methods import method
from workloads.optim import build_optimizer, scaled_lr, set_lr, set_weight_decay, warmup_cosine


class Trainer:
    def __init__(self, job: TrainJob, env: WorkerEnv) -> None:
        cfg = job.config
        self.job, self.env, self.cfg = job, env, cfg
        self.method = method(cfg.method)
        self.state = TrainState()
        self.bf16 = use_bf16(cfg, env.device)
        self.channels_last = use_channels_last(cfg, env.device)
        self.total_steps = job.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = min(round(cfg.optim.warmup_epochs * job.steps_per_epoch), self.total_steps)
        self.base_lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling)
        self.last_epoch = min(cfg.train.epochs, cfg.train.stop_after_epoch or cfg.train.epochs)
        self.evaluating = job.num_classes > 0  # every rank takes part; rank 0 computes
        self.lr = 0.0
        self.client: Any = None
        self.bank: LabelledImages | None = None
        self.test: LabelledImages | None = None

    def fit(self) -> None:
        """Set up, then train epoch by epoch until the last one or a stop request."""
        self.setup()
        for epoch in range(self.state.epoch + 1, self.last_epoch + 1):
            if not self.run_epoch(epoch):
                return

    # --- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Model, optimiser and the newest checkpoint; MLflow on rank 0; the evaluation at initialisation."""
        found = self.build()
        self.connect(found)
        if self.evaluating and self.env.rank0:
            self.bank = LabelledImages.from_dataset(self.env.dataset("eval_bank"))
            self.test = LabelledImages.from_dataset(self.env.dataset("eval_test"))
        if self.evaluating and self.state.epoch == 0:
            # the same evaluation as at the end, so the curves start at initialisation
            init = self.evaluate(linear=True)
            self.state.history.append({"epoch": 0, **init})
            if self.env.rank0:
                say("epoch 0 (initialisation): " + " ".join(f"{k} {v:.4f}" for k, v in init.items()))

    def build(self) -> str:
        """Identical initial weights on every worker, restored from the newest checkpoint if any;
        returns where it was restored from ("" for a fresh run)."""
        cfg, env = self.cfg, self.env
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed + env.rank)
        model: nn.Module = self.method.build_model(cfg)
        if cfg.train.sync_bn and env.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        o = cfg.optim
        self.optimizer = build_optimizer(o.name, self.method.param_groups(model, cfg), lr=o.lr,
                                         weight_decay=o.weight_decay, momentum=o.momentum, eta=o.eta,
                                         betas=(o.betas[0], o.betas[1]))
        found = latest_checkpoint(cfg.train.storage_path, cfg.train.name, env.registered)
        if found is not None:
            self.state = restore(found[1], model, self.optimizer)
            if env.rank0:
                say(f"resumed from {found[0]} after epoch {self.state.epoch}")
        self.model = env.wrap(model, self.method.ddp_kwargs)
        self.core = unwrap(self.model)
        optimizer_to(self.optimizer, env.device)
        self.net = self._net(torch.compile(self.model) if cfg.train.compile else self.model)
        return found[0] if found else ""

    def _net(self, forward: Any) -> Net:
        device, bf16, channels_last = self.env.device, self.bf16, self.channels_last

        def forward_autocast(*args: Any) -> Any:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return forward(*args)

        def to_input(views: torch.Tensor) -> torch.Tensor:
            x = normalize(views)
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

        return Net(forward=forward_autocast, core=self.core, image=to_input,
                   autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))

    def connect(self, found: str) -> None:
        """Rank 0: the MLflow client, epochs a crash kept from MLflow, and this attempt's restart record."""
        if not (self.env.rank0 and self.job.tracking_uri):
            return
        self.client = tracking.client_for(self.job.tracking_uri)
        if self.state.history:  # epochs checkpointed before a crash but not yet in MLflow
            flush(self.client, self.job.run_id, self.state)
        start_attempt(self.job.stop_flag, self.client, self.job.run_id, self.state, found)

    # --- one epoch ---------------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> bool:
        """Train one epoch; False when the driver asked for a stop (checkpointed mid-epoch)."""
        cfg, device = self.cfg, self.env.device
        if self.job.epoch_clock is not None:  # the stream's tasks draw this epoch's order and views
            ray.get(self.job.epoch_clock.set.remote(epoch))
        self.model.train()
        self.method.before_epoch(self.core, epoch, cfg)
        loss_sum = torch.zeros((), device=device)
        steps, wait = 0, 0.0
        start = tick = time.perf_counter()
        batch: dict[str, torch.Tensor] = {}
        for batch in self.env.dataset("train").iter_torch_batches(
                batch_size=cfg.train.worker_batch_size, drop_last=True, prefetch_batches=cfg.data.prefetch_batches,
                device=device, pin_memory=device.type == "cuda"):
            wait += time.perf_counter() - tick
            loss = self.train_step(batch, epoch, steps + 1)
            loss_sum += loss
            steps += 1
            if self.state.global_step % cfg.train.log_every_steps == 0 and self.log_step(epoch, steps, loss, start):
                self.stop(epoch, steps)
                return False
            tick = time.perf_counter()
        if steps == 0:
            raise RuntimeError(f"epoch {epoch}: worker {self.env.rank} received no full batch; lower train.batch_size")
        self.end_epoch(epoch, loss_sum, steps, wait, time.perf_counter() - start, batch)
        return True

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, step: int) -> torch.Tensor:
        """One optimiser step on one batch; returns the (detached) loss. ``step`` counts within the epoch."""
        cfg = self.cfg
        self.lr = warmup_cosine(self.state.global_step, self.total_steps, self.warmup_steps, self.base_lr,
                                cfg.optim.final_lr)
        set_lr(self.optimizer, self.lr)
        set_weight_decay(self.optimizer, self.method.weight_decay(self.state.global_step, self.total_steps, cfg))
        batch = self.method.finish_batch(batch, cfg)  # what the views left for the device (aug.device=train)
        loss = self.method.loss(self.net, batch, cfg)
        if faults.fires("nan_loss", epoch, step):
            loss = loss * float("nan")
        if not torch.isfinite(loss):
            self._non_finite(loss, epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.before_optimizer_step(self.core, self.state.global_step + 1, cfg)
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.state.global_step += 1
        self.method.after_step(self.core, self.state.global_step, self.total_steps, cfg)
        return loss.detach()

    def _non_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        message = (f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}; "
                   f"lower optim.lr or raise loss.temperature (the last good checkpoint is kept)")
        stopflag.fatal(self.job.stop_flag, message)
        raise NonFiniteLossError(message)

    def log_step(self, epoch: int, steps: int, loss: torch.Tensor, start: float) -> bool:
        """Every ``train.log_every_steps``: rank 0's step loss joins every rank's history, and every rank
        learns at the same step whether the driver asked for a stop (one all-reduce carries both)."""
        rank0, flag = self.env.rank0, self.job.stop_flag
        asked = 1.0 if rank0 and stopflag.stop_requested(flag) else 0.0
        shared = torch.tensor([asked, loss.item() if rank0 else 0.0], dtype=torch.float64, device=self.env.device)
        if self.env.world > 1:
            dist.all_reduce(shared)
        step_loss = float(shared[1].item())
        self.state.step_history.append({"global_step": self.state.global_step, "step_loss": step_loss})
        if rank0:
            elapsed = time.perf_counter() - start
            say(f"epoch {epoch}/{self.cfg.train.epochs} step {steps}/{self.job.steps_per_epoch} loss {step_loss:.4f} "
                f"lr {self.lr:.4g} {steps * self.cfg.train.batch_size / max(elapsed, 1e-9):.0f} img/s", transient=True)
            stopflag.progress(flag, epoch, self.state.global_step)
        return bool(shared[0].item() > 0)

    def stop(self, epoch: int, steps: int) -> None:
        """Checkpoint mid-epoch: the interrupted epoch is redone on resume, from its first step (the
        schedule restarts at the epoch's first step; the weights keep what the partial epoch learnt)."""
        self.state.global_step = self.state.epoch * self.job.steps_per_epoch
        if self.env.rank0:
            say(f"stopped at epoch {epoch}, step {steps}: checkpoint saved; run again with the same name to resume")
        self.checkpoint({"epoch": float(self.state.epoch), "interrupted": 1.0}, save=True,
                        dir_name=f"checkpoint_epoch_{self.state.epoch:05d}_stopped_{epoch:05d}_{steps:06d}")

    # --- end of epoch ------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, loss_sum: torch.Tensor, steps: int, wait: float, seconds: float,
                  last_batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """The epoch's record (the same on every rank: rank 0's timings), evaluation when due, the
        method's pictures after the last epoch, then report and checkpoint."""
        cfg, rank0 = self.cfg, self.env.rank0
        mine = [seconds, wait, float(steps)] if rank0 else [0.0, 0.0, 0.0]
        stats = torch.cat([torch.stack([loss_sum, torch.tensor(float(steps), device=loss_sum.device)]),
                           torch.tensor(mine, dtype=loss_sum.dtype, device=loss_sum.device)])
        if self.env.world > 1:
            dist.all_reduce(stats)
        seconds0, wait0, steps0 = (float(v) for v in stats[2:].tolist())
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": (stats[0] / stats[1]).item(),
            "lr": self.lr,
            "images_per_s": steps0 * cfg.train.batch_size / seconds0,
            "data_wait_frac": wait0 / seconds0,
            "epoch_seconds": seconds0,
        }
        final = epoch == cfg.train.epochs
        pngs: list[str] = []
        if self.evaluating and (epoch % cfg.eval.every_epochs == 0 or final):
            png = os.path.join(tempfile.mkdtemp(), "embedding.png") if final and rank0 else ""
            record.update(self.evaluate(linear=final, embedding_png=png))
            pngs += [png] if png else []
        if rank0 and final:  # the method's own pictures (MAE: reconstructions), of held-out images if any
            first = last_batch[self.method.view_columns[0]]
            images = self.test.images[:8] if self.test is not None else first[:8].cpu()
            pngs += self.pictures(images)
        if self.client is not None:
            log_pictures(self.client, self.job.run_id, pngs, "plots", say)
        self.state.epoch = epoch
        self.state.history.append(record)
        if rank0:
            shown = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
            say(f"epoch {epoch}/{cfg.train.epochs} done: {shown}")
        save = epoch % cfg.train.checkpoint_every == 0 or epoch == self.last_epoch
        self.checkpoint(record, save)
        if self.client is not None and save:
            flush(self.client, self.job.run_id, self.state)
        return record

    def evaluate(self, linear: bool, embedding_png: str = "") -> dict[str, float]:
        """kNN (and the linear probe when ``linear``) of the frozen backbone: rank 0 computes, and every
        rank receives the same metrics, so the history is the same everywhere."""
        metrics: dict[str, float] = {}
        if self.env.rank0 and self.bank is not None and self.test is not None:
            metrics = evaluate(self.core, self.bank, self.test, self.job.num_classes, self.cfg.eval, self.env.device,
                               bf16=self.bf16, linear=linear, embedding_png=embedding_png)
        if self.env.world > 1:
            box: list[Any] = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def pictures(self, images: torch.Tensor) -> list[str]:
        """The method's PNGs of ``images`` (rank 0, after the last epoch), drawn in eval mode."""
        was_training = self.core.training
        self.core.eval()
        try:
            with torch.no_grad():
                return list(self.method.pictures(self.core, images, self.cfg, tempfile.mkdtemp()))
        finally:
            self.core.train(was_training)

    def checkpoint(self, record: dict[str, float], save: bool, dir_name: str = "") -> None:
        """Every worker reports (it is a barrier); rank 0 attaches the checkpoint when one is due."""
        if not (save and self.env.rank0):
            self.env.report(record, "", "")
            return
        with tempfile.TemporaryDirectory() as d:
            save_state(d, self.core, self.optimizer, self.state, self.cfg, self.job.run_id)
            self.env.report(record, d, dir_name or f"checkpoint_epoch_{self.state.epoch:05d}")
