"""The filter vocabulary: every threshold the data tools and the training loader filter on, defined once.

Three consumers read this table and nothing else for a filter's name, column, operator and help text:

- the **metadata filter** (``laion_filter_metadata.py``, :mod:`mindone.laion.conditions`): conditions on
  the LAION parquet columns, before anything is downloaded (``METADATA_FILTERS``);
- the **stats-time filters** (``laion_gen_data_stats.py`` / ``laion_gen_csv_annot.py``,
  :mod:`mindone.laion.sample_filters`): thresholds on each downloaded sample's img2dataset json; the
  passing samples are copied or listed (``SAMPLE_FILTERS``);
- the **load-time filters** (the trainer's ``--filter_<name>``, the loader's ``filters`` dict,
  :class:`mindone.data.filters.SampleFilters`): the same thresholds, applied while training reads
  the samples (``SAMPLE_FILTERS``).

One sample filter is no threshold: ``drop_list`` (op ``not_listed``) names a file of sample ids to leave
out (:mod:`mindone.data.drop_list`, written by ``laion_find_near_dups.py``); its value is a path.

A filter's ``name`` is its flag in the first two (``--max_pwatermark``), ``--filter_<name>`` for the
trainer, and its key in their yaml configs and in the loader's ``filters`` dict. Where a consumer once
called it something else, the old name is one of its ``aliases``: accepted everywhere (flag, yaml key,
``filters`` key), never written. Names are ``min_<...>`` for ``>=`` thresholds and ``max_<...>`` for
``<=`` ones.

What a missing value means differs by stage and is documented there: a metadata row with a null or NaN
value fails the condition (it is not downloaded); a sample whose json lacks the field passes that filter
(it is counted as ``unjudged_<name>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# Logical column -> its names in the LAION metadata, in order of preference (the first one present in a
# file wins): AESTHETIC_SCORE in improved_aesthetics_4.5plus, aesthetic in laion-art, ... img2dataset
# copies the ones it was asked to save into each sample's json under the same names.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "url": ("URL", "url"),
    "text": ("TEXT", "text", "caption", "CAPTION"),
    # Re-LAION (an img2dataset output) has width/height of its own re-download beside original_<side>: the
    # original size is what LAION-5B's WIDTH/HEIGHT held, so it comes first.
    "width": ("WIDTH", "original_width", "width"),
    "height": ("HEIGHT", "original_height", "height"),
    "punsafe": ("punsafe", "PUNSAFE"),
    "pwatermark": ("pwatermark", "PWATERMARK"),
    "aesthetic": ("AESTHETIC_SCORE", "aesthetic", "aesthetic_score"),
    "similarity": ("similarity", "SIMILARITY"),
    "language": ("LANGUAGE", "language", "lang"),
    "hash": ("hash", "HASH"),
}

LISTED = "not_listed"  # the op of a filter whose value is a drop list file: the sample's id must not be in it
SAMPLE_ID = "sample_id"  # its column: part_<N>/<shard>/<key>, not a json field

# In a sample's json, a size is the *original* image's: img2dataset's original_<side> (its width/height are
# the resized image's), else the metadata column. "size" is the smaller side (json filters only).
_ORIGINAL = {"width": "original_width", "height": "original_height"}
SIZE = "size"


@dataclass(frozen=True)
class FilterSpec:
    """One filter: ``<column> <op> <threshold>`` keeps a row / sample.

    ``op``: ``>=`` / ``<=`` on the column's number, ``in`` (a list of values), ``len>=`` / ``len<=`` (the
    caption's length in characters), ``not_listed`` (the sample's id is not in the drop list file given). The help texts are per consumer (each tool words its flags its own
    way); ``metadata_keep`` is None for a filter the metadata filter does not offer, ``sample_help`` and
    ``load_help`` are None for one the json filters do not offer.
    """

    name: str
    column: str
    op: str
    aliases: tuple[str, ...] = ()
    metadata_keep: str | None = None  # laion_filter_metadata.py: "keep <this> (seed 001: <default>)"
    metadata_default: Any = None  # seed 001's value (SD 2.1-base), None: off by default
    sample_help: str | None = None  # laion_gen_data_stats.py / laion_gen_csv_annot.py: --<name>
    load_help: str | None = None  # trainer: --filter_<name>, "skip samples whose json <this>"

    @property
    def value_type(self) -> type:
        """What a value of this filter is: a path for the drop list, a number for a threshold."""
        return str if self.op == LISTED else float

    @property
    def metadata_help(self) -> str:
        default = "off by default" if self.metadata_default is None else f"seed 001: {self.metadata_default:g}"
        return f"keep {self.metadata_keep} ({default})"


FILTERS: tuple[FilterSpec, ...] = (
    FilterSpec("drop_list", SAMPLE_ID, LISTED,
               sample_help="leave out the samples listed in this file (one part_<id>/<shard>/<key> a line, e.g. "
               "the near_duplicates_drop.txt of laion_find_near_dups.py)",
               load_help="skip the samples listed in this drop list file (one part_<id>/<shard>/<key> a line, "
               "e.g. the near_duplicates_drop.txt of laion_find_near_dups.py; load-time filter; unset: off)"),
    FilterSpec("min_size", SIZE, ">=",
               sample_help="minimum smaller side of the original image, pixels",
               load_help="original image's smaller side is below this"),
    FilterSpec("min_width", "width", ">=",
               metadata_keep="WIDTH >= this", metadata_default=512.0,
               sample_help="minimum original image width, pixels",
               load_help="original width is below this"),
    FilterSpec("min_height", "height", ">=",
               metadata_keep="HEIGHT >= this", metadata_default=512.0,
               sample_help="minimum original image height, pixels",
               load_help="original height is below this"),
    FilterSpec("max_punsafe", "punsafe", "<=",
               metadata_keep="punsafe <= this", metadata_default=0.98,
               sample_help="maximum NSFW probability (punsafe)",
               load_help="punsafe is above this"),
    FilterSpec("min_aesthetic", "aesthetic", ">=",
               metadata_keep="AESTHETIC_SCORE/aesthetic >= this", metadata_default=4.5,
               sample_help="minimum aesthetic score (AESTHETIC_SCORE or aesthetic)",
               load_help="AESTHETIC_SCORE / aesthetic is below this"),
    # the LAION column's name; the stats tools and the trainer called it max_watermark until issue 12
    FilterSpec("max_pwatermark", "pwatermark", "<=", aliases=("max_watermark",),
               metadata_keep="pwatermark <= this",
               sample_help="maximum watermark probability (pwatermark)",
               load_help="pwatermark is above this"),
    FilterSpec("min_similarity", "similarity", ">=",
               metadata_keep="CLIP similarity >= this",
               sample_help="minimum CLIP image-text similarity",
               load_help="CLIP similarity is below this"),
    FilterSpec("language", "language", "in",
               metadata_keep="LANGUAGE in this comma-separated list, e.g. en"),
    FilterSpec("min_caption_length", "text", "len>=",
               metadata_keep="captions with at least this many characters"),
    FilterSpec("max_caption_length", "text", "len<=",
               metadata_keep="captions with at most this many characters"),
)

BY_NAME: dict[str, FilterSpec] = {s.name: s for s in FILTERS}
_BY_ALIAS: dict[str, FilterSpec] = {a: s for s in FILTERS for a in s.aliases}


def _in_order(*names: str) -> tuple[FilterSpec, ...]:
    return tuple(BY_NAME[n] for n in names)


# Each stage's filters, in the order it evaluates them: the metadata filter attributes a removed row to
# the first condition it fails (filter_report.json), a json filter reports the first reason it fails.
METADATA_FILTERS = _in_order("min_width", "min_height", "max_punsafe", "min_aesthetic", "max_pwatermark",
                             "min_similarity", "language", "min_caption_length", "max_caption_length")
SAMPLE_FILTERS = _in_order("drop_list", "min_size", "min_width", "min_height", "min_similarity", "min_aesthetic",
                           "max_pwatermark", "max_punsafe")


THRESHOLDS = tuple(s for s in SAMPLE_FILTERS if s.op != LISTED)  # the sample filters on json numbers


def lookup(name: str) -> FilterSpec | None:
    """The filter called ``name`` or one of its aliases; None for a name that is not a filter."""
    return BY_NAME.get(name) or _BY_ALIAS.get(name)


def canonical_names(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``values`` with every ``<prefix><alias>`` key renamed ``<prefix><name>``; other keys unchanged.

    ValueError when one filter is given under two of its names.
    """
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        spec = lookup(key[len(prefix):]) if key.startswith(prefix) else None
        name = prefix + spec.name if spec is not None else key
        if name in given_as:
            raise ValueError(f"{given_as[name]!r} and {key!r} are one setting: give one")
        given_as[name] = key
        out[name] = value
    return out


def json_keys(column: str) -> tuple[str, ...]:
    """The fields of a sample's json that hold ``column``, in order of preference."""
    original = (_ORIGINAL[column],) if column in _ORIGINAL else ()
    return tuple(dict.fromkeys(original + COLUMN_ALIASES.get(column, (column,))))
