"""Image grids (plain, and enlarged with labels) and atomic PNG writes, shared by validation during training and text_to_image.py."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Sequence

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


def labelled_grid(images: np.ndarray, labels: Sequence[str], columns: int | None = None, min_side: int = 128,
                  font_size: int = 11) -> np.ndarray:
    """A grid a person can read: each image enlarged (nearest-neighbour, by the smallest integer factor that
    makes it at least ``min_side`` px wide) with its label written under it, wrapped to the image's width.

    uint8 [N, H, W, 3] and N labels -> one uint8 RGB image, ``columns`` per row (default: ceil(sqrt(N))).
    """
    from PIL import Image, ImageDraw, ImageFont

    if images.ndim != 4 or images.shape[0] == 0 or images.shape[-1] != 3:
        raise ValueError(f"expected a non-empty [N, H, W, 3] array, got shape {images.shape}")
    if len(labels) != images.shape[0]:
        raise ValueError(f"got {len(labels)} labels for {images.shape[0]} images")
    n, h, w, _ = images.shape
    scale = max(1, math.ceil(min_side / w))
    cell_w, cell_h = w * scale, h * scale
    font = ImageFont.load_default(size=font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(measure, label, font, cell_w - 4) for label in labels]
    line_h = font_size + 3
    text_h = max(len(lines) for lines in wrapped) * line_h + 4
    gap = 4
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = Image.new("RGB", (cols * (cell_w + gap) + gap, rows * (cell_h + text_h + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (image, lines) in enumerate(zip(images, wrapped)):
        r, k = divmod(i, cols)
        x, y = gap + k * (cell_w + gap), gap + r * (cell_h + text_h + gap)
        sheet.paste(Image.fromarray(image).resize((cell_w, cell_h), Image.NEAREST), (x, y))
        for j, line in enumerate(lines):
            draw.text((x + 2, y + cell_h + 2 + j * line_h), line, fill=(0, 0, 0), font=font)
    return np.asarray(sheet)


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` px (a longer single word gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


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
