"""Photo-like test images: a smooth random colour field with blobs and grain, unique per seed (the near-duplicate
tests and benchmarks/bench_near_dups.py)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo_like(seed: int, size: int = 192, *, blobs: int = 6, grain: float = 8.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(blobs):
        x, y = rng.integers(0, size, 2)
        s = int(rng.integers(size // 10, size // 2))
        draw.ellipse((x, y, x + s, y + s), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    noisy = np.asarray(img, dtype=np.float64) + rng.normal(0, grain, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
