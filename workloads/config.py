"""Typed configuration: one dataclass per concern, validated on construction.

This module holds the sections every method reads (data, model, optim, train, eval, tracking) and names
no method: each method folder declares its own sections (``aug`` in workloads/augment/views.py, ``loss`` in
workloads/contrastive.py, one named after the method in its folder), and ``Config`` composes those of the
registered methods (workloads/registry.py) under their names, so ``cfg.<section>.<field>`` and
``--set <section>.<field>=...`` read as the shared ones do.

Dicts exist only at the boundaries (YAML, ``--set``, Ray's ``train_loop_config``, MLflow params);
``Config.from_dict`` turns a dict back into the typed tree and rejects unknown keys and bad values
with an error that names the dotted field and the allowed range (torchtitan-style).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from workloads import registry
from workloads.fields import ConfigError, check, coerce, from_plain, set_dotted, to_plain

DATA_SOURCES = (
    "digits", "synthetic", "cifar10", "cifar100", "stl10", "mnist", "fashion_mnist",
    "imagefolder", "parquet", "images",
)


@dataclass
class DataConfig:
    """Where images come from and how Ray Data prepares them."""

    section: ClassVar[str] = "data"
    source: str = "digits"
    root: str = ""  # local root of a torchvision-format dataset or an ImageFolder tree
    uri: str = ""  # parquet / image files: a path or s3://, gs:// URI (file, folder or glob)
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
    bad_images: str = "skip"  # skip (and count) or fail on an unreadable image
    cache_decoded: bool = True  # keep decoded images in the object store, decode once
    augment_batch_size: int = 256  # images per Ray Data augmentation task
    augment_workers: int = 0  # concurrent augmentation tasks (0: Ray Data decides)
    prefetch_batches: int = 2  # batches prefetched by each train worker's iterator
    eval_bank_size: int = 10000  # at most this many labelled train images in the kNN bank
    eval_test_size: int = 2000  # at most this many held-out images evaluated
    eval_root: str = ""  # file sources: a labelled ImageFolder tree (ImageNet's val/) for the kNN queries

    def __post_init__(self) -> None:
        s = self.section
        check(self.source in DATA_SOURCES, s, "source", f"one of {', '.join(DATA_SOURCES)}", self.source)
        check(self.image_size >= 4, s, "image_size", ">= 4", self.image_size)
        check(self.decode_size == 0 or self.decode_size >= 4, s, "decode_size", "0 or >= 4", self.decode_size)
        check(self.num_samples >= 2, s, "num_samples", ">= 2", self.num_samples)
        check(self.num_classes >= 1, s, "num_classes", ">= 1", self.num_classes)
        check(0.0 <= self.holdout_fraction < 1.0, s, "holdout_fraction", "in [0, 1)", self.holdout_fraction)
        check(self.bad_images in ("skip", "fail"), s, "bad_images", "'skip' or 'fail'", self.bad_images)
        check(self.augment_batch_size >= 1, s, "augment_batch_size", ">= 1", self.augment_batch_size)
        check(self.augment_workers >= 0, s, "augment_workers", ">= 0", self.augment_workers)
        check(self.prefetch_batches >= 0, s, "prefetch_batches", ">= 0", self.prefetch_batches)
        check(self.eval_bank_size >= 1, s, "eval_bank_size", ">= 1", self.eval_bank_size)
        check(self.eval_test_size >= 1, s, "eval_test_size", ">= 1", self.eval_test_size)
        if self.source in ("parquet", "images"):
            check(bool(self.uri), s, "uri", f"set for source {self.source!r} (a path or s3://, gs:// URI)", self.uri)
        if self.source in ("cifar10", "cifar100", "stl10", "mnist", "fashion_mnist", "imagefolder"):
            check(bool(self.root), s, "root", f"set for source {self.source!r} (a local folder)", self.root)
        if self.eval_root:
            check(self.source in ("imagefolder", "images", "parquet"), s, "eval_root",
                   "empty unless the source is imagefolder, images or parquet (the others have a test split)",
                   self.eval_root)

    @property
    def stored_size(self) -> int:
        return self.decode_size or self.image_size


@dataclass
class ModelConfig:
    """Encoder and projection head."""

    section: ClassVar[str] = "model"
    arch: str = "small_resnet"  # resnet18 | resnet34 | resnet50 | small_resnet | vit (methods that build a ViT)
    cifar_stem: bool = True  # 3x3 stride-1 first conv, no max-pool: for images <= 64 px
    widths: tuple[int, ...] = (32, 64, 128)  # small_resnet stage widths
    blocks: tuple[int, ...] = (1, 1, 1)  # small_resnet blocks per stage
    proj_hidden_dim: int = 0  # 0: the encoder's feature dimension
    proj_dim: int = 128
    proj_layers: int = 2
    patch_size: int = 2  # vit: side of a square patch in pixels (the image side must be a multiple)
    vit_dim: int = 128  # vit: token width
    vit_depth: int = 4  # vit: transformer blocks
    vit_heads: int = 4  # vit: attention heads (vit_dim must be a multiple)

    def __post_init__(self) -> None:
        s = self.section
        archs = ("resnet18", "resnet34", "resnet50", "small_resnet", "vit")
        check(self.arch in archs, s, "arch", f"one of {', '.join(archs)}", self.arch)
        check(len(self.widths) >= 1 and all(w >= 1 for w in self.widths), s, "widths",
               "a non-empty list of positive ints", self.widths)
        check(len(self.blocks) == len(self.widths) and all(b >= 1 for b in self.blocks), s, "blocks",
               "a list of positive ints as long as model.widths", self.blocks)
        check(self.proj_hidden_dim >= 0, s, "proj_hidden_dim", ">= 0 (0: the feature dimension)",
               self.proj_hidden_dim)
        check(self.proj_dim >= 1, s, "proj_dim", ">= 1", self.proj_dim)
        check(self.proj_layers in (2, 3), s, "proj_layers", "2 or 3", self.proj_layers)
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
    name: str = "lars"  # lars | sgd | adamw
    lr: float = 0.3  # base learning rate, scaled by lr_scaling with the global batch
    lr_scaling: str = "linear"  # linear (lr*B/256) | sqrt (lr*sqrt(B)) | none
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 0.001  # LARS trust coefficient
    warmup_epochs: float = 10.0
    final_lr: float = 0.0  # learning rate at the last step
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    betas: tuple[float, ...] = (0.9, 0.999)  # adamw's (beta1, beta2); MAE uses (0.9, 0.95)

    def __post_init__(self) -> None:
        s = self.section
        check(self.name in ("lars", "sgd", "adamw"), s, "name", "one of lars, sgd, adamw", self.name)
        check(self.lr > 0.0, s, "lr", "> 0", self.lr)
        check(self.lr_scaling in ("linear", "sqrt", "none"), s, "lr_scaling", "one of linear, sqrt, none",
               self.lr_scaling)
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
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    sync_bn: bool = False  # SyncBatchNorm across workers (SimCLR uses global BN on TPUs)
    channels_last: str = "auto"  # auto (on with a GPU) | on | off: NHWC memory format for convolutions
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
        s = self.section
        check(self.epochs >= 1, s, "epochs", ">= 1", self.epochs)
        check(self.batch_size >= 2, s, "batch_size", ">= 2", self.batch_size)
        check(self.workers >= 1, s, "workers", ">= 1", self.workers)
        check(self.cpus_per_worker >= 0.0, s, "cpus_per_worker", ">= 0 (0 = derived)", self.cpus_per_worker)
        check(self.precision in ("auto", "fp32", "bf16"), s, "precision", "one of auto, fp32, bf16",
               self.precision)
        check(self.channels_last in ("auto", "on", "off"), s, "channels_last", "one of auto, on, off",
               self.channels_last)
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

    def __post_init__(self) -> None:
        check(bool(self.experiment), self.section, "experiment", "a non-empty name", self.experiment)


# the sections every method reads; a method's own sections come from the registry (workloads/registry.py)
SHARED_SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig, "eval": EvalConfig,
    "tracking": TrackingConfig,
}


S = TypeVar("S")


class Config:
    """The whole resolved configuration of one training run: the method's name, the shared sections, and
    a section of every registered method's (``cfg.loss``, ``cfg.<method>``: attributes, as the shared ones).

    A registered method's sections are present whichever method runs (a YAML may carry them), but only
    the running method's reach MLflow. On construction each section checks its own fields, then the
    method checks the rules across sections (``Method.check_config``).
    """

    def __init__(self, method: str = "", data: DataConfig | None = None, model: ModelConfig | None = None,
                 optim: OptimConfig | None = None, train: TrainConfig | None = None,
                 eval: EvalConfig | None = None, tracking: TrackingConfig | None = None, **sections: Any) -> None:
        self.method = method or registry.default_method()  # "": the first registered (methods.py)
        self.data = data if data is not None else DataConfig()
        self.model = model if model is not None else ModelConfig()
        self.optim = optim if optim is not None else OptimConfig()
        self.train = train if train is not None else TrainConfig()
        self.eval = eval if eval is not None else EvalConfig()
        self.tracking = tracking if tracking is not None else TrackingConfig()
        types = method_sections()
        unknown = sorted(set(sections) - set(types), key=str)
        if unknown:
            known = ", ".join([*SHARED_SECTIONS, *types])
            raise ConfigError(f"unknown section {unknown[0]!r}; known sections: {known}")
        self.sections: dict[str, Any] = {name: sections[name] if name in sections else cls()
                                         for name, cls in types.items()}
        check(self.method in registry.METHODS, "config", "method", f"one of {', '.join(registry.METHODS)}",
              self.method)
        registry.METHODS[self.method].check_config(self)

    def __getattr__(self, name: str) -> Any:
        """A registered method's section: ``cfg.loss``, ``cfg.<method>``."""
        sections = self.__dict__.get("sections", {})  # not yet set while unpickling
        if name in sections:
            return sections[name]
        raise AttributeError(f"Config has no section {name!r}")

    def get(self, cls: type[S]) -> S:
        """This config's section of dataclass ``cls``, typed: ``cfg.get(SwAVConfig).temperature``."""
        for name in self.section_names():
            value = self.section(name)
            if isinstance(value, cls):
                return value
        raise LookupError(f"no {cls.__name__} section (sections: {', '.join(self.section_names())})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclasses it holds

    def __repr__(self) -> str:
        parts = [f"method={self.method!r}"] + [f"{name}={self.section(name)!r}" for name in self.section_names()]
        return f"Config({', '.join(parts)})"

    def section_names(self) -> list[str]:
        return [*SHARED_SECTIONS, *self.sections]

    def section(self, name: str) -> Any:
        return getattr(self, name) if name in SHARED_SECTIONS else self.sections[name]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **{name: to_plain(self.section(name)) for name in self.section_names()}}

    def to_flat_dict(self) -> dict[str, Any]:
        """``{"loss.temperature": 0.5, ...}``: MLflow params and Tune search keys.

        Sections of other methods are left out (a run has no params of another method's own section)."""
        running = registry.METHODS.get(self.method)
        own = set(running.sections) if running is not None else set()
        flat: dict[str, Any] = {"method": self.method}
        for name, value in self.to_dict().items():
            if name in SHARED_SECTIONS or name in own:
                flat.update({f"{name}.{k}": v for k, v in value.items()})
        return flat

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping of fields; got {type(data).__name__} {data!r}")
        types = {**SHARED_SECTIONS, **method_sections()}
        unknown = sorted(set(data) - {"method", *types}, key=str)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r}; known keys of config: {', '.join(['method', *types])}")
        kwargs = {name: coerce(str, value, name) if name == "method" else from_plain(types[name], value, name)
                  for name, value in data.items()}
        return cls(**kwargs)

    def replace(self, overrides: dict[str, Any]) -> Config:
        """A new config with dotted overrides applied (``{"loss.temperature": 0.2}``), re-validated."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            set_dotted(data, dotted, value)
        return Config.from_dict(data)


def method_sections() -> dict[str, type]:
    """The registered methods' sections, name -> dataclass; none may shadow a shared one."""
    types = registry.section_types()
    for name in types:
        if name in SHARED_SECTIONS or name in ("method", "sections"):
            raise ConfigError(f"a method's config section may not be named {name!r} (a shared section or "
                              f"attribute of Config)")
    return types
