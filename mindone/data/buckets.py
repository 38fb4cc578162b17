"""Aspect-ratio buckets: training images keep their shape, every batch has one size.

**Bucket sizes** (:class:`BucketSpec`, kohya-style): every ``(width, height)`` with both sides multiples
of ``step`` in ``[min_side, max_side]``, area at most ``resolution²`` (for each width the tallest such
height), and aspect ratio at most ``max_aspect``; both orientations, and ``resolution²`` itself. A sample
belongs to the bucket nearest its aspect ratio (by ``|log(w/h) - log(bw/bh)|``); it is resized to cover the
bucket (``scale = max(bw/w, bh/h)``) and cropped to it, so only the sides beyond the bucket's aspect ratio
are cut, a few percent for a neighbouring bucket.

**Batches, in windows** (:func:`compose_window`). The rank's sample stream (the epoch plan of
:mod:`mindone.data.shards`, unchanged: same samples, same order, same ``steps_per_epoch``) is cut into
windows of ``window_batches × batch_size`` consecutive samples (the last one shorter, still whole
batches). Each window becomes exactly ``len(window) / batch_size`` batches, with every sample of the
window in exactly one of them:

1. each bucket's samples, in stream order, fill whole batches of that bucket;
2. the rest (fewer than ``batch_size`` per bucket) are sorted by aspect ratio and cut into batches of
   ``batch_size`` neighbours; each such batch takes the bucket nearest its median sample, so a few
   samples go to a neighbouring bucket (a somewhat larger crop) instead of being dropped or repeated;
3. batches are emitted in the stream order of their first sample.

So the promises of the epoch plan hold as they are: each sample once per epoch (the uneven-split policy
still decides only what happens between ranks), every rank the same number of steps. Memory is one window
of decoded samples. Resume at step ``k`` is exact: window ``k // window_batches`` is read again from its
first sample and its first ``k % window_batches`` batches are skipped (its composition depends on that
window's samples alone). In GRAPH_MODE each bucket size compiles its own train graph once: at most
``len(spec.sizes)`` graphs, fewer in practice (the sizes a dataset's aspect ratios reach).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mindone.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class BucketSpec:
    """The bucket sizes of one training resolution (see the module docstring)."""

    resolution: int
    min_side: int = 256
    max_side: int = 1024
    step: int = 64
    max_aspect: float = 4.0
    sizes: tuple[tuple[int, int], ...] = field(init=False)  # (width, height), by aspect ratio

    def __post_init__(self) -> None:
        r, lo, hi, step = self.resolution, self.min_side, self.max_side, self.step
        if step < 8 or step % 8:
            raise ConfigError(f"bucket step {step}: must be a positive multiple of 8 (the latent grid)")
        if not (lo <= r <= hi) or lo % step or hi % step or r % step:
            raise ConfigError(f"buckets: need min_side <= resolution <= max_side, all multiples of the step "
                              f"{step} (got {lo}, {r}, {hi})")
        if self.max_aspect < 1.0:
            raise ConfigError(f"bucket max_aspect {self.max_aspect}: must be at least 1")
        found = {(r, r)}
        for w in range(lo, hi + 1, step):
            h = min(hi, (r * r // w) // step * step)
            if h >= lo and max(w, h) / min(w, h) <= self.max_aspect:
                found.update({(w, h), (h, w)})
        object.__setattr__(self, "sizes", tuple(sorted(found, key=lambda s: (s[0] / s[1], s[0]))))

    @property
    def log_aspects(self) -> np.ndarray:
        return np.log([w / h for w, h in self.sizes])

    def nearest(self, log_aspect: np.ndarray | float) -> np.ndarray:
        """Bucket index of each ``log(width / height)``."""
        values = np.asarray(log_aspect, dtype=np.float64)
        return np.abs(values[..., None] - self.log_aspects).argmin(axis=-1)


@dataclass(frozen=True)
class Batch:
    bucket: int  # index into BucketSpec.sizes
    members: np.ndarray  # indices into the window, in the order they appear in the batch
    moved: int  # members whose own bucket is another one (step 2 of the module docstring)


def compose_window(log_aspects: np.ndarray, spec: BucketSpec, batch_size: int) -> list[Batch]:
    """The batches of one window (``log(w/h)`` of its samples in stream order; a multiple of ``batch_size``)."""
    log_aspects = np.asarray(log_aspects, dtype=np.float64)
    n = len(log_aspects)
    if n % batch_size:
        raise ValueError(f"window of {n} samples is not a whole number of batches of {batch_size}")
    own = spec.nearest(log_aspects)
    batches: list[Batch] = []
    rest: list[np.ndarray] = []
    for bucket in np.unique(own):
        members = np.flatnonzero(own == bucket)  # stream order
        whole = len(members) // batch_size * batch_size
        batches += [Batch(int(bucket), members[i:i + batch_size], 0) for i in range(0, whole, batch_size)]
        rest.append(members[whole:])
    leftover = np.concatenate(rest) if rest else np.zeros(0, np.int64)
    leftover = leftover[np.lexsort((leftover, log_aspects[leftover]))]  # by aspect ratio, then stream order
    for i in range(0, len(leftover), batch_size):
        group = np.sort(leftover[i:i + batch_size])
        bucket = int(spec.nearest(np.median(log_aspects[group])))
        batches.append(Batch(bucket, group, int(np.sum(own[group] != bucket))))
    return sorted(batches, key=lambda b: int(b.members.min()))


def window_bounds(total: int, batch_size: int, window_batches: int) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges of the windows of a rank's epoch of ``total`` samples."""
    size = window_batches * batch_size
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def cover_size(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int]:
    """The size ``width × height`` is resized to so it covers ``bucket`` with its aspect ratio kept."""
    scale = max(bucket[0] / width, bucket[1] / height)
    return max(bucket[0], math.ceil(width * scale - 1e-6)), max(bucket[1], math.ceil(height * scale - 1e-6))
