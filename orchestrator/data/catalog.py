"""Every ``data.source``, declared once: how it loads, whether its runs evaluate on held-out labels, and
which paths it needs (checked before Ray starts).

``SOURCES`` is the one table: ``prepare`` loads through it, ``check_paths`` checks what it names, and
the sweep asks it whether runs report ``knn_top1``. ``workloads.config.Source`` names the same
sources for the config's own validation (tests/orchestrator/test_catalog.py holds the two together).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator import storage
from orchestrator.data import manifest, rows, sources
from orchestrator.data.rows import Rows
from orchestrator.errors import UserError
from workloads.config import DataConfig


@dataclass(frozen=True)
class PathNeed:
    """A path a source reads: the DataConfig field that names it and what must be there."""

    field: str  # "root" or "uri"
    folder: bool  # must be a folder (else a file or a folder)
    missing: str  # the error when the local path is missing: formatted with {value!r} and {source}
    downloadable: bool = False  # data.download=true fetches it, so it need not exist yet
    remote: bool = True  # may be an object-store URI


@dataclass(frozen=True)
class Source:
    # (cfg, seed, listings) -> the source's rows; listings: the folder where a run keeps the listings of the
    # folders it reads (orchestrator/data/manifest.py: listed), "" to list them every time
    load: Callable[[DataConfig, int, str], Rows]
    evaluates: Callable[[DataConfig], bool]  # whether runs report knn_top1 (a held-out labelled split)
    paths: tuple[PathNeed, ...] = ()


def _always(cfg: DataConfig) -> bool:
    return True


def _never(cfg: DataConfig) -> bool:
    return False


def _held_out(cfg: DataConfig) -> bool:
    return cfg.holdout_fraction > 0


def _stl10_labelled(cfg: DataConfig) -> bool:
    return cfg.split != "unlabeled"


def _parquet_labelled(cfg: DataConfig) -> bool:
    return bool(cfg.label_column) and cfg.holdout_fraction > 0


def _digits(cfg: DataConfig, seed: int, listings: str) -> Rows:
    return rows.from_arrays(sources.load_digits(), cfg.stored_size, cfg.source)


def _synthetic(cfg: DataConfig, seed: int, listings: str) -> Rows:
    src = sources.synthetic(cfg.num_samples, cfg.num_classes, cfg.stored_size, seed)
    return rows.from_arrays(src, cfg.stored_size, cfg.source)


def _torchvision(cfg: DataConfig, seed: int, listings: str) -> Rows:
    src = sources.load_torchvision(cfg.source, cfg.root, cfg.split, cfg.download)
    return rows.from_arrays(src, cfg.stored_size, cfg.root)


def _image_folder(cfg: DataConfig, seed: int, listings: str) -> Rows:
    listing = manifest.listed(lambda: sources.list_image_folder(cfg.root), cfg.root, "data.root", listings)
    return rows.from_listing(listing, cfg.root)


def _image_files(cfg: DataConfig, seed: int, listings: str) -> Rows:
    listing = manifest.listed(lambda: sources.list_image_files(cfg.uri), cfg.uri, "data.uri", listings)
    return rows.from_listing(listing, cfg.uri)


def _manifest(cfg: DataConfig, seed: int, listings: str) -> Rows:
    return rows.from_listing(manifest.read(cfg.manifest, cfg.root), cfg.manifest)


def _parquet(cfg: DataConfig, seed: int, listings: str) -> Rows:
    return rows.from_parquet(cfg)


_TORCHVISION_ROOT = PathNeed("root", folder=True, downloadable=True, remote=False,
                             missing="data.root: no such folder {value!r} for {source}; point data.root at the "
                                     "dataset's folder or set data.download=true to fetch it")
_URI = PathNeed("uri", folder=False,
                missing="data.uri: {value!r} does not exist; give a file, a folder or an s3:// / gs:// URI")

SOURCES: dict[str, Source] = {
    "digits": Source(_digits, _held_out),
    "synthetic": Source(_synthetic, _held_out),
    **{name: Source(_torchvision, _stl10_labelled if name == "stl10" else _always, (_TORCHVISION_ROOT,))
       for name in sources.TORCHVISION_SOURCES},
    "imagefolder": Source(_image_folder, _held_out, (PathNeed(
        "root", folder=True, missing="data.root: no such folder {value!r}; an ImageFolder tree is "
                                     "root/<class>/<image>"),)),
    "parquet": Source(_parquet, _parquet_labelled, (_URI,)),
    "images": Source(_image_files, _never, (_URI,)),
    "manifest": Source(_manifest, _held_out, (PathNeed(
        "manifest", folder=False, missing="data.manifest: no such file {value!r}; " + manifest.FIX),)),
}


def source(name: str) -> Source:
    return SOURCES[name]


def evaluates_on_labels(cfg: DataConfig) -> bool:
    """Whether runs report ``knn_top1``: labelled data with a held-out split (own test split or holdout)."""
    return SOURCES[cfg.source].evaluates(cfg)


def check_paths(cfg: DataConfig) -> None:
    """Fail fast, before Ray starts: a local path that does not exist, and an object-store URI that does
    not exist or that this process cannot read (endpoint, credentials), each one line naming its field."""
    if cfg.eval_root and storage.is_uri(cfg.eval_root):
        storage.check_remote("data.eval_root", cfg.eval_root)
    elif cfg.eval_root and storage.missing_locally(cfg.eval_root, folder=True):
        raise UserError(f"data.eval_root: no such folder {cfg.eval_root!r}; give a labelled ImageFolder tree "
                        f"(root/<class>/<image>, e.g. ImageNet's val/) or set data.eval_root= to train without it")
    for need in SOURCES[cfg.source].paths:
        value = getattr(cfg, need.field)
        if need.downloadable and cfg.download:
            continue
        if need.remote and storage.is_uri(value):
            storage.check_remote(f"data.{need.field}", value)
        elif storage.missing_locally(value, folder=need.folder) or storage.is_uri(value):
            raise UserError(need.missing.format(value=value, source=cfg.source))
