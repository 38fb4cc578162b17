"""Image transforms: resize the smallest side to the training size, crop a square, flip, scale to [-1, 1].

The resize and the crop are one Pillow ``resize`` with a source ``box`` (the crop window mapped back to
source pixels), so pixels outside the crop are never resampled.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESAMPLE = Image.Resampling.BICUBIC


def resize_crop(
    image: Image.Image, size: int, rng: np.random.Generator | None = None, flip: bool = False
) -> np.ndarray:
    """Square ``size`` crop of ``image`` resized so its smallest side is ``size``; uint8 HWC.

    The crop is centred, or uniformly random (in resized pixels) when ``rng`` is given; ``flip`` mirrors
    it horizontally.
    """
    width, height = image.size
    scale = size / min(width, height)
    resized_w, resized_h = max(size, round(width * scale)), max(size, round(height * scale))
    if rng is None:
        left, top = (resized_w - size) // 2, (resized_h - size) // 2
    else:
        left, top = int(rng.integers(0, resized_w - size + 1)), int(rng.integers(0, resized_h - size + 1))
    sx, sy = width / resized_w, height / resized_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    out = image.resize((size, size), RESAMPLE, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def resize_to_cover(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` (width, height; a cover size of its bucket, aspect kept); uint8 HWC."""
    if image.size != tuple(size):
        image = image.resize(tuple(size), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def crop_to_bucket(
    pixels: np.ndarray, bucket: tuple[int, int], rng: np.random.Generator | None = None, flip: bool = False
) -> np.ndarray:
    """uint8 HWC ``pixels`` resized to cover ``bucket`` (width, height) if it does not yet, then cropped to it
    (centred, or uniformly random with ``rng``) and mirrored with ``flip``; uint8 HWC."""
    from mindone.data.buckets import cover_size

    height, width = pixels.shape[:2]
    if width < bucket[0] or height < bucket[1] or (width > bucket[0] and height > bucket[1]):
        pixels = resize_to_cover(Image.fromarray(pixels), cover_size(width, height, bucket))
        height, width = pixels.shape[:2]
    if rng is None:
        left, top = (width - bucket[0]) // 2, (height - bucket[1]) // 2
    else:
        left, top = int(rng.integers(0, width - bucket[0] + 1)), int(rng.integers(0, height - bucket[1] + 1))
    out = pixels[top:top + bucket[1], left:left + bucket[0]]
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def hwc_to_chw(pixels: np.ndarray) -> np.ndarray:
    """uint8 HWC -> C-contiguous uint8 CHW (done in the workers: a quarter of the bytes of float32)."""
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def to_model_input(chw: np.ndarray) -> np.ndarray:
    """uint8 CHW (or NCHW) -> C-contiguous float32 in [-1, 1]; float arrays (cached latents) pass as they are.

    Contiguity matters: MindSpore copies a strided array element by element, ~10x slower.
    """
    if chw.dtype != np.uint8:
        return np.ascontiguousarray(chw, dtype=np.float32)
    out = np.ascontiguousarray(chw, dtype=np.float32)
    out *= np.float32(1 / 127.5)
    out -= np.float32(1.0)
    return out
