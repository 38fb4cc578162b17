"""Post-download filters on the per-sample json that img2dataset writes beside each image.

The json holds img2dataset's fields (``width``/``height`` after resize, ``original_width``/
``original_height``, ``status``...) and the metadata columns kept with ``save_additional_columns``
(``similarity``, ``pwatermark``, ``punsafe``, ``AESTHETIC_SCORE`` or ``aesthetic``...).

The semantics are those of the training loader's filters (``mindone.data.filters.SampleFilters``, same
threshold names), so that a count made here equals what the loader yields with the same thresholds: sizes
are the original image's; a sample whose json lacks a field (or has null/NaN) is not judged by that
filter and passes it, counted as ``unjudged_<filter>``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

_WIDTH = ("original_width", "width", "WIDTH")
_HEIGHT = ("original_height", "height", "HEIGHT")
_AESTHETIC = ("AESTHETIC_SCORE", "aesthetic", "aesthetic_score")


def _number(meta: Mapping[str, Any], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = meta.get(name)
        if value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            return number
    return None


@dataclass(frozen=True)
class SampleFilter:
    """Thresholds; None disables a check."""

    min_size: float | None = None
    min_width: float | None = None
    min_height: float | None = None
    min_similarity: float | None = None
    min_aesthetic: float | None = None
    max_watermark: float | None = None
    max_punsafe: float | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if v is not None) or "none"

    def as_loader_filters(self) -> dict[str, float]:
        """The same thresholds as the ``filters`` dict ``mindone.data.build_dataset`` takes."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def reject_reason(self, meta: Mapping[str, Any], counts: dict[str, int] | None = None) -> str | None:
        """``filtered_<name>`` for the first threshold the sample fails, else None (kept)."""
        width, height = _number(meta, _WIDTH), _number(meta, _HEIGHT)
        checks = (
            ("min_size", None if width is None or height is None else min(width, height), 1),
            ("min_width", width, 1),
            ("min_height", height, 1),
            ("min_similarity", _number(meta, ("similarity",)), 1),
            ("min_aesthetic", _number(meta, _AESTHETIC), 1),
            ("max_watermark", _number(meta, ("pwatermark",)), -1),
            ("max_punsafe", _number(meta, ("punsafe",)), -1),
        )
        for name, value, sign in checks:
            threshold = getattr(self, name)
            if threshold is None:
                continue
            if value is None:
                if counts is not None:
                    counts[f"unjudged_{name}"] = counts.get(f"unjudged_{name}", 0) + 1
            elif (value < threshold) if sign > 0 else (value > threshold):
                return f"filtered_{name}"
        return None

    def passes(self, meta: Mapping[str, Any], counts: dict[str, int] | None = None) -> bool:
        return self.reject_reason(meta, counts) is None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "post-download filters (on each sample's json; give the training loader the same thresholds)"
        )
        group.add_argument("--min_size", type=float, help="minimum smaller side of the original image, pixels")
        group.add_argument("--min_width", type=float, help="minimum original image width, pixels")
        group.add_argument("--min_height", type=float, help="minimum original image height, pixels")
        group.add_argument("--min_similarity", type=float, help="minimum CLIP image-text similarity")
        group.add_argument("--min_aesthetic", type=float, help="minimum aesthetic score (AESTHETIC_SCORE or aesthetic)")
        group.add_argument("--max_watermark", type=float, help="maximum watermark probability (pwatermark)")
        group.add_argument("--max_punsafe", type=float, help="maximum NSFW probability (punsafe)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SampleFilter":
        return cls(**{k: getattr(args, k, None) for k in cls.__dataclass_fields__})
