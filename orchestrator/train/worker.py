"""The only code that runs on Ray Train workers: one resumable training of the configured method.

Every worker runs the same steps (state updates are never rank-gated); rank 0 alone does I/O:
progress lines, evaluation of the frozen backbone, checkpoint files and MLflow metrics.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from orchestrator import tracking
from orchestrator.evaluation.monitor import LabelledImages, evaluate
from orchestrator.secrets import redact
from orchestrator.tracking.tags import RESTART_TAG_PREFIX
from orchestrator.train import faults
from workloads.config import Config
from workloads.method import Net, normalize
from workloads.methods import method
from workloads.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine

STATE_FILE = "state.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    """A checkpoint folder without a complete state file."""


@dataclass
class TrainState:
    """Everything a resumed run needs besides model and optimiser weights."""

    epoch: int = 0  # last completed epoch (0: none)
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch (epoch 0 = init)
    step_history: list[dict[str, float]] = field(default_factory=list)  # {"global_step", "step_loss"}


def build_model(cfg: Config) -> nn.Module:
    """The configured method's model; ``model.encoder`` maps images to the evaluated features."""
    return method(cfg.method).build_model(cfg)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def use_bf16(cfg: Config, device: torch.device) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """NHWC helps convolutions on tensor-core GPUs; on CPU it mostly costs conversions."""
    return cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cuda")


def save_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
               cfg: Config, run_id: str) -> None:
    """Write ``state.pt`` atomically (temp file + rename), so no reader ever sees half a file."""
    payload: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "global_step": state.global_step,
        "history": state.history,
        "step_history": state.step_history,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
        "config": cfg.to_dict(),
        "run_id": run_id,
    }
    if torch.cuda.is_available():
        payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    if faults.fires("die_in_checkpoint", state.epoch):  # killed between writing and publishing
        os._exit(1)
    os.replace(tmp, os.path.join(path, STATE_FILE))


def load_state_file(path: str) -> dict[str, Any]:
    """Load a checkpoint's state; a missing or truncated file is an error, never half a state."""
    file = os.path.join(path, STATE_FILE)
    try:
        payload: dict[str, Any] = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"checkpoint {path!r} is incomplete or unreadable ({err}); "
                              f"use an earlier checkpoint of the run") from err
    missing = {"model", "optimizer", "epoch", "global_step", "config", "run_id"} - set(payload)
    if missing:
        raise CheckpointError(f"checkpoint {path!r} lacks {sorted(missing)}; use an earlier checkpoint of the run")
    return payload


def latest_checkpoint(storage: str, name: str, registered: ray.train.Checkpoint | None
                      ) -> tuple[str, dict[str, Any]] | None:
    """The newest complete checkpoint of the run: Ray's registered one, or a newer one on storage.

    Ray Train hands a restarted worker group the last checkpoint its controller registered; a worker
    process that dies right after reporting can take that registration with it (seen with Ray 2.60),
    so the run's folder is scanned too. Only checkpoints whose state file loads completely count:
    a folder left half-written by a crash is passed over, never loaded.
    """
    best: tuple[str, dict[str, Any]] | None = None
    if registered is not None:
        try:
            with registered.as_directory() as d:
                best = (registered.path, load_state_file(d))
        except CheckpointError:
            best = None
    fs, base = pafs.FileSystem.from_uri(storage if "://" in storage else "file://" + os.path.abspath(storage))
    entries = fs.get_file_info(pafs.FileSelector(f"{base}/{name}", allow_not_found=True))
    names = sorted((e.base_name for e in entries if e.type == pafs.FileType.Directory
                    and e.base_name.startswith("checkpoint_epoch_")), reverse=True)
    for dir_name in names:
        if best is not None and dir_name <= os.path.basename(best[0].rstrip("/")):
            break  # sorted newest first: nothing newer than the registered one is left
        try:
            with ray.train.Checkpoint(f"{base}/{name}/{dir_name}", filesystem=fs).as_directory() as d:
                return f"{base}/{name}/{dir_name}", load_state_file(d)
        except (CheckpointError, FileNotFoundError):
            continue
    return best


def restore(payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return TrainState(payload["epoch"], payload["global_step"], payload["history"], payload["step_history"])


_console: Any = None  # the driver's StopFlag actor when the driver prints our lines (set once per worker)


def log(msg: str, transient: bool = False) -> None:
    """A progress line on stderr (stdout stays clean for --json). Written directly: Ray Train patches
    ``print`` on workers to go through the root logger, which shows each line twice. With a quiet
    console the line also goes to the driver, which shows it (``transient``: steps within an epoch,
    on a terminal only) while Ray's forwarded output goes to the run's log file."""
    line = redact(msg)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if _console is not None:
        _console.say.remote(("~" if transient else "") + line)


def set_console(flag: Any) -> None:
    global _console
    _console = flag


def start_attempt(flag: Any, client: Any, run_id: str, state: TrainState, found: str) -> None:
    """Rank 0, once per worker group: a second or later attempt within one fit() is a restart after a
    lost worker process or node. Record it on the MLflow run: the ``restarts`` metric (its count) and a
    ``simclr.restart.N`` tag plus ``restarts/restart_N.json`` (time, cause, epochs and steps lost)."""
    if flag is None:
        return
    attempt, previous = ray.get(flag.attempt_started.remote(), timeout=60)
    if attempt < 2:
        return
    n = attempt - 1
    reached = int(previous.get("global_step", state.global_step))
    record = {
        "restart": n,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cause": _restart_cause(previous.get("time", 0.0)),
        "resumed_after_epoch": state.epoch,
        "resumed_from": found or "the start (no checkpoint yet)",
        "epoch_in_progress": int(previous.get("epoch", state.epoch + 1)),
        "steps_lost": max(0, reached - state.global_step),
    }
    log(f"restart {n}: {record['cause']}; resumed after epoch {state.epoch}, {record['steps_lost']} steps lost")
    if client is None:
        return
    try:
        client.log_metric(run_id, "restarts", n, step=n)
        client.set_tag(run_id, f"{RESTART_TAG_PREFIX}{n}", json.dumps(record, sort_keys=True))
        client.log_dict(run_id, record, f"restarts/restart_{n}.json")
    except Exception as err:  # the tracking server may be away; training goes on
        log(f"MLflow: could not record restart {n} ({redact(str(err))[:200]})")


def _restart_cause(since: float) -> str:
    """A node that died since the last progress report means a lost node, else a lost worker process."""
    try:
        dead = [n for n in ray.nodes() if not n.get("Alive", True)]
    except Exception:
        dead = []
    if dead:
        ips = ", ".join(sorted({str(n.get("NodeManagerAddress", "?")) for n in dead}))
        return f"node lost ({ips}); Ray Train restarted the worker group"
    return "a train worker process was lost; Ray Train restarted the worker group"


def check_fatal(flag: Any) -> None:
    """A restarted attempt after a non-finite loss fails at once: retrying cannot help."""
    if flag is not None:
        message = ray.get(flag.fatal_error.remote(), timeout=60)
        if message:
            raise NonFiniteLossError(message)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    cfg = Config.from_dict(config["cfg"])
    meta: dict[str, Any] = config["meta"]
    set_console(meta.get("stop_flag") if meta.get("console") else None)
    check_fatal(meta.get("stop_flag"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    bf16 = use_bf16(cfg, device)
    channels_last = use_channels_last(cfg, device)

    workload = method(cfg.method)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every worker
    random.seed(cfg.train.seed + rank)
    model: nn.Module = workload.build_model(cfg)
    if cfg.train.sync_bn and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    core = model
    optimizer = build_optimizer(cfg.optim.name, workload.trainable(core), lr=cfg.optim.lr,
                                weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum, eta=cfg.optim.eta,
                                betas=(cfg.optim.betas[0], cfg.optim.betas[1]))
    state = TrainState()
    found = latest_checkpoint(cfg.train.storage_path, cfg.train.name, ray.train.get_checkpoint())
    if found is not None:
        where, payload = found
        state = restore(payload, core, optimizer)
        if rank == 0:
            log(f"resumed from {where} after epoch {state.epoch}")
    # to device, DDP when world > 1
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=dict(workload.ddp_kwargs) or None)
    core = unwrap(model)
    _optimizer_to(optimizer, device)
    forward = torch.compile(model) if cfg.train.compile else model

    run_id: str = meta["run_id"]
    client = tracking.client_for(meta["tracking_uri"]) if rank == 0 else None
    if client is not None and state.history:  # epochs checkpointed before a crash but not yet in MLflow
        _flush(client, run_id, state)
    if rank == 0:
        start_attempt(meta.get("stop_flag"), client, run_id, state, found[0] if found else "")

    num_classes: int = meta["num_classes"]
    evaluating = rank == 0 and num_classes > 0
    bank = test = None
    if evaluating:
        bank = LabelledImages.from_dataset(ray.train.get_dataset_shard("eval_bank"))
        test = LabelledImages.from_dataset(ray.train.get_dataset_shard("eval_test"))
        if state.epoch == 0:
            # the same evaluation as at the end, so the curves start at initialisation
            init = evaluate(core, bank, test, num_classes, cfg.eval, device, bf16=bf16, linear=True)
            state.history.append({"epoch": 0, **init})
            log("epoch 0 (initialisation): " + " ".join(f"{k} {v:.4f}" for k, v in init.items()))

    steps_per_epoch: int = meta["steps_per_epoch"]
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = min(round(cfg.optim.warmup_epochs * steps_per_epoch), total_steps)
    base_lr = scaled_lr(cfg.optim.lr, cfg.train.batch_size, cfg.optim.lr_scaling)
    last_epoch = min(cfg.train.epochs, cfg.train.stop_after_epoch or cfg.train.epochs)
    shard = ray.train.get_dataset_shard("train")
    autocast_ctx = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    stop_flag = meta.get("stop_flag")
    clock = meta.get("epoch_clock")

    def forward_autocast(*args: Any) -> Any:
        with autocast_ctx:
            return forward(*args)

    def to_input(views: torch.Tensor) -> torch.Tensor:
        x = normalize(views)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    net = Net(forward=forward_autocast, core=core, image=to_input,
              autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))

    for epoch in range(state.epoch + 1, last_epoch + 1):
        if clock is not None:  # the stream's tasks draw this epoch's order and views (orchestrator.data.stream)
            ray.get(clock.set.remote(epoch))
        model.train()
        loss_sum = torch.zeros((), device=device)
        steps = 0
        wait = 0.0
        start = time.perf_counter()
        tick = start
        batches = shard.iter_torch_batches(
            batch_size=cfg.train.worker_batch_size, drop_last=True, prefetch_batches=cfg.data.prefetch_batches,
            device=device, pin_memory=device.type == "cuda",
        )
        for batch in batches:
            wait += time.perf_counter() - tick
            lr = warmup_cosine(state.global_step, total_steps, warmup_steps, base_lr,
                               cfg.optim.final_lr)
            set_lr(optimizer, lr)
            loss = workload.loss(net, batch, cfg)
            if faults.fires("nan_loss", epoch, steps + 1):
                loss = loss * float("nan")
            if not torch.isfinite(loss):
                message = (f"non-finite loss ({loss.item()}) at epoch {epoch}, step {steps + 1}; "
                           f"lower optim.lr or raise loss.temperature (the last good checkpoint is kept)")
                if stop_flag is not None:
                    ray.get(stop_flag.fail.remote(message), timeout=60)
                raise NonFiniteLossError(message)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
            state.global_step += 1
            workload.after_step(core, state.global_step, total_steps, cfg)
            if rank == 0 and state.global_step % cfg.train.log_every_steps == 0:
                step_loss = loss.item()
                state.step_history.append({"global_step": state.global_step, "step_loss": step_loss})
                elapsed = time.perf_counter() - start
                log(f"epoch {epoch}/{cfg.train.epochs} step {steps}/{steps_per_epoch} loss {step_loss:.4f} "
                    f"lr {lr:.4g} {steps * cfg.train.batch_size / max(elapsed, 1e-9):.0f} img/s", transient=True)
                if stop_flag is not None:
                    stop_flag.progress.remote(epoch, state.global_step)
            if stop_flag is not None and state.global_step % cfg.train.log_every_steps == 0 and _stop_asked(
                    stop_flag, rank, world, device):
                _stop(epoch, steps, steps_per_epoch, core, optimizer, state, cfg, run_id, rank)
                return
            tick = time.perf_counter()
        seconds = time.perf_counter() - start
        if steps == 0:
            raise RuntimeError(f"epoch {epoch}: worker {rank} received no full batch; lower train.batch_size")
        stats = torch.stack([loss_sum, torch.tensor(float(steps), device=device)])
        if world > 1:
            dist.all_reduce(stats)
        record: dict[str, float] = {
            "epoch": epoch,
            "loss": (stats[0] / stats[1]).item(),
            "lr": lr,
            "images_per_s": steps * cfg.train.batch_size / seconds,
            "data_wait_frac": wait / seconds,
            "epoch_seconds": seconds,
        }
        final = epoch == cfg.train.epochs
        pngs: list[str] = []
        if evaluating and bank is not None and test is not None and (epoch % cfg.eval.every_epochs == 0 or final):
            png = os.path.join(tempfile.mkdtemp(), "embedding.png") if final else ""
            record.update(evaluate(core, bank, test, num_classes, cfg.eval, device, bf16=bf16,
                                   linear=final, embedding_png=png))
            pngs += [png] if png else []
        if rank == 0 and final:  # the method's own pictures (MAE: reconstructions), of held-out images if any
            images = test.images[:8] if test is not None else batch[workload.view_columns[0]][:8].cpu()
            pngs += _pictures(workload.pictures, core, images, cfg)
        if client is not None:
            for png in pngs:
                try:
                    client.log_artifact(run_id, png, "plots")
                except Exception as err:  # the tracking server may be away; training goes on
                    log(f"MLflow: could not log {os.path.basename(png)} ({redact(str(err))[:200]})")
        state.epoch = epoch
        state.history.append(record)
        if rank == 0:
            shown = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
            log(f"epoch {epoch}/{cfg.train.epochs} done: {shown}")
        save = epoch % cfg.train.checkpoint_every == 0 or epoch == last_epoch
        _report(record, save and rank == 0, core, optimizer, state, cfg, run_id)
        if client is not None and save:
            _flush(client, run_id, state)


def _pictures(draw: Any, model: nn.Module, images: torch.Tensor, cfg: Config) -> list[str]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return list(draw(model, images, cfg, tempfile.mkdtemp()))
    finally:
        model.train(was_training)


def _report(record: dict[str, float], with_checkpoint: bool, model: nn.Module,
            optimizer: torch.optim.Optimizer, state: TrainState, cfg: Config, run_id: str, dir_name: str = "") -> None:
    """Every worker reports (it is a barrier); rank 0 attaches the checkpoint when one is due."""
    if not with_checkpoint:
        ray.train.report(record)
        return
    with tempfile.TemporaryDirectory() as d:
        save_state(d, model, optimizer, state, cfg, run_id)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(d),
                         checkpoint_dir_name=dir_name or f"checkpoint_epoch_{state.epoch:05d}")


def _flush(client: Any, run_id: str, state: TrainState) -> None:
    """Send checkpointed epochs MLflow lacks. When the server is away, training goes on: the records
    stay in the checkpoint and are re-sent at the next checkpoint (and by the driver at the end)."""
    try:
        tracking.log_history(client, run_id, state.history)
        tracking.log_history(client, run_id, state.step_history, step_key="global_step")
    except Exception as err:  # MlflowException, connection errors: never stop training for metrics
        log(f"MLflow unreachable ({redact(str(err)).splitlines()[0][:200]}); "
            f"epochs up to {state.epoch} are kept in the checkpoint and re-sent later")


def _flag_set(flag: Any) -> bool:
    try:
        return bool(ray.get(flag.is_set.remote(), timeout=30))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False  # the driver is gone or unreachable: nobody can ask for a stop


def _stop_asked(flag: Any, rank: int, world: int, device: torch.device) -> bool:
    """Rank 0 reads the driver's flag; every rank learns the answer at the same step."""
    asked = torch.tensor([1.0 if rank == 0 and _flag_set(flag) else 0.0], device=device)
    if world > 1:
        dist.all_reduce(asked)
    return bool(asked.item() > 0)


def _stop(epoch: int, steps: int, steps_per_epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
          state: TrainState, cfg: Config, run_id: str, rank: int) -> None:
    """Checkpoint mid-epoch and return: the interrupted epoch is redone on resume, from its first step
    (the schedule restarts at the epoch's first step; the weights keep what the partial epoch learnt)."""
    state.global_step = state.epoch * steps_per_epoch
    if rank == 0:
        log(f"stopped at epoch {epoch}, step {steps}: checkpoint saved; run again with the same name to resume")
    _report({"epoch": float(state.epoch), "interrupted": 1.0}, rank == 0, model, optimizer, state, cfg, run_id,
            dir_name=f"checkpoint_epoch_{state.epoch:05d}_stopped_{epoch:05d}_{steps:06d}")


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move restored optimiser state (momentum buffers) to the training device."""
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                st[k] = v.to(device)
