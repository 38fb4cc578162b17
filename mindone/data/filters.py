"""Optional per-sample filters on the img2dataset json (``{key}.json``): the load-time filters.

``filters`` is a dict of thresholds, keyed by the names of :data:`mindone.data.filter_vocab.SAMPLE_FILTERS`
(an old name, such as ``max_watermark`` for ``max_pwatermark``, is accepted too); every key is optional:

- ``min_size``: smallest side of the *original* image (``original_width``/``original_height``, else
  ``WIDTH``/``HEIGHT`` or ``width``/``height``) must be at least this;
- ``min_width`` / ``min_height``: the same, per side;
- ``min_similarity``: CLIP image-text ``similarity``;
- ``min_aesthetic``: ``AESTHETIC_SCORE`` / ``aesthetic`` / ``aesthetic_score``;
- ``max_pwatermark``: ``pwatermark``;
- ``max_punsafe``: ``punsafe``;
- ``drop_list``: not a threshold but a file of sample ids (:mod:`mindone.data.drop_list`): a sample whose id
  (``part_<N>/<shard>/<key>``) is listed is skipped as ``filtered_drop_list``. The id is not in the json:
  callers that know where the sample came from pass it (``check(..., sample_id=...)``, :meth:`listed`).

(The json fields tried are the metadata column's aliases, :func:`mindone.data.filter_vocab.json_keys`.)
A sample whose json lacks the field a filter needs (or has null / NaN there) passes that filter and is
counted as ``unjudged_<filter>``; a sample that fails is skipped and counted as ``filtered_<filter>``.
"""

from __future__ import annotations

import math
from dataclasses import field, fields, make_dataclass
from typing import Any, Mapping

from mindone.data.drop_list import load_drop_list
from mindone.data.filter_vocab import LISTED, SAMPLE_FILTERS, SIZE, THRESHOLDS, canonical_names, json_keys
from mindone.errors import ConfigError


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


def json_value(meta: Mapping[str, Any], column: str) -> float | None:
    """The sample's value of a vocabulary column; ``size`` is the original image's smaller side."""
    if column == SIZE:
        width, height = _number(meta, json_keys("width")), _number(meta, json_keys("height"))
        return None if width is None or height is None else min(width, height)
    return _number(meta, json_keys(column))


class _SampleFiltersBase:
    """The methods of :class:`SampleFilters` (whose fields come from the vocabulary)."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | "SampleFilters" | None) -> "SampleFilters":
        if isinstance(config, cls):
            return config
        try:
            config = canonical_names(dict(config or {}))
        except ValueError as err:
            raise ConfigError(f"filters: {err}") from None
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - allowed)
        if unknown:
            raise ConfigError(f"filters: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        kinds = {spec.name: spec.value_type for spec in SAMPLE_FILTERS}
        try:
            return cls(**{k: None if v is None else kinds[k](v) for k, v in config.items()})
        except (TypeError, ValueError) as err:
            raise ConfigError(f"filters: thresholds must be numbers ({err})") from None

    @property
    def active(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    @property
    def needs_meta(self) -> bool:
        """Whether a threshold is set (the sample's json has to be read)."""
        return any(getattr(self, spec.name) is not None for spec in THRESHOLDS)

    def listed(self, sample_id: str) -> str | None:
        """``filtered_drop_list`` when the sample is on the drop list, else None (also without a drop list)."""
        if self.drop_list is not None and sample_id in load_drop_list(self.drop_list):
            return "filtered_drop_list"
        return None

    def check(self, meta: Mapping[str, Any] | None, counts: dict[str, int], sample_id: str | None = None) -> str | None:
        """The reason the sample is filtered out (``filtered_<name>``), or None to keep it.

        ``counts`` receives ``unjudged_<name>`` for each filter the json cannot answer. The drop list is
        consulted when ``sample_id`` is given (a caller without it checks :meth:`listed` itself).
        """
        meta = meta or {}
        for spec in SAMPLE_FILTERS:
            threshold = getattr(self, spec.name)
            if threshold is None:
                continue
            if spec.op == LISTED:
                if sample_id is not None and self.listed(sample_id):
                    return f"filtered_{spec.name}"
                continue
            value = json_value(meta, spec.column)
            if value is None:
                counts[f"unjudged_{spec.name}"] = counts.get(f"unjudged_{spec.name}", 0) + 1
            elif (value < threshold) if spec.op == ">=" else (value > threshold):
                return f"filtered_{spec.name}"
        return None


# One float-or-None field per sample filter (str-or-None for the drop list) of the vocabulary, in its order; None disables a filter.
SampleFilters = make_dataclass(
    "SampleFilters",
    [(spec.name, f"{spec.value_type.__name__} | None", field(default=None)) for spec in SAMPLE_FILTERS],
    bases=(_SampleFiltersBase,),
    frozen=True,
    namespace={"__module__": __name__, "__doc__": "Thresholds of the json filters (``filters``); None disables one."},
)
