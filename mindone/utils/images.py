"""Image grids and atomic PNG writes, shared by validation during training and text_to_image.py."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from mindone.utils.atomic import atomic_write_bytes


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] -> one image, ``columns`` per row (default: ceil(sqrt(N))), missing cells black."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, H, W, C] array, got shape {images.shape}")
    n, h, w, c = images.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), dtype=images.dtype)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[r * h:(r + 1) * h, k * w:(k + 1) * w] = img
    return grid


def save_png(image: np.ndarray, path: str | os.PathLike, parameters: str | None = None) -> Path:
    """Write a uint8 HWC image as PNG atomically, with an optional ``parameters`` text chunk."""
    from PIL import Image, PngImagePlugin

    info = None
    if parameters:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
