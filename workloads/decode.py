"""Encoded image bytes to uint8 RGB arrays: what every epoch's crops start from, and the fixed-size
images the decoded cache holds. PIL and numpy only, so that a GPU machine's benchmark
(bench/gpu.py, no Ray there) runs the very decode the stream runs.

Two shapes of output, for the two places images are decoded:

- ``decode_whole``: for the crop stage, every epoch (the stream's tasks, when the decoded cache
  does not fit and the rows are files or encoded bytes). The whole photo at the size the JPEG
  decoder gives it cheaply, never resized: the random-resized crop is drawn from it, and each view
  costs one antialiased resize of its crop's pixels, as torchvision's RandomResizedCrop does on the
  decoded photo. Resizing the whole photo first cost 2-3x the JPEG decode itself at ImageNet sizes
  (docs/BENCHMARKS.md, section 5).
- ``decode_image``: for the object store's decoded cache, once per run: the shorter side resized to
  exactly ``size``, so that the cache's size is bounded by the config (``data.decode_size``).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# A cached image's longer side is kept under this many times its shorter side (a panorama stays a
# bounded number of pixels; its crops are still drawn from the whole image).
MAX_ASPECT = 4


def decode_whole(data: bytes, size: int) -> np.ndarray:
    """Decode encoded image bytes to the whole photo, RGB uint8 (H, W, 3), not resized.

    A JPEG whose shorter side is at least twice ``size`` is decoded at the largest JPEG DCT
    reduction (1/2, 1/4 or 1/8, PIL's ``draft``) that keeps its shorter side at least ``size``:
    a fraction of a full decode's cost, and the crops at the output size see no fewer pixels than
    from a ``size`` image. Anything else is decoded at its own size, and resized to a shorter side of
    ``size`` only where it is still at least twice that (a large PNG, a JPEG beyond 1/8's reach), so
    that the pixels a task holds stay bounded. Raises on anything PIL cannot read (truncated files
    fail here, not later).
    """
    with Image.open(io.BytesIO(data)) as img:
        if img.format == "JPEG" and min(img.size) >= 2 * size:
            img.draft("RGB", (size, size))  # scale = the largest of 8, 4, 2 with min(w, h) // scale >= size
        img.load()
        rgb = img if img.mode == "RGB" else img.convert("RGB")
        w, h = rgb.size
        if min(w, h) >= 2 * size:
            scale = size / min(w, h)
            rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR,
                             reducing_gap=3.0)
        return np.asarray(rgb, dtype=np.uint8)


def decode_image(data: bytes, size: int, center_square: bool = False) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (H, W, 3) with the shorter side resized to ``size``.

    The whole image is kept (its aspect ratio too, the longer side at most ``MAX_ASPECT`` × size),
    so that the random-resized crop is drawn from all of it, as torchvision's RandomResizedCrop
    on the decoded photo is. With ``center_square`` the centre ``size`` × ``size`` square only:
    fixed-size rows, faster, but the crops never see the sides of a non-square photo. Raises on
    anything PIL cannot read.
    """
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size  # from the header: the target size is known before decoding
        scale = size / min(w, h)
        if not center_square:
            scale = min(scale, MAX_ASPECT * size / max(w, h))
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        if center_square:
            nw, nh = max(size, nw), max(size, nh)
        if img.format == "JPEG" and (w >= 2 * nw and h >= 2 * nh):
            # JPEG DCT scaling: libjpeg decodes at 1/2, 1/4 or 1/8 size, the largest
            # reduction still at least (nw, nh) on both sides, for a fraction of a full decode;
            # the resize below then gives the same size, whole image, as from the full decode.
            img.draft("RGB", (nw, nh))
        img.load()  # truncated files fail here, not later
        rgb = img.convert("RGB")
    w, h = rgb.size
    if (nw, nh) != (w, h):
        rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if not center_square:
        return np.asarray(rgb, dtype=np.uint8)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(rgb.crop((left, top, left + size, top + size)), dtype=np.uint8)
