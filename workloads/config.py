"""Typed configuration: one dataclass per concern, validated on construction.

This module holds the sections every method reads (data, model, optim, train, eval, tracking) and names
no method. A method declares the sections it reads besides these (``Method.sections``: ``aug`` from
workloads/augment/views.py, ``loss`` from workloads/contrastive.py, one named after the method in its
folder), and a ``Config`` holds the shared sections plus its method's, nothing of other methods': what
``--dry-run``, the run's ``config.yaml`` and its MLflow params show. Code reads a method's section typed,
``cfg.get(SwAVConfig).temperature``; a YAML or ``--set`` names it as a shared one, ``swav.temperature``.

Dicts exist only at the boundaries (YAML, ``--set``, Ray's ``train_loop_config``, MLflow params);
``Config.from_dict`` turns a dict back into the typed tree and rejects unknown keys, keys of another
method's section and bad values with an error that names the dotted field and the allowed range
(torchtitan-style).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from workloads.fields import ConfigError, check, check_choices, coerce, from_plain, set_dotted, to_plain

if TYPE_CHECKING:
    from workloads.method import Method

Source = Literal["digits", "synthetic", "cifar10", "cifar100", "stl10", "mnist", "fashion_mnist", "imagefolder",
                 "parquet", "images", "manifest"]


@dataclass
class DataConfig:
    """Where images come from and how Ray Data prepares them."""

    section: ClassVar[str] = "data"
    source: Source = "digits"
    root: str = ""  # a torchvision-format dataset, an ImageFolder tree; manifest: what its relative paths are under
    uri: str = ""  # parquet / image files: a path or s3://, gs:// URI (file, folder or glob)
    manifest: str = ""  # manifest: a CSV or Parquet file (path or URI) of `path` and optional `label` columns
    download: bool = False  # torchvision-format datasets: fetch into root when missing
    split: str = "train"  # torchvision split used for pretraining ("train", or "unlabeled" for STL-10)
    image_size: int = 16  # side of each augmented view
    decode_size: int = 0  # shorter side of cached images; at least this when decoded each epoch (0: image_size)
    center_square: bool = False  # file sources: keep only the centre square at decode (faster, less varied crops)
    shuffle: bool = True  # a new order every epoch from (train.seed, epoch); false: row-id order (benchmarks only)
    image_column: str = "image"  # parquet: column of encoded image bytes
    label_column: str = "label"  # parquet: column of integer labels ("" when there are none)
    num_samples: int = 2048  # synthetic: number of images
    num_classes: int = 10  # synthetic: number of classes
    holdout_fraction: float = 0.2  # labelled images held out of pretraining for kNN / linear probe
    bad_images: Literal["skip", "fail"] = "skip"  # skip (and count) or fail on an unreadable image
    cache_decoded: bool = True  # keep decoded images in the object store, decode once
    augment_batch_size: int = 256  # images per Ray Data augmentation task
    augment_workers: int = 0  # concurrent augmentation tasks (0: Ray Data decides)
    prefetch_batches: int = 2  # batches prefetched by each train worker's iterator
    eval_bank_size: int = 10000  # at most this many labelled train images in the kNN bank
    eval_test_size: int = 2000  # at most this many held-out images evaluated
    eval_root: str = ""  # file sources: a labelled ImageFolder tree (ImageNet's val/) for the kNN queries

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(self.image_size >= 4, s, "image_size", ">= 4", self.image_size)
        check(self.decode_size == 0 or self.decode_size >= 4, s, "decode_size", "0 or >= 4", self.decode_size)
        check(self.num_samples >= 2, s, "num_samples", ">= 2", self.num_samples)
        check(self.num_classes >= 1, s, "num_classes", ">= 1", self.num_classes)
        check(0.0 <= self.holdout_fraction < 1.0, s, "holdout_fraction", "in [0, 1)", self.holdout_fraction)
        check(self.augment_batch_size >= 1, s, "augment_batch_size", ">= 1", self.augment_batch_size)
        check(self.augment_workers >= 0, s, "augment_workers", ">= 0", self.augment_workers)
        check(self.prefetch_batches >= 0, s, "prefetch_batches", ">= 0", self.prefetch_batches)
        check(self.eval_bank_size >= 1, s, "eval_bank_size", ">= 1", self.eval_bank_size)
        check(self.eval_test_size >= 1, s, "eval_test_size", ">= 1", self.eval_test_size)
        if self.source in ("parquet", "images"):
            check(bool(self.uri), s, "uri", f"set for source {self.source!r} (a path or s3://, gs:// URI)", self.uri)
        if self.source in ("cifar10", "cifar100", "stl10", "mnist", "fashion_mnist", "imagefolder"):
            check(bool(self.root), s, "root", f"set for source {self.source!r} (a local folder)", self.root)
        if self.source == "manifest":
            check(bool(self.manifest), s, "manifest", "set for source 'manifest' (a CSV or Parquet file of path, "
                  "label)", self.manifest)
        else:
            check(not self.manifest, s, "manifest", "empty unless data.source=manifest (set that to read it)",
                  self.manifest)
        if self.eval_root:
            check(self.source in ("imagefolder", "images", "parquet", "manifest"), s, "eval_root",
                   "empty unless the source is imagefolder, images, parquet or manifest (the others have a test "
                   "split)", self.eval_root)

    @property
    def stored_size(self) -> int:
        return self.decode_size or self.image_size


@dataclass
class ModelConfig:
    """Encoder and projection head."""

    section: ClassVar[str] = "model"
    # vit: for methods that build a ViT (mae, dino)
    arch: Literal["resnet18", "resnet34", "resnet50", "small_resnet", "vit"] = "small_resnet"
    cifar_stem: bool = True  # 3x3 stride-1 first conv, no max-pool: for images <= 64 px
    widths: tuple[int, ...] = (32, 64, 128)  # small_resnet stage widths
    blocks: tuple[int, ...] = (1, 1, 1)  # small_resnet blocks per stage
    proj_hidden_dim: int = 0  # 0: the encoder's feature dimension
    proj_dim: int = 128
    proj_layers: Literal[2, 3] = 2
    patch_size: int = 2  # vit: side of a square patch in pixels (the image side must be a multiple)
    vit_dim: int = 128  # vit: token width
    vit_depth: int = 4  # vit: transformer blocks
    vit_heads: int = 4  # vit: attention heads (vit_dim must be a multiple)

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), s, "widths",
               "a non-empty list of positive ints", self.widths)
        check(len(self.blocks) == len(self.widths) and all(b >= 1 for b in self.blocks), s, "blocks",
               "a list of positive ints as long as model.widths", self.blocks)
        check(self.proj_hidden_dim >= 0, s, "proj_hidden_dim", ">= 0 (0: the feature dimension)",
               self.proj_hidden_dim)
        check(self.proj_dim >= 1, s, "proj_dim", ">= 1", self.proj_dim)
        check(self.patch_size >= 1, s, "patch_size", ">= 1", self.patch_size)
        check(self.vit_depth >= 1, s, "vit_depth", ">= 1", self.vit_depth)
        check(self.vit_heads >= 1, s, "vit_heads", ">= 1", self.vit_heads)
        # multiples of 4: the 2-D sin-cos position embedding splits the width into 4 parts
        check(self.vit_dim >= 4 and self.vit_dim % math.lcm(4, self.vit_heads) == 0, s, "vit_dim",
               f"a positive multiple of 4 and of model.vit_heads ({self.vit_heads})", self.vit_dim)


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (linear warmup, then cosine)."""

    section: ClassVar[str] = "optim"
    name: Literal["lars", "sgd", "adamw"] = "lars"
    lr: float = 0.3  # base learning rate, scaled by lr_scaling with the global batch
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"  # linear (lr*B/256) | sqrt (lr*sqrt(B)) | none
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 10.0
    final_lr: float = 0.0  # learning rate at the last step
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    betas: tuple[float, ...] = (0.9, 0.999)  # adamw's (beta1, beta2); MAE uses (0.9, 0.95)

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(self.lr > 0.0, s, "lr", "> 0", self.lr)
        check(self.weight_decay >= 0.0, s, "weight_decay", ">= 0", self.weight_decay)
        check(0.0 <= self.momentum < 1.0, s, "momentum", "in [0, 1)", self.momentum)
        check(self.eta > 0.0, s, "eta", "> 0", self.eta)
        check(self.warmup_epochs >= 0.0, s, "warmup_epochs", ">= 0", self.warmup_epochs)
        check(self.final_lr >= 0.0, s, "final_lr", ">= 0", self.final_lr)
        check(self.grad_clip >= 0.0, s, "grad_clip", ">= 0 (0 = off)", self.grad_clip)
        check(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), s, "betas",
               "two numbers in [0, 1), e.g. [0.9, 0.999]", self.betas)


@dataclass
class TrainConfig:
    """The distributed run: workers, precision, checkpoints, fault tolerance."""

    section: ClassVar[str] = "train"
    epochs: int = 30
    batch_size: int = 256  # global batch (all workers); each worker gets batch_size / workers
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.0  # 0: derived from the cluster, leaving CPUs for Ray Data
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    sync_bn: bool = False  # SyncBatchNorm across workers (SimCLR uses global BN on TPUs)
    channels_last: Literal["auto", "on", "off"] = "auto"  # NHWC memory format for convolutions (auto: with a GPU)
    compile: bool = False  # torch.compile the model
    checkpoint_every: int = 1  # epochs between checkpoints (the last epoch always checkpoints)
    keep_checkpoints: int = 2
    # lost worker processes or nodes Ray Train recovers from, each time from the newest checkpoint (-1:
    # unlimited; preemptions announced by the cloud are not counted): spot clusters need no person
    max_failures: int = 3
    stop_after_epoch: int = 0  # stop (checkpointed) after this epoch; re-run the same name to go on (0: off)
    seed: int = 0
    log_every_steps: int = 10  # progress line and step-loss metric every N steps
    storage_path: str = ""  # checkpoints: a local folder or s3://, gs:// URI ("" -> ./simclr_runs)
    name: str = ""  # run name; re-running with the same name resumes it ("" -> generated)

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(self.epochs >= 1, s, "epochs", ">= 1", self.epochs)
        check(self.batch_size >= 2, s, "batch_size", ">= 2", self.batch_size)
        check(self.workers >= 1, s, "workers", ">= 1", self.workers)
        check(self.cpus_per_worker >= 0.0, s, "cpus_per_worker", ">= 0 (0 = derived)", self.cpus_per_worker)
        check(self.checkpoint_every >= 1, s, "checkpoint_every", ">= 1", self.checkpoint_every)
        check(self.keep_checkpoints >= 1, s, "keep_checkpoints", ">= 1", self.keep_checkpoints)
        check(self.max_failures >= -1, s, "max_failures", ">= -1 (-1 = unlimited)", self.max_failures)
        check(self.stop_after_epoch >= 0, s, "stop_after_epoch", ">= 0 (0 = off)", self.stop_after_epoch)
        check(self.log_every_steps >= 1, s, "log_every_steps", ">= 1", self.log_every_steps)
        if self.batch_size % self.workers:
            raise ConfigError(
                f"train.batch_size ({self.batch_size}) must be divisible by train.workers ({self.workers})"
            )
        if self.batch_size // self.workers < 2:
            raise ConfigError(
                f"train.batch_size / train.workers must be >= 2 (NT-Xent needs negatives on every worker); "
                f"got {self.batch_size} / {self.workers}"
            )

    @property
    def worker_batch_size(self) -> int:
        return self.batch_size // self.workers


@dataclass
class EvalConfig:
    """kNN monitor each epoch, linear probe at the end (both on frozen backbone features)."""

    section: ClassVar[str] = "eval"
    knn_k: int = 200
    knn_temperature: float = 0.1
    every_epochs: int = 1  # kNN every N epochs (and before the first epoch)
    linear_probe_epochs: int = 100  # 0 = no linear probe

    def __post_init__(self) -> None:
        s = self.section
        check(self.knn_k >= 1, s, "knn_k", ">= 1", self.knn_k)
        check(self.knn_temperature > 0.0, s, "knn_temperature", "> 0", self.knn_temperature)
        check(self.every_epochs >= 1, s, "every_epochs", ">= 1", self.every_epochs)
        check(self.linear_probe_epochs >= 0, s, "linear_probe_epochs", ">= 0", self.linear_probe_epochs)


@dataclass
class TrackingConfig:
    """MLflow. The URI falls back to MLFLOW_TRACKING_URI, then to ./mlflow.db (sqlite)."""

    section: ClassVar[str] = "tracking"
    uri: str = ""
    experiment: str = "simclr"
    # the finished run's encoder (a sweep's: its best trial's) as a new version of this registered model in
    # MLflow's Model Registry, with register_alias pointing at it ("": not registered)
    register: str = ""
    register_alias: str = "candidate"

    def __post_init__(self) -> None:
        s = self.section
        check(bool(self.experiment), s, "experiment", "a non-empty name", self.experiment)
        check("/" not in self.register and ":" not in self.register, s, "register",
              "a registered model's name, without '/' or ':'", self.register)
        # MLflow's rule for aliases; "latest" and v<number> are its own names for versions
        check(bool(re.fullmatch(r"[A-Za-z0-9_-]+", self.register_alias)) and self.register_alias.lower() != "latest"
              and not re.fullmatch(r"[vV]\d+", self.register_alias), s, "register_alias",
              "letters, digits, '_' or '-', not 'latest' nor v<number>", self.register_alias)


# the sections every method reads; a method's own come from its Method.sections (workloads/methods.py lists them)
SHARED_SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig,
    "tracking": TrackingConfig,
}

S = TypeVar("S")


class Config:
    """The whole resolved configuration of one training run: its method's name, the shared sections, and the
    sections that method reads (``Method.sections``), no other method's.

    Shared sections are attributes (``cfg.train.epochs``); the method's own are read typed with ``get``
    (``cfg.get(MoCoConfig).queue_size``). On construction each section checks its own fields, then the
    method checks the rules across sections (``Method.check_config``).
    """

    def __init__(self, method: str = "", data: DataConfig | None = None, model: ModelConfig | None = None,
                 optim: OptimConfig | None = None, train: TrainConfig | None = None,
                 eval: EvalConfig | None = None, tracking: TrackingConfig | None = None, **sections: object) -> None:
        table = _methods()
        self.method = method or _default_method()
        check(self.method in table, "config", "method", f"one of {', '.join(table)}", self.method)
        running = table[self.method]
        self.data = data if data is not None else DataConfig()
        self.model = model if model is not None else ModelConfig()
        self.optim = optim if optim is not None else OptimConfig()
        self.train = train if train is not None else TrainConfig()
        self.eval = eval if eval is not None else EvalConfig()
        self.tracking = tracking if tracking is not None else TrackingConfig()
        foreign = sorted(set(sections) - set(running.sections))
        if foreign:
            raise ConfigError(_not_this_methods(foreign[0], self.method, list(running.sections)))
        self.sections: dict[str, object] = {}
        for name, cls in running.sections.items():
            value = sections.get(name)
            if value is not None and not isinstance(value, cls):
                raise TypeError(f"section {name!r} of method {self.method!r} is a {cls.__name__}; "
                                f"got {type(value).__name__}")
            self.sections[name] = value if value is not None else cls()
        running.check_config(self)

    def get(self, cls: type[S]) -> S:
        """This config's section of dataclass ``cls``, typed: ``cfg.get(SwAVConfig).temperature``."""
        for name in self.section_names():
            value = self.section(name)
            if isinstance(value, cls):
                return value
        raise LookupError(f"method {self.method!r} reads no {cls.__name__} section (its sections: "
                          f"{', '.join(self.section_names())}); list it in the method's Method.sections")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclasses it holds

    def __repr__(self) -> str:
        parts = [f"method={self.method!r}"] + [f"{name}={self.section(name)!r}" for name in self.section_names()]
        return f"Config({', '.join(parts)})"

    def section_names(self) -> list[str]:
        return [*SHARED_SECTIONS, *self.sections]

    def section(self, name: str) -> object:
        """A section by its name (``"data"``, ``"loss"``), for code that walks every section."""
        return getattr(self, name) if name in SHARED_SECTIONS else self.sections[name]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **{name: to_plain(self.section(name)) for name in self.section_names()}}

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"loss.temperature": 0.5, ...}``: MLflow params and Tune search keys."""
        flat: dict[str, Any] = {"method": self.method}
        for name, value in self.to_dict().items():
            if name != "method":
                flat.update({f"{name}.{k}": v for k, v in value.items()})
        return flat

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """The config of a plain dict (a YAML's, ``--set``'s, Ray's): the shared sections and those of its
        ``method`` (default: the default method); a key of another method's section is an error naming it."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping of fields; got {type(data).__name__} {data!r}")
        method = _method_of(data)
        own = _methods()[method].sections
        types = {**SHARED_SECTIONS, **own}
        for key in sorted(set(data) - {"method", *types}, key=str):
            if any(key in m.sections for m in _methods().values()):
                raise ConfigError(_not_this_methods(_first_key(key, data[key]), method, list(own)))
            raise ConfigError(f"unknown key {key!r}; known keys of config: {', '.join(['method', *types])}")
        sections = {name: from_plain(types[name], value, name) for name, value in data.items() if name != "method"}
        return cls(method, **sections)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> Config:
        """``from_dict`` of a config this program saved (a checkpoint's, a sweep's), which may hold sections
        of methods other than its own that its method never read: those are dropped, not an error."""
        if not isinstance(data, dict):
            return cls.from_dict(data)
        method = _method_of(data)
        others = {name for m in _methods().values() for name in m.sections} - set(_methods()[method].sections)
        return cls.from_dict({k: v for k, v in data.items() if k not in others})

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A new config with dotted overrides applied (``{"loss.temperature": 0.2}``), re-validated.

        An override of ``method`` keeps the sections both methods read and starts the new method's others
        from their defaults; this method's sections that the new one does not read are dropped, unless an
        override names them (then it is an error, as in ``from_dict``)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            set_dotted(data, dotted, value)
        new = _methods().get(data["method"]) if isinstance(data["method"], str) else None
        if new is not None and new.name != self.method:
            named = {dotted.split(".")[0] for dotted in overrides}
            for name in set(self.sections) - set(new.sections) - named:
                del data[name]
        return Config.from_dict(data)


def _methods() -> dict[str, Method]:
    """The methods table, name -> workload. Imported when a Config is built, not with this module: the table
    (workloads/methods.py) imports every method folder, and each of those imports this module."""
    from workloads import methods

    return methods.METHODS


def _default_method() -> str:
    from workloads import methods

    return methods.DEFAULT_METHOD


def _method_of(data: dict[str, Any]) -> str:
    """A config dict's method (its ``method`` key, else the default), checked against the table."""
    method: str = coerce(str, data.get("method", ""), "method") or _default_method()
    table = _methods()
    check(method in table, "config", "method", f"one of {', '.join(table)}", method)
    return method


def _first_key(section: str, value: Any) -> str:
    """``moco.queue_size`` for a section given as ``{queue_size: ...}``; the section's name otherwise."""
    return f"{section}.{next(iter(value))}" if isinstance(value, dict) and value else section


def _not_this_methods(key: str, method: str, own: list[str]) -> str:
    """The error for a key of a section that ``method`` does not read, naming the methods that do."""
    section = key.split(".")[0]
    owners = [name for name, m in _methods().items() if section in m.sections]
    if not owners:
        return f"unknown section {section!r}; method {method!r} reads {', '.join([*SHARED_SECTIONS, *own])}"
    who, which = ((f"method {owners[0]!r}", "that method") if len(owners) == 1 else
                  ("methods " + ", ".join(repr(o) for o in owners), "one of them"))
    return (f"key {key!r} belongs to {who}, not to this config's method {method!r}: remove it, or train "
            f"{which} (--method {owners[0]}, or method: {owners[0]} in the YAML)")
