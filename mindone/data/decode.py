"""Decode image bytes with Pillow, rejecting corrupt and tiny images.

Which member of a sample is its image is :mod:`mindone.data.wds_sample`'s (``jpg``, ``jpeg``, ``png``,
``webp``, in that order); Pillow then detects the format from the bytes, not from the extension.

JPEGs much larger than the training size are decoded with Pillow's DCT scaling (``Image.draft``), which
skips most of the decoding work; the result is never smaller than ``target_short_side`` so the resize that
follows still only downsamples.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

class BadImage(Exception):
    """The image cannot be used; ``reason`` is the counter name (``corrupt_image`` / ``tiny_image``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def decode_image(data: bytes, target_short_side: int = 0, min_size: int = 1) -> Image.Image:
    """Decode to an RGB image; raise :class:`BadImage` when corrupt or when a side is below ``min_size``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / palette-transparency chatter
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if min(width, height) < min_size:
                raise BadImage("tiny_image", f"{width}x{height} < {min_size}")
            if target_short_side and image.format == "JPEG":
                scale = target_short_side / min(width, height)
                if scale <= 0.5:
                    image.draft("RGB", (max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999))))
            return image.convert("RGB")  # forces the full decode: truncated / corrupt data raises here
    except BadImage:
        raise
    except Exception as err:  # noqa: BLE001  bytes from the internet break Pillow plugins in many ways
        raise BadImage("corrupt_image", f"{type(err).__name__}: {err}") from None
