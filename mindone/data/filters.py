"""Optional per-sample filters on the img2dataset json (``{key}.json``).

``filters`` is a dict; every key is optional:

- ``min_size``: smallest side of the *original* image (``original_width``/``original_height``, else
  ``width``/``height``, else ``WIDTH``/``HEIGHT``) must be at least this;
- ``min_width`` / ``min_height``: the same, per side;
- ``min_similarity``: CLIP image-text ``similarity``;
- ``min_aesthetic``: ``AESTHETIC_SCORE`` / ``aesthetic`` / ``aesthetic_score``;
- ``max_watermark``: ``pwatermark``;
- ``max_punsafe``: ``punsafe``.

A sample whose json lacks the field a filter needs (or has null / NaN there) passes that filter and is
counted as ``unjudged_<filter>``; a sample that fails is skipped and counted as ``filtered_<filter>``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from mindone.utils.cli import UserError

_WIDTH = ("original_width", "width", "WIDTH")
_HEIGHT = ("original_height", "height", "HEIGHT")
_AESTHETIC = ("AESTHETIC_SCORE", "aesthetic", "aesthetic_score")


def _number(meta: Mapping[str, Any], names: tuple[str, ...]) -> float | None:
    for name in names:
        value = meta.get(name)
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            return number
    return None


@dataclass(frozen=True)
class SampleFilters:
    """Thresholds; None disables a filter."""

    min_size: float | None = None
    min_width: float | None = None
    min_height: float | None = None
    min_similarity: float | None = None
    min_aesthetic: float | None = None
    max_watermark: float | None = None
    max_punsafe: float | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | "SampleFilters" | None) -> "SampleFilters":
        if isinstance(config, SampleFilters):
            return config
        config = dict(config or {})
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise UserError(f"filters: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        try:
            return cls(**{k: None if v is None else float(v) for k, v in config.items()})
        except (TypeError, ValueError) as err:
            raise UserError(f"filters: thresholds must be numbers ({err})") from None

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def check(self, meta: Mapping[str, Any] | None, counts: dict[str, int]) -> str | None:
        """The reason the sample is filtered out (``filtered_<name>``), or None to keep it.

        ``counts`` receives ``unjudged_<name>`` for each filter the json cannot answer.
        """
        meta = meta or {}
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
                counts[f"unjudged_{name}"] = counts.get(f"unjudged_{name}", 0) + 1
            elif (value < threshold) if sign > 0 else (value > threshold):
                return f"filtered_{name}"
        return None
