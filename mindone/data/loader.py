"""``build_dataset``: annotations -> rank sample stream -> MindSpore ``GeneratorDataset`` batches.

The MindSpore dataset yields ``images`` float32 [B, 3, H, W] in [-1, 1] and ``token_ids`` int32
[B, 77]. Decoding runs in this package's own worker processes (see :mod:`mindone.data.workers`), so
the GeneratorDataset itself is a single, light source that only interleaves finished samples.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from mindone.data.annotations import read_files_annotations, read_shard_list, resolve_annotation_files
from mindone.data.bucket_stream import BucketBatchStream
from mindone.data.drop_list import files_sample_id, sample_id, shard_name
from mindone.data.files_dataset import FilesReader
from mindone.data.latents import MOMENTS_EXT, cached_empty_text
from mindone.data.filters import SampleFilters
from mindone.data.processing import SampleProcessor
from mindone.data.loader_config import LoaderConfig
from mindone.data.shards import EpochPlan
from mindone.data.stream import SampleStream
from mindone.data.tar_stream import RawSample
from mindone.data.wds_sample import IMAGE_EXTS
from mindone.data.webdataset_dataset import WebdatasetReader


def build_sample_stream(
    dataset_type: str,
    data_path: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Callable[[Sequence[str]], np.ndarray],
    *,
    start_step: int = 0,
    epoch: int = 0,
    **config: Any,
) -> SampleStream:
    """The rank's per-sample stream (dicts with ``key``, ``image``, ``token_ids``); ``config`` holds the
    fields of :class:`~mindone.data.loader_config.LoaderConfig`, ``start_step`` / ``epoch`` as :func:`build_dataset`."""
    return open_stream(LoaderConfig(dataset_type=dataset_type, data_path=data_path, **config), tokenizer,
                       start_step=start_step, epoch=epoch)


class _DropListed:
    """A reader whose samples on the filters' drop list come out as ``filtered_drop_list``, before they are
    decoded. A sample's id (:mod:`mindone.data.drop_list`) is its shard's ``part_<N>/<shard>`` and its key;
    for the files dataset, the image path's last three components."""

    def __init__(self, reader, filters: SampleFilters, files: bool) -> None:
        self.reader, self.filters, self.files = reader, filters, files
        self.sizes = reader.sizes
        self.filters.listed("")  # load the list once, before the workers fork
        self.shards = None if files else [shard_name(url) for url in reader.urls]

    def read(self, shard: int, members: Sequence[int]) -> Iterator[tuple[int, RawSample | str]]:
        for member, item in self.reader.read(shard, members):
            if isinstance(item, RawSample):
                sid = files_sample_id(self.reader.paths[shard]) if self.files else sample_id(self.shards[shard], item.key)
                item = self.filters.listed(sid) or item
            yield member, item


def _reader(config: LoaderConfig, sample_filters: SampleFilters):
    """The shard reader of ``config``'s annotations (reads the csvs, not the data)."""
    csv_files = resolve_annotation_files(config.data_path, config.dataset_type, config.parts)
    if config.dataset_type == "files":
        annotations = read_files_annotations(csv_files, allow_outside_root=config.allow_outside_data_root)
        reader = FilesReader(annotations, read_meta=sample_filters.needs_meta, max_member_bytes=config.max_member_bytes)
    else:
        shards = read_shard_list(csv_files, config.shard_root, allow_outside_root=config.allow_outside_data_root)
        payload = (MOMENTS_EXT,) if config.dataset_type == "latents" else IMAGE_EXTS
        reader = WebdatasetReader(shards, max_member_bytes=config.max_member_bytes, payload=payload)
    if sample_filters.drop_list is None:
        return reader
    return _DropListed(reader, sample_filters, files=config.dataset_type == "files")


def open_stream(config: LoaderConfig, tokenizer: Callable[[Sequence[str]], np.ndarray], *, start_step: int = 0,
                epoch: int = 0) -> SampleStream | BucketBatchStream:
    """:func:`build_sample_stream` for a ready :class:`LoaderConfig`; with ``buckets``, a stream of whole
    batches (:class:`~mindone.data.bucket_stream.BucketBatchStream`)."""
    config = config.resolved()
    sample_filters = SampleFilters.from_config(config.filters)
    latents = config.dataset_type == "latents"
    processor = SampleProcessor(
        tokenizer, image_size=config.image_size, random_crop=config.random_crop and not latents,
        random_flip=config.random_flip, caption_dropout=config.caption_dropout, filters=sample_filters,
        min_image_size=config.min_image_size, seed=config.seed, inputs="latents" if latents else "images",
        latent_shape=config.latent_shape, buckets=config.buckets,
        empty_text=cached_empty_text(config.data_path) if config.cached_text else None,
    )
    stream = SampleStream(_reader(config, sample_filters), processor, plan_args=config.plan_args(),
                          num_workers=config.num_workers, epoch=epoch, start_step=start_step,
                          start_method=config.start_method)
    if config.buckets is None:
        return stream
    return BucketBatchStream(stream, config.buckets, window_batches=config.bucket_window, seed=config.seed,
                             random_crop=config.random_crop, random_flip=config.random_flip)


def steps_per_epoch(**config: Any) -> int:
    """Batches per epoch on this rank for the :class:`LoaderConfig` fields ``config``: the epoch plan over the
    annotation csvs' sample counts, without opening a shard or building a dataset."""
    cfg = LoaderConfig(**config).resolved()
    reader = _reader(cfg, replace(SampleFilters.from_config(cfg.filters), drop_list=None))
    return EpochPlan(reader.sizes, epoch=0, **cfg.plan_args()).steps_per_epoch


class _ColumnsSource:
    """GeneratorDataset source: ``(image, token_ids)`` rows of a :class:`SampleStream`, or whole
    ``(images, token_ids)`` batches of a :class:`BucketBatchStream` (their size changes from batch to batch,
    so MindSpore does not batch them again).

    MindSpore reads ``len()`` once and fails any epoch that yields another count, so a resumed
    source is one partial epoch long and refuses a second pass with a clear message.
    """

    def __init__(self, stream: SampleStream | BucketBatchStream) -> None:
        self.stream = stream
        self.batched = isinstance(stream, BucketBatchStream)
        self.length = stream.next_epoch_batches if self.batched else stream.next_epoch_samples
        self.one_epoch_only = self.length < stream.steps_per_epoch if self.batched else stream.resumed
        self.passes = 0

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if self.one_epoch_only and self.passes:
            raise RuntimeError("a dataset built with start_step > 0 holds the rest of that epoch only: "
                               "build the next epoch's dataset with start_step=0")
        self.passes += 1
        image_key = "images" if self.batched else "image"
        for item in self.stream:
            yield item[image_key], item["token_ids"]


def build_dataset(
    dataset_type: str,
    data_path: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer: Callable[[Sequence[str]], np.ndarray],
    *,
    start_step: int = 0,
    epoch: int = 0,
    **config: Any,
):
    """Training batches for one rank: ``(mindspore.dataset.Dataset, steps_per_epoch)``.

    Args:
        dataset_type: ``"files"`` (``part_<N>.csv``: ``dir,text``), ``"webdataset"``
            (``part_<N>_stats.csv``: ``file_path,num_samples``, tar shards) or ``"latents"`` (the same
            layout holding cached VAE moments, :mod:`mindone.data.latents`: the first column is then
            float32 ``[B, 2C, h, w]`` moments instead of images).
        data_path: a folder holding the part csvs (all parts, or ``parts=[...]``), one csv, or a list.
        tokenizer: callable ``list[str] -> int32 [N, 77]`` (``SDTokenizer``).
        start_step, epoch: resume point. With ``start_step > 0`` the dataset holds the rest of ``epoch``
            (``steps_per_epoch - start_step`` batches, ``get_dataset_size()`` says so) and is iterated
            once; build the following epochs with ``start_step=0`` (those can run many epochs:
            ``epoch``, ``epoch + 1``...). A ``start_step`` past the epoch's end moves to a later epoch.
        config: the other fields of :class:`~mindone.data.loader_config.LoaderConfig` (batch size, rank and
            world size, workers, shuffling, augmentation, filters, uneven policy...), as keywords.
    """
    import mindspore.dataset as ds  # heavy: only when a MindSpore dataset is wanted

    stream = build_sample_stream(dataset_type, data_path, tokenizer, start_step=start_step, epoch=epoch, **config)
    dataset = ds.GeneratorDataset(_ColumnsSource(stream), column_names=["images", "token_ids"], shuffle=False,
                                  num_parallel_workers=1, python_multiprocessing=False)
    if isinstance(stream, SampleStream):
        dataset = dataset.batch(stream.batch_size, drop_remainder=stream.drop_remainder)
    return dataset, stream.steps_per_epoch
