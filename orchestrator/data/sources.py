"""Dataset sources: readers for each on-disk format, with no Ray in them.

Each in-memory source returns uint8 images (N, H, W, 3) and int64 labels (-1 where unknown).
File sources (ImageFolder trees, image files, Parquet) return a listing that Ray Data reads and
decodes in parallel (see ``orchestrator.data``); which source uses which reader is
orchestrator/data/catalog.py's table. The torchvision-format readers parse the files
themselves rather than through ``torchvision.datasets`` classes, whose integrity checks (md5 of the
official archives) reject anything but the official bytes; torchvision is still what downloads them.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

from orchestrator import storage
from orchestrator.errors import BadImageError, UserError
from workloads.decode import decode_image, decode_whole

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


@dataclass
class ArraySplit:
    """Decoded images in memory: (N, H, W, 3) uint8 and (N,) int64 labels, -1 where unknown."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ArraySource:
    """An in-memory dataset: a pretraining split and, when the format has one, its own test split."""

    train: ArraySplit
    test: ArraySplit | None
    num_classes: int


# --- scikit-learn digits and synthetic -------------------------------------------------------------


def load_digits() -> ArraySource:
    """scikit-learn's 1,797 8x8 digits (pixel values 0..16), grayscale repeated to 3 channels."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    gray = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # N x 8 x 8
    images = np.repeat(gray[..., None], 3, axis=-1)  # N x 8 x 8 x 3
    return ArraySource(ArraySplit(images, bunch.target.astype(np.int64)), None, num_classes=10)


def synthetic(num_samples: int, num_classes: int, size: int, seed: int) -> ArraySource:
    """Images with class structure a contrastive model can learn: a class-specific grating
    (orientation and frequency) under a random colour, phase, brightness and noise per image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_samples)
    angle = np.pi * labels / num_classes  # N
    freq = 1.0 + (labels % 3)  # N
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    proj = (np.cos(angle)[:, None, None] * xs + np.sin(angle)[:, None, None] * ys) / size  # N x H x W
    phase = rng.uniform(0, 2 * np.pi, size=(num_samples, 1, 1))
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq[:, None, None] * proj + phase)  # N x H x W in [0,1]
    colour = rng.uniform(0.3, 1.0, size=(num_samples, 1, 1, 3))
    img = wave[..., None] * colour + rng.normal(0, 0.05, size=(num_samples, size, size, 3))
    images = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return ArraySource(ArraySplit(images, labels.astype(np.int64)), None, num_classes=num_classes)


# --- torchvision formats ----------------------------------------------------------------------------


def load_torchvision(source: str, root: str, split: str, download: bool) -> ArraySource:
    """CIFAR-10/100, STL-10, MNIST, Fashion-MNIST read from ``root`` in torchvision's layout."""
    if download:
        _download(source, root)
    train, test, num_classes = _TORCHVISION[source][0](root, split)
    return ArraySource(train, test, num_classes)


def _download(source: str, root: str) -> None:
    """Fetch the official archives through torchvision (which verifies their checksums)."""
    import torchvision.datasets as tvd

    try:
        cls = getattr(tvd, _TORCHVISION[source][1])
        if source == "stl10":
            for split in ("train", "test", "unlabeled"):
                cls(root, split=split, download=True)
            return
        for train in (True, False):
            cls(root, train=train, download=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        raise UserError(f"data.download: could not download {source} into {root}: {err}") from err


def _missing(source: str, path: str, root: str) -> UserError:
    return UserError(
        f"data.root: no {source} files at {path}; point data.root at the folder that holds them "
        f"(now {root!r}) or set data.download=true to fetch them"
    )


def _unpickle(path: str) -> dict[bytes, object]:
    with open(path, "rb") as f:
        out: dict[bytes, object] = pickle.load(f, encoding="bytes")
    return out


def _cifar_split(paths: list[str], label_key: bytes) -> ArraySplit:
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        images.append(data.transpose(0, 2, 3, 1))  # N x 32 x 32 x 3
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return ArraySplit(np.concatenate(images), np.concatenate(labels))


def _read_cifar10(root: str, split: str) -> tuple[ArraySplit, ArraySplit, int]:
    base = os.path.join(root, "cifar-10-batches-py")
    train = [os.path.join(base, f"data_batch_{i}") for i in range(1, 6)]
    test = [os.path.join(base, "test_batch")]
    if not all(os.path.isfile(p) for p in train + test):
        raise _missing("CIFAR-10", base + " (data_batch_1..5, test_batch)", root)
    return _cifar_split(train, b"labels"), _cifar_split(test, b"labels"), 10


def _read_cifar100(root: str, split: str) -> tuple[ArraySplit, ArraySplit, int]:
    base = os.path.join(root, "cifar-100-python")
    train, test = os.path.join(base, "train"), os.path.join(base, "test")
    if not (os.path.isfile(train) and os.path.isfile(test)):
        raise _missing("CIFAR-100", base + " (train, test)", root)
    return _cifar_split([train], b"fine_labels"), _cifar_split([test], b"fine_labels"), 100


def _read_stl10(root: str, split: str) -> tuple[ArraySplit, ArraySplit, int]:
    base = os.path.join(root, "stl10_binary")

    def images(name: str) -> np.ndarray:
        path = os.path.join(base, f"{name}_X.bin")
        if not os.path.isfile(path):
            raise _missing("STL-10", path, root)
        raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3, 96, 96)
        return raw.transpose(0, 3, 2, 1)  # column-major on disk -> N x 96 x 96 x 3

    def labels(name: str) -> np.ndarray:
        path = os.path.join(base, f"{name}_y.bin")
        if not os.path.isfile(path):
            raise _missing("STL-10", path, root)
        return np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # 1..10 on disk

    if split not in ("train", "unlabeled", "train+unlabeled"):
        raise UserError(f"data.split must be train, unlabeled or train+unlabeled for stl10; got {split!r}")
    labelled = ArraySplit(images("train"), labels("train"))
    if split == "train":
        train = labelled
    else:
        unl = images("unlabeled")
        unl_split = ArraySplit(unl, np.full(len(unl), -1, dtype=np.int64))
        train = unl_split if split == "unlabeled" else ArraySplit(
            np.concatenate([labelled.images, unl]), np.concatenate([labelled.labels, unl_split.labels]))
    return train, ArraySplit(images("test"), labels("test")), 10


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"data.root: {path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_mnist(root: str, split: str, folder: str) -> tuple[ArraySplit, ArraySplit, int]:
    base = os.path.join(root, folder, "raw")

    def find(stem: str) -> str:
        for path in (os.path.join(base, stem), os.path.join(base, stem + ".gz")):
            if os.path.isfile(path):
                return path
        raise _missing(folder, os.path.join(base, stem), root)

    def load(prefix: str) -> ArraySplit:
        gray = _read_idx(find(f"{prefix}-images-idx3-ubyte"))  # N x 28 x 28
        labels = _read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        return ArraySplit(np.repeat(gray[..., None], 3, axis=-1), labels)

    return load("train"), load("t10k"), 10


Reader = Callable[[str, str], tuple[ArraySplit, ArraySplit, int]]  # (root, split) -> train, test, classes
# Each torchvision format: its reader, and the torchvision.datasets class that downloads it.
_TORCHVISION: dict[str, tuple[Reader, str]] = {
    "cifar10": (_read_cifar10, "CIFAR10"),
    "cifar100": (_read_cifar100, "CIFAR100"),
    "stl10": (_read_stl10, "STL10"),
    "mnist": (lambda r, s: _read_mnist(r, s, "MNIST"), "MNIST"),
    "fashion_mnist": (lambda r, s: _read_mnist(r, s, "FashionMNIST"), "FashionMNIST"),
}
TORCHVISION_SOURCES = tuple(_TORCHVISION)


# --- files: ImageFolder trees, image files, Parquet --------------------------------------------------


@dataclass
class FileListing:
    """Image files to read with Ray Data, with labels from ImageFolder class folders (or -1)."""

    paths: list[str]
    labels: list[int]
    classes: list[str]
    filesystem: pafs.FileSystem


def list_image_folder(root: str, field: str = "data.root") -> FileListing:
    """torchvision ImageFolder layout: ``root/<class>/<image>``; classes sorted, index = label."""
    fs, base = storage.filesystem(root, field)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound and storage.is_uri(root):
        raise storage.missing_remote(field, root, fs, base)
    if info.type != pafs.FileType.Directory:
        raise UserError(f"{field}: {root!r} is not a folder of class folders (root/<class>/<image>)")
    entries = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    classes = sorted(e.base_name for e in fs.get_file_info(pafs.FileSelector(base))
                     if e.type == pafs.FileType.Directory)
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for e in sorted(entries, key=lambda e: e.path):
        if e.type != pafs.FileType.File or not e.path.lower().endswith(IMG_EXTENSIONS):
            continue
        rel = os.path.relpath(e.path, base).split(os.sep)
        if len(rel) < 2:
            continue  # a file directly under root belongs to no class
        paths.append(e.path)
        labels.append(index[rel[0]])
    if not paths:
        raise UserError(f"{field}: no images ({', '.join(IMG_EXTENSIONS)}) under class folders in {root!r}")
    return FileListing(paths, labels, classes, fs)


def list_image_files(uri: str) -> FileListing:
    """Image files by URI: one file, or every image file under a folder (recursively)."""
    fs, base = storage.filesystem(uri, "data.uri")
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        paths = [base]
    elif info.type == pafs.FileType.Directory:
        paths = sorted(e.path for e in fs.get_file_info(pafs.FileSelector(base, recursive=True))
                       if e.type == pafs.FileType.File and e.path.lower().endswith(IMG_EXTENSIONS))
    elif storage.is_uri(uri):
        raise storage.missing_remote("data.uri", uri, fs, base)
    else:
        raise UserError(f"data.uri: {uri!r} does not exist")
    if not paths:
        raise UserError(f"data.uri: no image files ({', '.join(IMG_EXTENSIONS)}) in {uri!r}")
    return FileListing(paths, [-1] * len(paths), [], fs)


def parquet_location(uri: str) -> tuple[pafs.FileSystem, str]:
    """Check that a Parquet URI exists before Ray Data reads it."""
    fs, path = storage.filesystem(uri, "data.uri")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        if storage.is_uri(uri):
            raise storage.missing_remote("data.uri", uri, fs, path)
        raise UserError(f"data.uri: {uri!r} does not exist")
    return fs, path


def read_file(fs: pafs.FileSystem, path: str) -> bytes | None:
    """A file's bytes; None when it is missing or cannot be read (the bad-image policy then applies)."""
    try:
        with fs.open_input_file(path) as f:
            return bytes(f.read())
    except OSError:
        return None


# --- decoding ---------------------------------------------------------------------------------------


def decode_checked(data: bytes | None, size: int, name: str, center_square: bool = False,
                   whole: bool = False) -> np.ndarray:
    """``decode_image`` (``decode_whole`` with ``whole``, for the crop stage), or BadImageError naming
    the file when it cannot be decoded."""
    try:
        if not data:
            raise ValueError("empty file")
        if whole and not center_square:
            return decode_whole(data, size)
        return decode_image(data, size, center_square)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise BadImageError(
            f"unreadable image {name}: {err}; remove it, or set data.bad_images=skip to skip and count such files"
        ) from err


def decode_or_none(data: bytes | None, size: int, name: str, policy: str, center_square: bool = False,
                   whole: bool = False) -> np.ndarray | None:
    """``decode_checked`` under the bad-image policy: None to skip, or the BadImageError under ``fail``."""
    try:
        return decode_checked(data, size, name, center_square, whole)
    except BadImageError:
        if policy == "skip":
            return None
        raise
