"""Post-download filters on the per-sample json that img2dataset writes beside each image.

The json holds img2dataset's fields (``width``, ``height`` after resize, ``original_width``,
``original_height``, ``status``...) and the metadata columns kept with ``save_additional_columns``
(``similarity``, ``pwatermark``, ``punsafe``, ``AESTHETIC_SCORE`` or ``aesthetic``...). A filter whose
threshold is set rejects a sample that lacks the field (or has null/NaN): a missing score is not a
passing score.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

AESTHETIC_KEYS = ("AESTHETIC_SCORE", "aesthetic")


def _number(meta: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            return float(value)
    return None


@dataclass(frozen=True)
class SampleFilter:
    """Thresholds; None disables a check. Sizes are the original (pre-resize) image sizes."""

    min_width: int | None = None
    min_height: int | None = None
    min_similarity: float | None = None
    min_aesthetic: float | None = None
    max_watermark: float | None = None
    max_punsafe: float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if v is not None) or "none"

    def passes(self, meta: Mapping[str, Any]) -> bool:
        """True when every enabled threshold holds for this sample's json."""
        checks = (
            (self.min_width, _number(meta, "original_width", "width"), 1),
            (self.min_height, _number(meta, "original_height", "height"), 1),
            (self.min_similarity, _number(meta, "similarity"), 1),
            (self.min_aesthetic, _number(meta, *AESTHETIC_KEYS), 1),
            (self.max_watermark, _number(meta, "pwatermark"), -1),
            (self.max_punsafe, _number(meta, "punsafe"), -1),
        )
        for threshold, value, sign in checks:
            if threshold is None:
                continue
            if value is None or (value < threshold if sign > 0 else value > threshold):
                return False
        return True

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("post-download filters (on each sample's json; samples failing one are left out)")
        group.add_argument("--min_width", type=int, help="minimum original image width in pixels")
        group.add_argument("--min_height", type=int, help="minimum original image height in pixels")
        group.add_argument("--min_similarity", type=float, help="minimum CLIP image-text similarity")
        group.add_argument("--min_aesthetic", type=float, help="minimum aesthetic score (AESTHETIC_SCORE or aesthetic)")
        group.add_argument("--max_watermark", type=float, help="maximum watermark probability (pwatermark)")
        group.add_argument("--max_punsafe", type=float, help="maximum NSFW probability (punsafe)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SampleFilter":
        return cls(**{k: getattr(args, k, None) for k in cls.__dataclass_fields__})
