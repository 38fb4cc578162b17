"""Post-download filters, command-line side: flags that build the training loader's own filter.

The thresholds and their meaning are ``mindone.data.filters.SampleFilters`` (the class the training loader
applies at load time), reused here so that a count made at stats / csv time equals what the loader yields
with the same thresholds: sizes are the original image's, a sample whose json lacks a field is not judged
by that filter (it passes, counted as ``unjudged_<filter>``).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Mapping

from mindone.data.filters import SampleFilters

_HELP = {
    "min_size": "minimum smaller side of the original image, pixels",
    "min_width": "minimum original image width, pixels",
    "min_height": "minimum original image height, pixels",
    "min_similarity": "minimum CLIP image-text similarity",
    "min_aesthetic": "minimum aesthetic score (AESTHETIC_SCORE or aesthetic)",
    "max_watermark": "maximum watermark probability (pwatermark)",
    "max_punsafe": "maximum NSFW probability (punsafe)",
}


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--<threshold>`` flag per field of SampleFilters."""
    group = parser.add_argument_group(
        "post-download filters (on each sample's json; give the training loader the same thresholds)"
    )
    for f in fields(SampleFilters):
        group.add_argument(f"--{f.name}", type=float, help=_HELP.get(f.name, f.name))


def filters_from_args(args: argparse.Namespace) -> SampleFilters:
    return SampleFilters.from_config({f.name: getattr(args, f.name) for f in fields(SampleFilters) if getattr(args, f.name, None) is not None})


def describe(filters: SampleFilters) -> str:
    """``min_aesthetic=5.0, max_watermark=0.5`` (what to pass as the loader's ``filters``)."""
    return ", ".join(f"{f.name}={getattr(filters, f.name)}" for f in fields(filters) if getattr(filters, f.name) is not None) or "none"


def passes(filters: SampleFilters, meta: Mapping[str, Any], counts: dict[str, int] | None = None) -> bool:
    return filters.check(meta, counts if counts is not None else {}) is None
