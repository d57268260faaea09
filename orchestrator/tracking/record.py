"""What a run records in MLflow besides its metric histories (orchestrator/tracking/runs.py).

Its inputs before it trains (``config.yaml``, a grid of augmented views, the dataset's facts as params
and the dataset as an MLflow input), rank 0's pictures while it trains, each node's system metrics, and
at the end its curves and the encoder as an MLflow model that takes the images people have (uint8) and
needs none of our code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from orchestrator.data import catalog
from orchestrator.secrets import redact, redact_values
from orchestrator.tracking import plots
from orchestrator.tracking.runs import log_params
from orchestrator.tracking.tags import REGISTERED_TAG
from workloads.config import Config
from workloads.method import MEAN, STD


class Uint8Encoder(nn.Module):
    """uint8 images (B, 3, H, W) -> features: the ImageNet normalisation the encoder was trained with,
    inside the model, so a user of the logged model cannot get it wrong."""

    mean: Tensor
    std: Tensor

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: Tensor) -> Tensor:
        x = (images.float() - self.mean) / self.std  # (B, 3, H, W) normalised
        out: Tensor = self.encoder(x)  # features: (B, D)
        return out


def log_inputs(client: Any, run_id: str, cfg: Config, views: Mapping[str, Tensor], num_train: int,
               num_classes: int, bad_images: int, steps_per_epoch: int) -> None:
    """What goes into the run before it trains: the config, a grid of augmented ``views`` (uint8
    (N, 3, H, W) per view column, as the trainer sees them), the facts of the data as read (the config's
    own fields are under ``data.*``) and the dataset as an input."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "config.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(redact_values(cfg.to_dict()), f, sort_keys=False)
        client.log_artifact(run_id, config_path)
        grid = os.path.join(tmp, "augmented_views.png")
        plots.views_grid(views["view0"], views.get("view1"), grid)
        client.log_artifact(run_id, grid, "plots")
    log_params(client, run_id, {"dataset.num_train": num_train, "dataset.num_classes": num_classes,
                                "dataset.bad_images_skipped": bad_images, "dataset.steps_per_epoch": steps_per_epoch})
    if bad_images > 0:
        client.log_metric(run_id, "bad_images_skipped", bad_images)
    log_dataset(client, run_id, cfg, num_train, num_classes)


def log_curves(client: Any, run_id: str, history: Sequence[Mapping[str, float]]) -> None:
    """``plots/curves.png``: loss and kNN top-1 against the epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        curves = os.path.join(tmp, "curves.png")
        plots.curves(history, curves)
        if os.path.exists(curves):
            client.log_artifact(run_id, curves, "plots")


def log_pictures(client: Any, run_id: str, files: Sequence[str], folder: str, warn: Callable[[str], None]) -> None:
    """Rank 0's pictures; a tracking server that is away costs the pictures (and a ``warn`` line), never
    the training."""
    for file in files:
        try:
            client.log_artifact(run_id, file, folder)
        except Exception as err:
            warn(f"MLflow: could not log {file.rsplit('/', 1)[-1]} ({redact(str(err))[:200]})")


def dataset_input(cfg: Config, num_train: int, num_classes: int) -> Any:
    """The run's training data as an MLflow dataset: its source (a path or URI when it has one), a digest
    of what was read, and a profile with the number of images and classes."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    where = redact(data_location(cfg))
    source: Any = CodeDatasetSource({"data.source": cfg.data.source})
    if where:
        try:
            source = resolve_dataset_source(where)
        except Exception:  # a scheme MLflow has no source type for: keep the name
            source = CodeDatasetSource({"data.source": cfg.data.source, "uri": where})
    facts = {"source": cfg.data.source, "where": where, "split": cfg.data.split, "image_size": cfg.data.image_size,
             "holdout_fraction": cfg.data.holdout_fraction, "num_images": num_train, "num_classes": num_classes}
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:12]
    profile = {"num_images": num_train, "num_classes": num_classes, "image_size": cfg.data.image_size}

    class ImageDataset(MetaDataset):
        @property
        def profile(self) -> Any:
            return profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(profile)}

    return ImageDataset(source=source, name=cfg.data.source, digest=digest)


def data_location(cfg: Config) -> str:
    """The folder, file or bucket URI the run's images come from ("" for generated or packaged data)."""
    needs = catalog.source(cfg.data.source).paths
    return getattr(cfg.data, needs[0].field) if needs else ""


def log_dataset(client: Any, run_id: str, cfg: Config, num_train: int, num_classes: int) -> None:
    """``mlflow.log_input`` for a run we hold by id (the Datasets panel of the run).

    A dataset is stored once per experiment. MLflow looks it up and inserts it if missing in one
    transaction, so the trials of a sweep, which log the same dataset at the same moment, can race: the
    loser's insert breaks the unique constraint and its transaction is rolled back. A second attempt then
    finds the dataset and only links it to the run.
    """
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    ds = dataset_input(cfg, num_train, num_classes)
    inputs = [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "train")])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as err:
        if not _DUPLICATE.search(str(err)):
            raise
        client.log_inputs(run_id, datasets=inputs)


# How SQLite, PostgreSQL and MySQL word a broken unique constraint.
_DUPLICATE = re.compile(r"UNIQUE constraint failed|duplicate key value|Duplicate entry", re.IGNORECASE)


def node_name(ip: str, node_id: str) -> str:
    """How a node's system metrics are named in the run: its address and the start of its Ray node id,
    ``10.0.0.5-1a2b3c4d``. The address is what people know a machine by; the id tells apart nodes that
    share one (several Ray nodes on one machine, a spot node replaced by one at the same address).
    Characters MLflow refuses in a metric name become ``_``."""
    raw = f"{ip}-{node_id[:8]}" if ip else node_id[:8] or "node"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)


def system_metrics(run_id: str, uri: str, node: str) -> Any:
    """MLflow's system-metrics monitor (CPU, memory, disk, network; GPU utilisation and memory with
    pynvml) of this node, logging ``system/<node>/*`` into the run every 10 s
    (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``) from a daemon thread. Call ``finish()``: it stops the
    thread and sends what is buffered. The monitor also stops by itself once the run is no longer RUNNING."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, resume_logging=True, node_id=node, tracking_uri=uri)
    # MLFLOW_SYSTEM_METRICS_NODE_ID wins over the argument; one value on every node would merge their series
    monitor.node_id = node
    monitor.start()
    return monitor


def log_encoder_model(encoder: nn.Module, run_id: str, uri: str, image_size: int) -> str:
    """The encoder as an MLflow PyTorch model of the run, with a uint8 (B, 3, H, W) signature; its URI."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    model = Uint8Encoder(encoder).eval()
    # pt2 (torch.export, MLflow 3's default) marks only dimensions larger than 1 as dynamic: a batch
    # of 2 keeps the saved model usable at any batch size.
    example = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    with torch.no_grad():
        features = model(example)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model, name="encoder", input_example=example.numpy(),
            signature=infer_signature(example.numpy(), features.numpy()),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    return str(info.model_uri)


def logged_encoder(client: Any, run_id: str) -> str:
    """The URI of the encoder model ``run_id`` logged when it finished ("" if it logged none: it stopped early)."""
    run = client.get_run(run_id)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run_id}'")
    return next((str(m.model_uri) for m in models if m.name == "encoder"), "")


def register_encoder(client: Any, run_id: str, model_uri: str, name: str, alias: str) -> str:
    """``model_uri`` (the run's encoder) as a new version of the registered model ``name``, with ``alias``
    moved to it: what a team picks in the MLflow UI ("the encoder we ship"). The version is tagged on the
    run; returns ``"NAME/VERSION"``."""
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)
    version = mlflow.register_model(model_uri, name, tags={"run_id": run_id}).version
    client.set_registered_model_alias(name, alias, version)
    where = f"{name}/{version}"
    client.set_tag(run_id, REGISTERED_TAG, where)
    return where
