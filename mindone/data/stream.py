"""One rank's sample stream over epochs: plan, workers, per-epoch summary of skipped samples."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterator


from mindone.data.processing import SampleProcessor
from mindone.data.shards import EpochPlan
from mindone.data.transforms import to_model_input
from mindone.data.workers import ShardReader, WorkerTask, iter_worker, run_workers

logger = logging.getLogger(__name__)

_NOT_SKIPS = ("read", "yielded", "refilled")


class SampleStream:
    """Iterable of ``{"key", "image" float32 CHW in [-1,1], "token_ids" int32 [77]}`` for one rank.

    Each ``iter()`` is one epoch, starting at ``epoch`` (and at ``start_step`` for the first one only),
    then ``epoch + 1``... ``len()`` is the number of samples of a full epoch on this rank.
    """

    def __init__(
        self,
        reader: ShardReader,
        processor: SampleProcessor,
        *,
        plan_args: dict,
        num_workers: int = 2,
        epoch: int = 0,
        start_step: int = 0,
        start_method: str = "fork",
    ) -> None:
        """``plan_args``: the keywords of :class:`EpochPlan` (``LoaderConfig.plan_args()``); ``num_workers`` 0
        runs the plan's one worker in this process."""
        self.reader, self.processor = reader, processor
        self.num_workers = num_workers
        self._plan_args = dict(plan_args)
        self.batch_size, self.drop_remainder = self._plan_args["batch_size"], self._plan_args["drop_remainder"]
        self.start_method = start_method
        probe = self.plan(epoch)
        self.steps_per_epoch, self.samples_per_epoch = probe.steps_per_epoch, probe.budget
        epoch += start_step // self.steps_per_epoch  # a step past the end of an epoch lands in a later one
        self._epoch, self._start_step = epoch, start_step % self.steps_per_epoch
        self.last_epoch_counts: Counter = Counter()

    def plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(self.reader.sizes, epoch=epoch, **self._plan_args)

    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def resumed(self) -> bool:
        """True while the next ``iter()`` is a resumed (partial) epoch."""
        return self._start_step > 0

    @property
    def next_epoch_samples(self) -> int:
        """Samples the next ``iter()`` yields: a full epoch, or its tail when resuming."""
        return self.samples_per_epoch - self._start_step * self.batch_size

    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, start_step)`` where the next ``iter()`` starts."""
        return self._epoch, self._start_step

    def seek(self, epoch: int, start_step: int) -> None:
        """Start the next ``iter()`` at batch ``start_step`` of ``epoch``."""
        self._epoch, self._start_step = epoch, start_step

    def iter_processed(self) -> Iterator[tuple]:
        """The next epoch (from the current position) as the processor's tuples, in stream order."""
        epoch, start_step = self._epoch, self._start_step
        self._epoch, self._start_step = epoch + 1, 0
        yield from self._iter_epoch(epoch, start_step)

    def __iter__(self) -> Iterator[dict]:
        for key, pixels, tokens in self.iter_processed():
            yield {"key": key, "image": to_model_input(pixels), "token_ids": tokens}

    def _iter_epoch(self, epoch: int, start_step: int) -> Iterator[tuple]:
        plan = self.plan(epoch)
        tasks = [
            WorkerTask(plan, plan.worker_plan(w, start_step), self.reader, self.processor)
            for w in range(plan.num_workers)
        ]
        consumed = start_step * plan.batch_size
        total = plan.budget - consumed
        counts: Counter = Counter()
        if self.num_workers == 0:
            yield from iter_worker(tasks[0], counts)
        else:
            yield from run_workers(tasks, consumed % plan.num_workers, total, counts, self.start_method)
        self.last_epoch_counts = counts
        skips = {k: v for k, v in sorted(counts.items()) if k not in _NOT_SKIPS and not k.startswith("unjudged_")}
        unjudged = {k: v for k, v in sorted(counts.items()) if k.startswith("unjudged_")}
        logger.info(
            "data epoch %d (rank %d/%d, from step %d): yielded %d of %d read; skipped %d%s; refilled %d%s",
            epoch, plan.rank, plan.world_size, start_step, counts["yielded"], counts["read"], sum(skips.values()),
            f" {skips}" if skips else "", counts["refilled"],
            f"; filters could not judge {unjudged}" if unjudged else "",
        )
