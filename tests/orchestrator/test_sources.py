"""Tests for orchestrator.data.sources: every on-disk format read back from small files the test writes.

No Ray here. Each writer builds the files from the format's own description (CIFAR's channel
planes, STL-10's column-major planes, MNIST's IDX header), not from the reader's transposes, so a
swapped axis or channel shows up as a wrong pixel.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from orchestrator.data import sources
from orchestrator.errors import BadImageError, UserError
from workloads.decode import MAX_ASPECT, decode_whole

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


# ----------------------------------------------------------------------------- writers


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    """An image (H, W, 3) uint8 array or PIL image as encoded bytes."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def solid(colour: tuple[int, int, int], h: int = 12, w: int = 12) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3)).copy()


def random_images(n: int, h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """CIFAR's row layout: 1024 red values (row-major 32x32), then 1024 green, then 1024 blue."""
    return np.stack([np.concatenate([img[:, :, c].ravel() for c in range(3)]) for img in images])


def write_pickle(path: Path, obj: dict[bytes, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                            np.ndarray]:
    """cifar-10-batches-py/data_batch_1..5 and test_batch; the first train image is pure red."""
    base = root / "cifar-10-batches-py"
    train = random_images(5 * per_batch, 32, 32, seed=1)
    train[0] = solid(RED, 32, 32)
    train_labels = np.arange(5 * per_batch) % 10
    for i in range(5):
        sl = slice(i * per_batch, (i + 1) * per_batch)
        write_pickle(base / f"data_batch_{i + 1}",
                     {b"batch_label": b"x", b"data": cifar_rows(train[sl]), b"labels": train_labels[sl].tolist()})
    test = random_images(n_test, 32, 32, seed=2)
    test_labels = (np.arange(n_test) * 3) % 10
    write_pickle(base / "test_batch", {b"data": cifar_rows(test), b"labels": test_labels.tolist()})
    return train, train_labels, test, test_labels


def stl_bytes(images: np.ndarray) -> bytes:
    """STL-10's binary layout: per image, per channel, the 96x96 plane in column-major order."""
    return b"".join(img[:, :, c].ravel(order="F").tobytes() for img in images for c in range(3))


def stl_pattern(n: int, seed: int) -> np.ndarray:
    """Random images whose top row is red and left column is blue: a transpose swaps them."""
    images = random_images(n, 96, 96, seed) // 2
    images[:, 0, :] = RED
    images[:, 1:, 0] = BLUE
    return images


def write_stl10(root: Path) -> dict[str, np.ndarray]:
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    out = {"train": stl_pattern(5, 1), "test": stl_pattern(3, 2), "unlabeled": stl_pattern(4, 3)}
    for name, images in out.items():
        (base / f"{name}_X.bin").write_bytes(stl_bytes(images))
    out["train_y"] = np.array([1, 2, 10, 5, 1], np.uint8)  # 1..10 on disk
    out["test_y"] = np.array([10, 3, 1], np.uint8)
    for name in ("train", "test"):
        (base / f"{name}_y.bin").write_bytes(out[f"{name}_y"].tobytes())
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, type 0x08 (unsigned byte), the number of dims, big-endian int32 dims, data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root: Path, folder: str, gz: bool) -> dict[str, np.ndarray]:
    base = root / folder / "raw"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(12) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 8, 7, 6, 5], np.uint8),
    }
    for name, array in out.items():
        if gz:
            with gzip.open(base / f"{name}.gz", "wb") as f:
                f.write(idx_bytes(array))
        else:
            (base / name).write_bytes(idx_bytes(array))
    return out


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_train_batches_in_order_and_test_batch_as_held_out(tmp_path: Path) -> None:
    train, train_labels, test, test_labels = write_cifar10(tmp_path)
    src = sources.load_torchvision("cifar10", str(tmp_path), "train", download=False)
    assert src.num_classes == 10
    assert src.train.images.shape == (20, 32, 32, 3) and src.train.images.dtype == np.uint8
    np.testing.assert_array_equal(src.train.images, train)
    np.testing.assert_array_equal(src.train.labels, train_labels)
    assert src.train.labels.dtype == np.int64
    assert src.test is not None
    np.testing.assert_array_equal(src.test.images, test)
    np.testing.assert_array_equal(src.test.labels, test_labels)


def test_cifar10_red_image_stays_red_in_hwc_order(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    src = sources.load_torchvision("cifar10", str(tmp_path), "train", download=False)
    assert (src.train.images[0] == RED).all()


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    base = tmp_path / "cifar-100-python"
    train, test = random_images(8, 32, 32, seed=3), random_images(3, 32, 32, seed=4)
    fine, coarse = [0, 99, 42, 7, 13, 55, 99, 1], [0, 19, 8, 1, 2, 11, 19, 0]
    write_pickle(base / "train", {b"data": cifar_rows(train), b"fine_labels": fine, b"coarse_labels": coarse})
    write_pickle(base / "test", {b"data": cifar_rows(test), b"fine_labels": [5, 6, 77], b"coarse_labels": [1, 1, 3]})
    src = sources.load_torchvision("cifar100", str(tmp_path), "train", download=False)
    assert src.num_classes == 100
    np.testing.assert_array_equal(src.train.images, train)
    np.testing.assert_array_equal(src.train.labels, fine)
    assert src.test is not None
    np.testing.assert_array_equal(src.test.images, test)
    np.testing.assert_array_equal(src.test.labels, [5, 6, 77])


# ----------------------------------------------------------------------------- STL-10


def test_stl10_column_major_planes_become_hwc_images(tmp_path: Path) -> None:
    written = write_stl10(tmp_path)
    src = sources.load_torchvision("stl10", str(tmp_path), "train", download=False)
    assert src.train.images.shape == (5, 96, 96, 3)
    np.testing.assert_array_equal(src.train.images, written["train"])
    assert (src.train.images[:, 0, :] == RED).all()  # top row, not left column
    assert (src.train.images[:, 1:, 0] == BLUE).all()
    assert src.test is not None
    np.testing.assert_array_equal(src.test.images, written["test"])


def test_stl10_labels_shift_from_1_10_to_0_9(tmp_path: Path) -> None:
    written = write_stl10(tmp_path)
    src = sources.load_torchvision("stl10", str(tmp_path), "train", download=False)
    assert src.num_classes == 10
    np.testing.assert_array_equal(src.train.labels, written["train_y"].astype(np.int64) - 1)
    assert src.test is not None
    np.testing.assert_array_equal(src.test.labels, [9, 2, 0])


def test_stl10_unlabeled_split_has_minus_one_labels(tmp_path: Path) -> None:
    written = write_stl10(tmp_path)
    src = sources.load_torchvision("stl10", str(tmp_path), "unlabeled", download=False)
    np.testing.assert_array_equal(src.train.images, written["unlabeled"])
    np.testing.assert_array_equal(src.train.labels, [-1] * 4)
    assert src.test is not None and len(src.test) == 3


def test_stl10_train_plus_unlabeled_concatenates_labelled_then_unlabeled(tmp_path: Path) -> None:
    written = write_stl10(tmp_path)
    src = sources.load_torchvision("stl10", str(tmp_path), "train+unlabeled", download=False)
    np.testing.assert_array_equal(src.train.images, np.concatenate([written["train"], written["unlabeled"]]))
    np.testing.assert_array_equal(src.train.labels, [0, 1, 9, 4, 0, -1, -1, -1, -1])


def test_stl10_rejects_an_unknown_split_naming_data_split(tmp_path: Path) -> None:
    write_stl10(tmp_path)
    with pytest.raises(UserError, match=r"data\.split"):
        sources.load_torchvision("stl10", str(tmp_path), "test", download=False)


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(("source", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files_read_as_grayscale_repeated_to_rgb(tmp_path: Path, source: str, folder: str,
                                                           gz: bool) -> None:
    written = write_mnist(tmp_path, folder, gz)
    src = sources.load_torchvision(source, str(tmp_path), "train", download=False)
    assert src.num_classes == 10
    assert src.train.images.shape == (12, 28, 28, 3) and src.train.images.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(src.train.images[..., c], written["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(src.train.labels, np.arange(12) % 10)
    assert src.test is not None
    np.testing.assert_array_equal(src.test.images[..., 1], written["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(src.test.labels, [9, 8, 7, 6, 5])


def test_mnist_rejects_a_file_that_is_not_idx(tmp_path: Path) -> None:
    write_mnist(tmp_path, "MNIST", gz=False)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03garbage")
    with pytest.raises(UserError, match=r"not an IDX file"):
        sources.load_torchvision("mnist", str(tmp_path), "train", download=False)


# ----------------------------------------------------------------------------- missing files, download


@pytest.mark.parametrize("source", sources.TORCHVISION_SOURCES)
def test_missing_root_without_download_names_data_root_and_suggests_download(tmp_path: Path, source: str) -> None:
    with pytest.raises(UserError, match=r"data\.root") as info:
        sources.load_torchvision(source, str(tmp_path / "nowhere"), "train", download=False)
    assert "data.download=true" in str(info.value)


def test_cifar10_with_one_batch_missing_is_reported_missing(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(UserError, match=r"data\.root"):
        sources.load_torchvision("cifar10", str(tmp_path), "train", download=False)


def fake_torchvision(monkeypatch: pytest.MonkeyPatch,
                     on_call: Callable[[str, str], object]) -> list[tuple[str, str, Any]]:
    """Stand-in ``torchvision.datasets`` (no network, no torch import) that records each construction."""
    calls: list[tuple[str, str, Any]] = []

    def dataset(name: str) -> type:
        class Fake:
            def __init__(self, root: str, train: bool = True, split: str = "", download: bool = False) -> None:
                assert download
                calls.append((name, root, split or train))
                on_call(name, root)

        return Fake

    datasets = types.ModuleType("torchvision.datasets")
    for name in ("CIFAR10", "CIFAR100", "STL10", "MNIST", "FashionMNIST"):
        setattr(datasets, name, dataset(name))
    package = types.ModuleType("torchvision")
    package.datasets = datasets  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    return calls


def test_download_true_fetches_through_torchvision_into_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data"
    calls = fake_torchvision(monkeypatch, lambda name, r: write_cifar10(Path(r)))
    src = sources.load_torchvision("cifar10", str(root), "train", download=True)
    assert calls == [("CIFAR10", str(root), True), ("CIFAR10", str(root), False)]
    assert len(src.train) == 20


def test_download_true_fetches_every_stl10_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_torchvision(monkeypatch, lambda name, r: None)
    write_stl10(tmp_path)
    sources.load_torchvision("stl10", str(tmp_path), "train", download=True)
    assert calls == [("STL10", str(tmp_path), s) for s in ("train", "test", "unlabeled")]


def test_download_failure_is_a_user_error_naming_data_download(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name: str, root: str) -> None:
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    fake_torchvision(monkeypatch, offline)
    with pytest.raises(UserError, match=r"data\.download: could not download mnist"):
        sources.load_torchvision("mnist", str(tmp_path), "train", download=True)


# ----------------------------------------------------------------------------- digits, synthetic


def test_digits_are_8x8_rgb_with_ten_classes() -> None:
    src = sources.load_digits()
    assert src.train.images.shape == (1797, 8, 8, 3) and src.train.images.dtype == np.uint8
    assert src.test is None and src.num_classes == 10
    assert src.train.images.max() == 255
    np.testing.assert_array_equal(src.train.images[..., 0], src.train.images[..., 2])
    assert set(src.train.labels.tolist()) == set(range(10))


def test_synthetic_is_deterministic_given_the_seed() -> None:
    a, b, c = (sources.synthetic(32, 4, 8, seed) for seed in (0, 0, 1))
    assert a.train.images.shape == (32, 8, 8, 3) and a.train.images.dtype == np.uint8
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.train.labels, b.train.labels)
    assert not np.array_equal(a.train.images, c.train.images)


def test_synthetic_classes_are_separable_by_their_grating() -> None:
    """The class sets the grating's orientation and frequency; colour and phase are random. So the
    Fourier magnitude (phase-free) of an image should sit nearest its own class's mean magnitude."""
    n, k = 200, 5
    src = sources.synthetic(n, k, 16, seed=0)
    assert src.num_classes == k and set(src.train.labels.tolist()) == set(range(k))
    gray = src.train.images.astype(np.float64).mean(-1)
    gray -= gray.mean(axis=(1, 2), keepdims=True)
    mag = np.abs(np.fft.fft2(gray)).reshape(n, -1)
    mag /= np.linalg.norm(mag, axis=1, keepdims=True)
    centroids = np.stack([mag[src.train.labels == c].mean(0) for c in range(k)])
    accuracy = (np.argmax(mag @ centroids.T, axis=1) == src.train.labels).mean()
    assert accuracy > 0.9


# ----------------------------------------------------------------------------- ImageFolder, files, Parquet


def write_image_folder(root: Path) -> None:
    """Two classes, PNG and JPEG, a nested folder, and non-image files that must be ignored."""
    for cls, colour in (("dog", BLUE), ("cat", RED)):
        (root / cls / "nested").mkdir(parents=True)
        (root / cls / "a.png").write_bytes(encode(solid(colour)))
        (root / cls / "b.JPG").write_bytes(encode(solid(colour), "JPEG"))
        (root / cls / "nested" / "c.png").write_bytes(encode(solid(colour)))
        (root / cls / "notes.txt").write_text("not an image")
    (root / "stray.png").write_bytes(encode(solid(GREEN)))  # directly under root: no class
    (root / "README").write_text("readme")
    (root / "empty_class").mkdir()


def test_image_folder_labels_are_sorted_class_indices(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    listing = sources.list_image_folder(str(tmp_path))
    assert listing.classes == ["cat", "dog", "empty_class"]
    names = [os.path.relpath(p, tmp_path) for p in listing.paths]
    assert names == ["cat/a.png", "cat/b.JPG", "cat/nested/c.png", "dog/a.png", "dog/b.JPG", "dog/nested/c.png"]
    assert listing.labels == [0, 0, 0, 1, 1, 1]


def test_image_folder_without_images_or_missing_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.txt").write_text("x")
    with pytest.raises(UserError, match=r"data\.root: no images"):
        sources.list_image_folder(str(tmp_path))
    with pytest.raises(UserError, match=r"data\.root"):
        sources.list_image_folder(str(tmp_path / "missing"))


def test_image_files_by_folder_single_file_and_file_uri(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    folder = sources.list_image_files(str(tmp_path))
    assert len(folder.paths) == 7  # six class images and the stray one; no .txt, no README
    assert folder.labels == [-1] * 7 and folder.classes == []
    one = sources.list_image_files(str(tmp_path / "cat" / "a.png"))
    assert one.paths == [str(tmp_path / "cat" / "a.png")]
    uri = sources.list_image_files(f"file://{tmp_path / 'dog'}")
    assert [os.path.basename(p) for p in uri.paths] == ["a.png", "b.JPG", "c.png"]
    with uri.filesystem.open_input_file(uri.paths[0]) as f:
        assert np.array_equal(sources.decode_image(f.read(), 4)[0, 0], BLUE)


def test_image_files_missing_or_empty_is_a_user_error_naming_data_uri(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.uri: .* does not exist"):
        sources.list_image_files(str(tmp_path / "missing"))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(UserError, match=r"data\.uri: no image files"):
        sources.list_image_files(str(tmp_path))


def test_parquet_location_checks_existence(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image": [encode(solid(RED))], "label": [0]}), path)
    fs, resolved = sources.parquet_location(str(path))
    assert fs.get_file_info(resolved).size == path.stat().st_size
    sources.parquet_location(f"file://{path}")
    with pytest.raises(UserError, match=r"data\.uri: .* does not exist"):
        sources.parquet_location(str(tmp_path / "nope.parquet"))


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(("w", "h"), [(60, 20), (20, 60)], ids=["wide", "tall"])
def test_decode_with_center_square_resizes_shorter_side_and_centre_crops(w: int, h: int) -> None:
    """Three square blocks along the long side, red | green | blue: the centre crop is all green."""
    blocks = [solid(c, 20, 20) for c in (RED, GREEN, BLUE)]
    image = np.concatenate(blocks, axis=1 if w > h else 0)
    out = sources.decode_image(encode(image), 10, center_square=True)
    assert out.shape == (10, 10, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[1:-1, 1:-1].reshape(-1, 3).astype(int), [GREEN] * 64, atol=2)


@pytest.mark.parametrize(("w", "h"), [(60, 20), (20, 60)], ids=["wide", "tall"])
def test_decode_keeps_the_whole_image_with_the_shorter_side_at_size(w: int, h: int) -> None:
    """red | green | blue blocks: all three survive, the shorter side is `size`, the aspect is kept."""
    blocks = [solid(c, 20, 20) for c in (RED, GREEN, BLUE)]
    image = np.concatenate(blocks, axis=1 if w > h else 0)
    out = sources.decode_image(encode(image), 10)
    assert out.shape == ((10, 30, 3) if w > h else (30, 10, 3)) and out.dtype == np.uint8
    thirds = np.split(out, 3, axis=1 if w > h else 0)
    for part, colour in zip(thirds, (RED, GREEN, BLUE), strict=True):
        np.testing.assert_allclose(part[1:-1, 1:-1].reshape(-1, 3).astype(int).mean(0), colour, atol=3)


def test_decode_bounds_a_panorama_longer_side() -> None:
    out = sources.decode_image(encode(solid(RED, 10, 100)), 8)  # 10:1 wide
    assert out.shape == (3, MAX_ASPECT * 8, 3)


@pytest.mark.parametrize("center_square", [False, True])
def test_decode_upscales_a_small_image(center_square: bool) -> None:
    out = sources.decode_image(encode(solid(BLUE, 4, 6)), 8, center_square)
    assert out.shape == ((8, 8, 3) if center_square else (8, 12, 3))
    assert (out == BLUE).all()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Image.new("L", (5, 7), 77), (77, 77, 77)),
        (lambda: Image.new("LA", (5, 7), (200, 10)), (200, 200, 200)),
        (lambda: Image.new("RGBA", (7, 5), (10, 20, 30, 128)), (10, 20, 30)),
        (lambda: Image.new("1", (6, 6), 1), (255, 255, 255)),
    ],
    ids=["gray", "gray_alpha", "rgba", "bilevel"],
)
def test_decode_converts_other_modes_to_rgb(make: Callable[[], Image.Image], expected: tuple[int, int, int]) -> None:
    out = sources.decode_image(encode(make()), 5, center_square=True)
    assert out.shape == (5, 5, 3)
    assert (out == expected).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_decode_converts_palette_images_to_rgb(fmt: str) -> None:
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 12, 200, 90] + [0] * 762)
    out = sources.decode_image(encode(img, fmt), 8)
    assert (out == (12, 200, 90)).all()


def large_photo(w: int, h: int) -> bytes:
    """A real photograph (scikit-learn's china.jpg) resized to w x h, as JPEG quality 90."""
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg")).resize((w, h), Image.Resampling.BICUBIC)
    return encode(photo, "JPEG")


def full_decode(data: bytes, nw: int, nh: int) -> np.ndarray:
    """The plain decode: the whole JPEG at full size, then PIL's resize."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    return np.asarray(rgb.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0))


@pytest.mark.parametrize(("w", "h", "size", "shape"), [
    (1280, 853, 256, (256, 384, 3)),  # DCT scaling by 2 (853 // 256 = 3)
    (2400, 1600, 160, (160, 240, 3)),  # by 8
    (900, 1350, 224, (336, 224, 3)),  # portrait, by 4
])
def test_large_jpeg_decodes_to_the_whole_image_at_size_nearly_as_a_full_decode(
        w: int, h: int, size: int, shape: tuple[int, int, int]) -> None:
    """DCT scaling (PIL's draft) keeps the shape and the whole image; the pixels differ from a full
    decode + resize by no more than two standard resampling filters differ from each other (mean
    absolute difference of 1.4 to 3.5 levels here, against 2.3 to 2.6 for bilinear vs Lanczos), and
    without a shift of brightness."""
    data = large_photo(w, h)
    fast = sources.decode_image(data, size)
    assert fast.shape == shape
    assert_near_a_full_decode(fast, data)


def assert_near_a_full_decode(out: np.ndarray, data: bytes) -> None:
    """``out`` differs from a full decode + resize to its shape by no more than bilinear and Lanczos
    resampling differ from each other, without a shift of brightness."""
    h, w = out.shape[:2]
    old = full_decode(data, w, h).astype(float)
    with Image.open(io.BytesIO(data)) as img:
        lanczos = np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.LANCZOS))
    diff = np.abs(out.astype(float) - old)
    assert diff.mean() < min(4.0, 2 * np.abs(old - lanczos).mean()), diff.mean()
    assert abs((out.astype(float) - old).mean()) < 0.5
    assert np.percentile(diff, 99) < 40


def test_dct_scaling_is_used_only_where_it_reduces_by_at_least_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    calls: list[tuple[int, int]] = []
    draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Any, mode: str | None, size: tuple[int, int] | None) -> Any:
        calls.append(self.size)
        return draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    assert sources.decode_image(large_photo(500, 375), 256).shape == (256, 341, 3)  # ImageNet-sized: no gain
    assert calls == []
    assert sources.decode_image(large_photo(1024, 768), 256, center_square=True).shape == (256, 256, 3)
    assert calls == [(1024, 768)]


@pytest.mark.parametrize(("w", "h", "size", "shape", "reduction"), [
    (500, 375, 256, (375, 500, 3), 1),  # ImageNet-sized: its own size, a plain decode
    (1024, 768, 256, (384, 512, 3), 2),  # 768 // 256 = 3: halved
    (2400, 1600, 160, (200, 300, 3), 8),  # 1600 // 160 = 10: by 8
    (900, 1350, 224, (338, 225, 3), 4),  # portrait, 900 // 224 = 4: by 4 (rounded up)
    (4096, 3072, 256, (384, 512, 3), 8),  # 3072 // 256 = 12: by 8, the most DCT scaling does
])
def test_whole_decode_is_the_whole_photo_at_the_largest_dct_reduction_that_keeps_the_size(
        w: int, h: int, size: int, shape: tuple[int, int, int], reduction: int) -> None:
    """What the stream's tasks crop from when they decode each epoch: not resized, the aspect kept,
    the shorter side at least ``size``; pixels as a full decode's (bit for bit without reduction,
    otherwise no further from a full decode + resize than two resampling filters are apart)."""
    data = large_photo(w, h)
    out = decode_whole(data, size)
    assert out.shape == shape and out.dtype == np.uint8 and min(out.shape[:2]) >= size
    assert (out.shape[1] - 1) * reduction < w <= out.shape[1] * reduction  # ceil(w / reduction)
    if reduction == 1:
        with Image.open(io.BytesIO(data)) as img:
            assert np.array_equal(out, np.asarray(img.convert("RGB")))
        return
    assert_near_a_full_decode(out, data)


@pytest.mark.parametrize(("w", "h", "size", "shape"), [
    (800, 600, 256, (256, 341, 3)),  # a PNG at least twice the size: resized, as no DCT scaling applies
    (500, 375, 256, (375, 500, 3)),  # under twice the size: its own size
])
def test_whole_decode_bounds_a_large_image_that_dct_scaling_cannot_reduce(
        w: int, h: int, size: int, shape: tuple[int, int, int]) -> None:
    out = decode_whole(encode(Image.open(io.BytesIO(large_photo(w, h))).convert("RGB"), "PNG"), size)
    assert out.shape == shape


def test_whole_decode_bounds_a_jpeg_beyond_the_reach_of_dct_scaling() -> None:
    out = decode_whole(large_photo(2400, 1600), 96)  # 1600 / 8 = 200 >= 2 x 96: resized to 96 after the DCT
    assert out.shape == (96, 144, 3)


@pytest.mark.parametrize(("fmt", "mode"), [
    ("PNG", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"),
    ("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("WEBP", "RGB"), ("WEBP", "RGBA"),
])
def test_whole_decode_gives_rgb_of_any_mode_and_format(fmt: str, mode: str) -> None:
    img = Image.fromarray(random_images(1, 30, 40, 3)[0]).convert(mode)
    out = decode_whole(encode(img, fmt), 16)  # 30 < 2 x 16: no DCT reduction
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    with Image.open(io.BytesIO(encode(img, fmt))) as back:
        assert np.array_equal(out, np.asarray(back.convert("RGB")))


def test_the_streams_gather_decodes_the_whole_photo_and_the_centre_square_when_asked(tmp_path: Path) -> None:
    """The files kind of the row store (data.cache_decoded=false, or a cache that does not fit):
    photos of mixed aspects arrive whole, at their own size, as (3, H, W) uint8; with
    data.center_square the centre square at the decode size, as one (B, 3, S, S) batch."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import torch

    from orchestrator.data.stream import RowStore, StoreIndex, gather

    shapes = [(375, 500), (500, 375), (375, 667)]  # h, w: 4:3, 3:4, 16:9
    paths = []
    for i, (h, w) in enumerate(shapes):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Path(paths[-1]).write_bytes(large_photo(w, h))
    paths.append(str(tmp_path / "missing.jpg"))
    index = StoreIndex(np.arange(4), np.zeros(1, np.int64), np.arange(4), pa.array(paths))
    store = RowStore(4, index=None, filesystem=pafs.LocalFileSystem())  # type: ignore[arg-type]
    images, keep = gather(store, index, np.asarray([2, 3, 0, 1]), 256, center_square=False)
    assert keep.tolist() == [True, False, True, True]
    assert [tuple(x.shape) for x in images] == [(3, 375, 667), (3, 375, 500), (3, 500, 375)]
    assert all(x.dtype == torch.uint8 for x in images)
    squares, keep = gather(store, index, np.asarray([0, 1, 2]), 256, center_square=True)
    assert isinstance(squares, torch.Tensor) and squares.shape == (3, 3, 256, 256) and keep.all()


def bad_image_bytes() -> dict[str, bytes | None]:
    png, jpeg = encode(random_images(1, 40, 40, 0)[0]), encode(random_images(1, 40, 40, 0)[0], "JPEG")
    return {
        "corrupt": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
        "truncated_png": png[: len(png) // 2],
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "zero_byte": b"",
        "missing": None,
        "text_as_png": b"this is a text file named image.png\n",
    }


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("kind", list(bad_image_bytes()))
def test_bad_image_is_skipped_under_skip(kind: str, whole: bool) -> None:
    assert sources.decode_or_none(bad_image_bytes()[kind], 8, "x.png", "skip", whole=whole) is None


@pytest.mark.parametrize("whole", [False, True])
@pytest.mark.parametrize("kind", list(bad_image_bytes()))
def test_bad_image_under_fail_raises_naming_the_file_and_the_fix(kind: str, whole: bool) -> None:
    with pytest.raises(BadImageError, match=r"unreadable image /data/cat/x\.png: ") as info:
        sources.decode_or_none(bad_image_bytes()[kind], 8, "/data/cat/x.png", "fail", whole=whole)
    assert isinstance(info.value, UserError)
    assert "data.bad_images=skip" in str(info.value)


def test_good_image_decodes_under_either_policy() -> None:
    for policy in ("skip", "fail"):
        out = sources.decode_or_none(encode(solid(GREEN)), 6, "g.png", policy)
        assert out is not None and (out == GREEN).all()


# --- the decode stage's batches (what Ray Data's tasks run) -------------------------------------------------


def decode_stage_batch(policy: str, with_paths: bool) -> dict[str, Any]:
    from orchestrator.data.decode import decode_batch

    data = np.empty(3, dtype=object)
    data[:] = [encode(solid(RED, 6, 9)), b"not an image", encode(solid(BLUE, 6, 9))]
    batch: dict[str, Any] = {"bytes": data, "label": np.asarray([0, 1, 2]), "row_id": np.asarray([10, 11, 12])}
    if with_paths:
        batch["path"] = np.asarray(["/d/a.png", "/d/b.png", "/d/c.png"])
    return decode_batch(batch, size=6, policy=policy, data_col="bytes", name_col="path", center_square=True)


def test_the_decode_stage_drops_an_unreadable_row_under_skip() -> None:
    out = decode_stage_batch("skip", with_paths=True)
    assert set(out) == {"image", "label", "row_id"}  # no bytes, no path
    assert out["image"].shape == (2, 6, 6, 3) and out["row_id"].tolist() == [10, 12]
    assert (out["image"][1] == BLUE).all() and out["label"].tolist() == [0, 2]


@pytest.mark.parametrize("with_paths", [True, False])
def test_the_decode_stage_marks_an_unreadable_row_under_fail_naming_its_file(with_paths: bool) -> None:
    """Raised inside a Ray Data task, the error would reach the driver as Ray's own: the row is kept,
    marked, and the driver raises it (orchestrator/data/decode.py: decoded)."""
    from orchestrator.data.decode import UNREADABLE

    out = decode_stage_batch("fail", with_paths)
    assert out["row_id"].tolist() == [10, 11, 12]
    assert [img.shape for img in out["image"]] == [(6, 6, 3), (0, 0, 3), (6, 6, 3)]
    name = "/d/b.png" if with_paths else "row 11"  # a Parquet row is named by its position in the source
    assert out[UNREADABLE][0] == out[UNREADABLE][2] == ""
    assert out[UNREADABLE][1].startswith(f"unreadable image {name}: ") and "data.bad_images=skip" in out[UNREADABLE][1]
