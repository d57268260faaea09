"""``simclr eval CHECKPOINT``: kNN and linear probe of a saved backbone, logged to the run it came from."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from orchestrator import console, storage, tracking
from orchestrator.config_io import parse_assignment
from orchestrator.data.prepare import prepare
from orchestrator.errors import UserError
from orchestrator.evaluation.monitor import LabelledImages, evaluate
from orchestrator.train.checkpoint import STATE_FILE, CheckpointError, read_checkpoint
from orchestrator.train.model import build_model
from orchestrator.train.run import log_console_file, run_log_path
from orchestrator.train.session import RayOptions, quiet_ray_data, ray_session
from workloads.config import Config


def evaluate_checkpoint(path: str, sets: Sequence[str], tracking_uri: str | None,
                        ray_opts: RayOptions, quiet: bool = False) -> dict[str, Any]:
    """kNN and linear probe of the checkpoint at ``path``, logged to its MLflow run at the checkpoint's epoch.

    ``quiet`` (``simclr eval`` without --verbose): Ray's own output goes to a log file, logged to the run
    under ``logs/``, as for ``simclr train``.
    """
    if not storage.is_uri(path) and not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise UserError(f"checkpoint: no {STATE_FILE} in {path!r}; pass a checkpoint folder of a simclr run "
                        f"(e.g. simclr_runs/NAME/checkpoint_epoch_00025)")
    try:
        payload = read_checkpoint(path)  # a local folder or a bucket URI
    except CheckpointError as err:
        raise UserError(f"checkpoint: {err}") from err
    cfg = Config.from_saved(payload["config"]).replace(dict(parse_assignment(s) for s in sets))
    uri = tracking.resolve_uri(tracking_uri or cfg.tracking.uri)
    client = tracking.client_for(uri)
    tracking.experiment_id(client, cfg.tracking.experiment, uri)  # fails fast when the store is unreachable
    run_id: str = payload["run_id"]
    log_path = run_log_path(cfg.train.storage_path, cfg.train.name, kind="eval")
    with console.capture(log_path, verbose=not quiet), ray_session(ray_opts):
        if quiet:
            quiet_ray_data()
        # the run's folder holds the checkpoint and the listings the run kept: its folders are not listed again
        data = prepare(cfg.data, cfg.train.seed, train=False, listings=storage.parent(path))
        if not data.num_classes or data.eval_bank is None or data.eval_test is None:
            raise UserError(f"data.source {cfg.data.source!r} has no labelled held-out split to evaluate on; "
                            f"pick a labelled dataset with --set data.source=... (and data.holdout_fraction > 0)")
        bank = LabelledImages.from_dataset(data.eval_bank)
        test = LabelledImages.from_dataset(data.eval_test)
    model = build_model(cfg)
    model.load_state_dict(payload["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        png = os.path.join(tmp, "eval_embedding.png")
        metrics = evaluate(model, bank, test, data.num_classes, cfg.eval, device, linear=True, embedding_png=png)
        client.log_artifact(run_id, png, "plots")
    if quiet:
        log_console_file(client, run_id, log_path)
    epoch = int(payload["epoch"])
    for key, value in metrics.items():
        client.log_metric(run_id, f"eval_{key}", value, step=epoch)
    return {"run_id": run_id, "epoch": epoch, "dataset": cfg.data.source,
            "metrics": {f"eval_{k}": v for k, v in metrics.items()}}
