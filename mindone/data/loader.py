"""``build_dataset``: annotations -> rank sample stream -> MindSpore ``GeneratorDataset`` batches.

The MindSpore dataset yields ``images`` float32 [B, 3, H, W] in [-1, 1] and ``token_ids`` int32
[B, 77]. Decoding runs in this package's own worker processes (see :mod:`mindone.data.workers`), so
the GeneratorDataset itself is a single, light source that only interleaves finished samples.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from mindone.data.annotations import read_files_annotations, read_shard_list, resolve_annotation_files
from mindone.data.files_dataset import FilesReader
from mindone.data.latents import MOMENTS_EXT, cached_empty_text
from mindone.data.filters import SampleFilters
from mindone.data.processing import SampleProcessor
from mindone.data.shards import detect_rank_and_world_size
from mindone.data.stream import SampleStream
from mindone.data.tar_stream import MAX_MEMBER_BYTES
from mindone.data.wds_sample import IMAGE_EXTS
from mindone.data.webdataset_dataset import WebdatasetReader
from mindone.errors import ConfigError


def build_sample_stream(
    dataset_type: str,
    data_path: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Callable[[Sequence[str]], np.ndarray],
    image_size: int = 512,
    batch_size: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 2,
    shuffle: bool = True,
    seed: int = 0,
    caption_dropout: float = 0.0,
    random_crop: bool = False,
    random_flip: bool = False,
    filters: Mapping[str, Any] | SampleFilters | None = None,
    start_step: int = 0,
    epoch: int = 0,
    drop_remainder: bool = True,
    shuffle_buffer: int = 1000,
    uneven: str = "pad",
    min_image_size: int = 32,
    parts: Sequence[int] | None = None,
    shard_root: str | None = None,
    allow_outside_data_root: bool = False,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    latent_shape: tuple[int, int, int] | None = None,
    cached_text: bool = False,
    start_method: str = "fork",
) -> SampleStream:
    """The rank's per-sample stream (dicts with ``key``, ``image``, ``token_ids``); arguments as
    :func:`build_dataset`."""
    if rank is None or world_size is None:
        env_rank, env_world = detect_rank_and_world_size()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
    if not 0.0 <= caption_dropout <= 1.0:
        raise ConfigError(f"caption_dropout: expected a probability in [0, 1], got {caption_dropout}")
    if image_size < 8:
        raise ConfigError(f"image_size: expected >= 8, got {image_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers: expected >= 0, got {num_workers}")
    sample_filters = SampleFilters.from_config(filters)
    csv_files = resolve_annotation_files(data_path, dataset_type, parts)
    if dataset_type == "latents" and random_flip:
        raise ConfigError("random_flip: cached latents hold one crop of each image, unflipped: train on the "
                          "images for flips (or encode flipped copies as samples of their own)")
    if dataset_type == "files":
        annotations = read_files_annotations(csv_files, allow_outside_root=allow_outside_data_root)
        reader = FilesReader(annotations, read_meta=sample_filters.active, max_member_bytes=max_member_bytes)
    else:
        shards = read_shard_list(csv_files, shard_root, allow_outside_root=allow_outside_data_root)
        payload = (MOMENTS_EXT,) if dataset_type == "latents" else IMAGE_EXTS
        reader = WebdatasetReader(shards, max_member_bytes=max_member_bytes, payload=payload)
    processor = SampleProcessor(
        tokenizer, image_size=image_size, random_crop=random_crop and dataset_type != "latents",
        random_flip=random_flip, caption_dropout=caption_dropout, filters=sample_filters,
        min_image_size=min_image_size, seed=seed, inputs="latents" if dataset_type == "latents" else "images",
        latent_shape=latent_shape, empty_text=cached_empty_text(data_path) if cached_text else None,
    )
    return SampleStream(
        reader, processor, rank=rank, world_size=world_size, num_workers=num_workers, batch_size=batch_size,
        seed=seed, shuffle=shuffle, shuffle_buffer=shuffle_buffer, uneven=uneven, drop_remainder=drop_remainder,
        epoch=epoch, start_step=start_step, start_method=start_method,
    )


class _ColumnsSource:
    """GeneratorDataset source: (image, token_ids) rows of a :class:`SampleStream`.

    MindSpore reads ``len()`` once and fails any epoch that yields another count, so a resumed
    source is one partial epoch long and refuses a second pass with a clear message.
    """

    def __init__(self, stream: SampleStream) -> None:
        self.stream = stream
        self.length = stream.next_epoch_samples
        self.one_epoch_only = stream.resumed
        self.passes = 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.one_epoch_only and self.passes:
            raise RuntimeError("a dataset built with start_step > 0 holds the rest of that epoch only: "
                               "build the next epoch's dataset with start_step=0")
        self.passes += 1
        for sample in self.stream:
            yield sample["image"], sample["token_ids"]


def build_dataset(
    dataset_type: str,
    data_path: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Callable[[Sequence[str]], np.ndarray],
    image_size: int = 512,
    batch_size: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 2,
    shuffle: bool = True,
    seed: int = 0,
    caption_dropout: float = 0.0,
    random_crop: bool = False,
    random_flip: bool = False,
    filters: Mapping[str, Any] | SampleFilters | None = None,
    start_step: int = 0,
    epoch: int = 0,
    drop_remainder: bool = True,
    **options: Any,
):
    """Training batches for one rank: ``(mindspore.dataset.Dataset, steps_per_epoch)``.

    Args:
        dataset_type: ``"files"`` (``part_<N>.csv``: ``dir,text``), ``"webdataset"``
            (``part_<N>_stats.csv``: ``file_path,num_samples``, tar shards) or ``"latents"`` (the same
            layout holding cached VAE moments, :mod:`mindone.data.latents`: the first column is then
            float32 ``[B, 2C, h, w]`` moments instead of images).
        data_path: a folder holding the part csvs (all parts, or ``parts=[...]``), one csv, or a list.
        tokenizer: callable ``list[str] -> int32 [N, 77]`` (``SDTokenizer``).
        rank, world_size: default to MindSpore communication when initialised, else ``RANK_ID`` /
            ``RANK_SIZE`` (0 / 1 when unset).
        num_workers: decoding processes for this rank (0: in the calling process).
        shuffle, seed: seeded shard shuffle plus bounded sample shuffle, different every epoch.
        caption_dropout: probability of replacing the caption with "" (classifier-free guidance).
        filters: thresholds on the per-sample json, see :mod:`mindone.data.filters`.
        start_step, epoch: resume point. With ``start_step > 0`` the dataset holds the rest of ``epoch``
            (``steps_per_epoch - start_step`` batches, ``get_dataset_size()`` says so) and is iterated
            once; build the following epochs with ``start_step=0`` (those can run many epochs:
            ``epoch``, ``epoch + 1``...). A ``start_step`` past the epoch's end moves to a later epoch.
        options: ``shuffle_buffer`` (1000), ``uneven`` ("pad" | "drop", see :mod:`mindone.data.shards`),
            ``min_image_size`` (32 px), ``parts``, ``shard_root`` (folder, URL prefix or template with
            ``{}`` for relative shard paths), ``allow_outside_data_root`` (False: csv values stay inside
            their root, see :mod:`mindone.data.locations`), ``max_member_bytes`` (64 MiB: larger images,
            captions or jsons are skipped unread), ``latent_shape`` (latents: the ``(C, h, w)`` every
            sample must have), ``cached_text`` (latents: yield the cached text embeddings ``[B, 77, width]``
            instead of token ids), ``start_method`` ("fork").
    """
    import mindspore.dataset as ds  # heavy: only when a MindSpore dataset is wanted

    stream = build_sample_stream(
        dataset_type, data_path, tokenizer, image_size=image_size, batch_size=batch_size, rank=rank,
        world_size=world_size, num_workers=num_workers, shuffle=shuffle, seed=seed,
        caption_dropout=caption_dropout, random_crop=random_crop, random_flip=random_flip, filters=filters,
        start_step=start_step, epoch=epoch, drop_remainder=drop_remainder, **options,
    )
    dataset = ds.GeneratorDataset(
        _ColumnsSource(stream), column_names=["images", "token_ids"], shuffle=False,
        num_parallel_workers=1, python_multiprocessing=False,
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset, stream.steps_per_epoch
