"""Data shaped like our users': class-sorted folders and Parquet of JPEG photographs.

scikit-learn ships two photographs (china.jpg, flower.jpg, 640 x 427); crops of them at several
aspect ratios, resized and saved as JPEG, stand in for ImageNet's photos. Class k is a set of crops
around one region of one photograph, so classes differ in content, as real ones do. Used by the
tests and by the benchmarks (bench/ puts this folder on its path).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ASPECTS = (4 / 3, 3 / 4, 1.0, 16 / 9, 3 / 2)  # width / height of the photos, as ImageNet's vary


def _sources() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_image

    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]  # 427 x 640 x 3 each


def photo(rng: np.random.Generator, label: int, shorter: int, aspect: float) -> Image.Image:
    """A crop of one sample photograph around class ``label``'s region, ``shorter`` px on its shorter side."""
    src = _sources()[label % 2]
    h, w = src.shape[:2]
    region = (label // 2) % 5  # five regions along the photo's width
    ch = int(rng.integers(h // 3, h // 2))
    cw = min(w, int(ch * aspect))
    x0 = min(w - cw, max(0, region * (w - cw) // 4 + int(rng.integers(-20, 21))))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw])
    size = (round(shorter * aspect), shorter) if aspect >= 1 else (shorter, round(shorter / aspect))
    return crop.resize(size, Image.Resampling.BILINEAR)


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo_bytes(n: int, classes: int, shorter: int, seed: int = 0) -> tuple[list[bytes], list[int]]:
    """``n`` JPEG photos in class order (class 0 first), each of a random aspect from ASPECTS."""
    rng = np.random.default_rng(seed)
    labels = [k * classes // n for k in range(n)]
    return [jpeg(photo(rng, c, shorter, ASPECTS[rng.integers(len(ASPECTS))])) for c in labels], labels


def image_folder(root: Path, classes: int, per_class: int, shorter: int = 24, seed: int = 0) -> Path:
    """An ImageFolder tree ``root/class_KK/img_NNNN.jpg``: class-sorted, as every ImageFolder lists."""
    data, labels = photo_bytes(classes * per_class, classes, shorter, seed)
    for i, (b, c) in enumerate(zip(data, labels, strict=True)):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:05d}.jpg").write_bytes(b)
    return root


def class_ordered_parquet(path: Path, classes: int, per_class: int, shorter: int = 24, seed: int = 0) -> Path:
    """One Parquet file with ``image`` (JPEG bytes) and ``label`` columns, written class by class."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, labels = photo_bytes(classes * per_class, classes, shorter, seed)
    pq.write_table(pa.table({"image": data, "label": labels}), path, row_group_size=64)
    return path
