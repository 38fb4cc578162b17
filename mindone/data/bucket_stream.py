"""One rank's batches with aspect-ratio buckets: the sample stream cut into windows (:mod:`mindone.data.buckets`).

Each ``iter()`` is one epoch of ``steps_per_epoch`` batches (the rest of it when resuming), each a dict with
``keys``, ``images`` float32 ``[B, 3, h, w]`` in [-1, 1] of one bucket size and ``token_ids`` int32
``[B, 77]``. Random crop and flip are drawn from ``(seed, epoch, crc32(key))``, like every other random
choice of a sample, so they do not depend on which batch the sample lands in.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from typing import Iterator

import numpy as np

from mindone.data.buckets import BucketSpec, compose_window, window_bounds
from mindone.data.stream import SampleStream
from mindone.data.transforms import crop_to_bucket, hwc_to_chw, to_model_input

logger = logging.getLogger(__name__)


class BucketBatchStream:
    """Bucketed batches of ``stream`` (a :class:`SampleStream` whose processor has ``buckets`` set)."""

    def __init__(self, stream: SampleStream, spec: BucketSpec, *, window_batches: int = 64, seed: int = 0,
                 random_crop: bool = False, random_flip: bool = False) -> None:
        if window_batches < 1:
            raise ValueError(f"window_batches: expected >= 1, got {window_batches}")
        self.stream, self.spec, self.window_batches = stream, spec, window_batches
        self.seed, self.random_crop, self.random_flip = seed, random_crop, random_flip
        self.batch_size = stream.batch_size
        self.steps_per_epoch = stream.steps_per_epoch
        # The sample stream resumes at a window start; the batches of that window before the resume step
        # are composed again and skipped.
        self._epoch, start_step = stream.position
        self._skip = start_step % window_batches
        stream.seek(self._epoch, start_step - self._skip)
        self.last_epoch_counts: Counter = Counter()

    @property
    def next_epoch_batches(self) -> int:
        return self.steps_per_epoch - self.stream.position[1] - self._skip

    def __iter__(self) -> Iterator[dict]:
        epoch, start_step = self.stream.position
        skip, self._skip = self._skip, 0
        counts: Counter = Counter()
        samples = self.stream.iter_processed()
        total = self.steps_per_epoch * self.batch_size - start_step * self.batch_size
        for lo, hi in window_bounds(total, self.batch_size, self.window_batches):
            window = [next(samples) for _ in range(hi - lo)]
            for batch in compose_window(np.array([s[3] for s in window]), self.spec, self.batch_size):
                counts["moved_bucket"] += batch.moved
                counts[f"bucket_{self.spec.sizes[batch.bucket][0]}x{self.spec.sizes[batch.bucket][1]}"] += 1
                if skip:
                    skip -= 1
                    continue
                yield self._materialize(epoch, [window[i] for i in batch.members], self.spec.sizes[batch.bucket])
        for _ in samples:  # let the stream finish its epoch (worker shutdown, skip counts)
            pass
        self.last_epoch_counts = counts
        logger.info("bucketed epoch %d: %s", epoch, dict(sorted(counts.items())))

    def _materialize(self, epoch: int, members: list[tuple], bucket: tuple[int, int]) -> dict:
        images = []
        for key, pixels, _, _ in members:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, zlib.crc32(key.encode()), 1])
            crop_rng = rng if self.random_crop else None
            flip = bool(self.random_flip and rng.random() < 0.5)
            images.append(hwc_to_chw(crop_to_bucket(pixels, bucket, crop_rng, flip)))
        return {"keys": [m[0] for m in members], "images": to_model_input(np.stack(images)),
                "token_ids": np.stack([m[2] for m in members])}
