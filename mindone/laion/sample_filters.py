"""Post-download filters, command-line side: flags that build the training loader's own filter.

The thresholds and their meaning are ``mindone.data.filters.SampleFilters`` (the class the training loader
applies at load time), reused here so that a count made at stats / csv time equals what the loader yields
with the same thresholds: sizes are the original image's, a sample whose json lacks a field is not judged
by that filter (it passes, counted as ``unjudged_<filter>``). The flags, their old names and their help
come from the filter vocabulary (:data:`mindone.data.filter_vocab.SAMPLE_FILTERS`), declared as options of
the CLIs' option registry (:mod:`mindone.utils.config`): :data:`FILTER_OPTIONS`. ``--drop_list FILE`` leaves
out the samples a drop list names (:mod:`mindone.data.drop_list`), counted as ``filtered_drop_list``.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Mapping

from mindone.data.filter_vocab import SAMPLE_FILTERS
from mindone.data.filters import SampleFilters
from mindone.utils.config import Option

FILTER_GROUP = "post-download filters (on each sample's json; give the training loader the same thresholds)"
# One --<name> option per sample filter (its old names accepted too), for the tools' option lists.
FILTER_OPTIONS: list[Option] = [
    Option(spec.name, spec.value_type, None, spec.sample_help, aliases=spec.aliases, group=FILTER_GROUP)
    for spec in SAMPLE_FILTERS
]


def filters_from_args(args: argparse.Namespace) -> SampleFilters:
    return SampleFilters.from_config({s.name: getattr(args, s.name) for s in SAMPLE_FILTERS
                                      if getattr(args, s.name, None) is not None})


def describe(filters: SampleFilters) -> str:
    """``min_aesthetic=5.0, max_pwatermark=0.5`` (what to pass as the loader's ``filters``)."""
    return ", ".join(f"{f.name}={getattr(filters, f.name)}" for f in fields(filters) if getattr(filters, f.name) is not None) or "none"


def passes(filters: SampleFilters, meta: Mapping[str, Any], counts: dict[str, int] | None = None,
           sample_id: str | None = None) -> bool:  # fmt: skip
    return filters.check(meta, counts if counts is not None else {}, sample_id=sample_id) is None
