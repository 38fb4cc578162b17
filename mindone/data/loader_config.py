"""``LoaderConfig``: every setting of a rank's training data stream, declared once.

The loader's entry points (:func:`mindone.data.loader.build_sample_stream`, :func:`~mindone.data.loader.build_dataset`,
:func:`~mindone.data.loader.steps_per_epoch`) take these fields as keywords and build one of these; the
trainer builds it from its flags. Fields:

- what is read: ``dataset_type`` (``files`` | ``webdataset`` | ``latents``), ``data_path`` (folder of part
  csvs, one csv or a list), ``parts``, ``shard_root`` (folder, URL prefix or template with ``{}`` for relative
  shard paths), ``allow_outside_data_root`` (False: csv values stay inside their root, see
  :mod:`mindone.data.locations`), ``max_member_bytes`` (larger members are skipped unread);
- what a sample becomes: ``image_size``, ``random_crop``, ``random_flip``, ``caption_dropout``, ``filters``
  (thresholds on the per-sample json and a ``drop_list`` file of sample ids, :mod:`mindone.data.filters`),
  ``min_image_size``, ``latent_shape``
  (latents: the ``(C, h, w)`` every sample must have), ``cached_text`` (latents: cached text embeddings
  instead of token ids), ``buckets`` (a :class:`~mindone.data.buckets.BucketSpec`: aspect-ratio buckets, batches
  of one size each, composed in windows of ``bucket_window`` batches);
- how the epoch is planned (:class:`mindone.data.shards.EpochPlan`): ``rank`` / ``world_size`` (``None``:
  MindSpore communication when initialised, else ``RANK_ID`` / ``RANK_SIZE``), ``num_workers`` (decoding
  processes of this rank, 0 = in the calling process), ``batch_size``, ``seed``, ``shuffle``,
  ``shuffle_buffer``, ``uneven`` (``pad`` | ``drop``), ``drop_remainder``, ``start_method``.

Invalid values raise :class:`mindone.errors.ConfigError` when the object is made, before anything is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from mindone.data.buckets import BucketSpec
from mindone.data.filters import SampleFilters
from mindone.data.shards import UNEVEN_POLICIES, detect_rank_and_world_size
from mindone.data.tar_stream import MAX_MEMBER_BYTES
from mindone.errors import ConfigError

DATASET_TYPES = ("files", "webdataset", "latents")
# The fields EpochPlan takes (besides the shard sizes and the epoch).
PLAN_FIELDS = ("rank", "world_size", "num_workers", "batch_size", "seed", "shuffle", "shuffle_buffer", "uneven",
               "drop_remainder")


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    dataset_type: str
    data_path: str | os.PathLike | Sequence[str | os.PathLike]
    parts: Sequence[int] | None = None
    shard_root: str | None = None
    allow_outside_data_root: bool = False
    max_member_bytes: int = MAX_MEMBER_BYTES
    image_size: int = 512
    random_crop: bool = False
    random_flip: bool = False
    caption_dropout: float = 0.0
    filters: Mapping[str, Any] | SampleFilters | None = None
    min_image_size: int = 32
    latent_shape: tuple[int, int, int] | None = None
    cached_text: bool = False
    buckets: BucketSpec | None = None
    bucket_window: int = 64
    rank: int | None = None
    world_size: int | None = None
    num_workers: int = 2
    batch_size: int = 1
    seed: int = 0
    shuffle: bool = True
    shuffle_buffer: int = 1000
    uneven: str = "pad"
    drop_remainder: bool = True
    start_method: str = "fork"

    def __post_init__(self) -> None:
        if self.dataset_type not in DATASET_TYPES:
            raise ConfigError(f"dataset_type: expected one of {', '.join(DATASET_TYPES)}, got {self.dataset_type!r}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ConfigError(f"caption_dropout: expected a probability in [0, 1], got {self.caption_dropout}")
        if self.image_size < 8:
            raise ConfigError(f"image_size: expected >= 8, got {self.image_size}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: expected >= 0, got {self.num_workers}")
        if self.uneven not in UNEVEN_POLICIES:
            raise ConfigError(f"uneven: expected one of {', '.join(UNEVEN_POLICIES)}, got {self.uneven!r}")
        if self.buckets is not None and (self.dataset_type == "latents" or not self.drop_remainder):
            raise ConfigError("aspect-ratio buckets: need images (cached latents have one fixed size) and whole "
                              "batches (drop_remainder)")
        if self.bucket_window < 1:
            raise ConfigError(f"bucket_window: expected >= 1, got {self.bucket_window}")
        if self.dataset_type == "latents" and self.random_flip:
            raise ConfigError("random_flip: cached latents hold one crop of each image, unflipped: train on the "
                              "images for flips (or encode flipped copies as samples of their own)")

    def resolved(self) -> "LoaderConfig":
        """This config with ``rank`` and ``world_size`` filled in from the environment where ``None``."""
        if self.rank is not None and self.world_size is not None:
            return self
        env_rank, env_world = detect_rank_and_world_size()
        return replace(self, rank=env_rank if self.rank is None else self.rank,
                       world_size=env_world if self.world_size is None else self.world_size)

    def plan_args(self) -> dict:
        """The keywords of :class:`~mindone.data.shards.EpochPlan` (rank and world size must be resolved)."""
        args = {name: getattr(self, name) for name in PLAN_FIELDS}
        args["num_workers"] = max(self.num_workers, 1)  # 0 workers: one plan worker, run in-process
        return args
