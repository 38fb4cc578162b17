"""Data workers: each produces its planned share of a rank's epoch; the rank interleaves them round-robin.

A worker reads its positions in streaming order (see :mod:`mindone.data.shards`), holds the undecoded
samples it reads ahead of their turn, and processes them in its planned order, skipping bad ones and
refilling from the positions after its chunk until it has yielded exactly its quota. Workers are
processes (``fork`` by default, like MindSpore's own GeneratorDataset workers); with ``num_workers=0``
the single worker runs in the calling process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from mindone.data.processing import Processed, SampleProcessor
from mindone.data.shards import EpochPlan, WorkerPlan
from mindone.data.tar_stream import RawSample

logger = logging.getLogger(__name__)

REFILL_BLOCK = 256
SEND_CHUNK = 4  # samples per queue message: fewer pickling round trips, little added latency
QUEUE_CHUNKS = 4
POLL_S = 1.0


class ShardReader(Protocol):
    sizes: np.ndarray

    def read(self, shard: int, members: Sequence[int]) -> Iterator[tuple[int, RawSample | str]]: ...


class NoUsableSample(RuntimeError):
    """A worker scanned the whole epoch stream without finding a single usable sample (or the source is
    unreadable as a whole). MindSpore's GeneratorDataset re-raises it as a RuntimeError holding its text:
    :func:`no_usable_sample_line` finds the one line to show the user."""


def no_usable_sample_line(err: BaseException) -> str | None:
    """The ``no usable sample ...`` line inside ``err`` (however wrapped), or None."""
    marker = f"{NoUsableSample.__name__}: "
    text = str(err)
    at = text.find(marker)
    return text[at + len(marker):].split("\n", 1)[0] if at >= 0 else None


@dataclass
class WorkerTask:
    plan: EpochPlan
    worker: WorkerPlan
    reader: ShardReader
    processor: SampleProcessor


def _read_positions(plan: EpochPlan, reader: ShardReader, positions: np.ndarray) -> Iterator[tuple[int, Any]]:
    """``(position, RawSample | reason)`` for ascending epoch positions (they may exceed N: taken mod N)."""
    for shard, members, run_positions in plan.shard_runs(positions):
        for (member, item), position in zip(reader.read(shard, members), run_positions.tolist()):
            yield position, item


def iter_worker(task: WorkerTask, counts: Counter) -> Iterator[Processed]:
    """The worker's samples in planned order, exactly ``task.worker.remaining`` of them."""
    plan, wp, process = task.plan, task.worker, task.processor
    order = wp.order[wp.emitted :]
    need = wp.remaining
    with contextlib.closing(_read_positions(plan, task.reader, wp.chunk_start + np.sort(order))) as reads:
        pending: dict[int, Any] = {}
        for local in order.tolist():
            while local not in pending:
                position, item = next(reads)
                pending[position - wp.chunk_start] = item
            result = _process(pending.pop(local), process, plan.epoch, counts)
            if result is not None:
                need -= 1
                yield result
    next_position, scanned, found = wp.chunk_start + wp.quota, 0, 0
    while need > 0:
        block = np.arange(next_position, next_position + REFILL_BLOCK, dtype=np.int64)
        with contextlib.closing(_read_positions(plan, task.reader, block)) as reads:  # closes pipes on break
            for _, item in reads:
                scanned += 1
                result = _process(item, process, plan.epoch, counts)
                if result is not None:
                    found += 1
                    counts["refilled"] += 1
                    need -= 1
                    yield result
                    if need == 0:
                        break
        next_position += REFILL_BLOCK
        if scanned >= plan.total and found == 0:
            raise NoUsableSample(f"no usable sample in the {plan.total} samples of the dataset (see skip counts)")


def _process(item: Any, process: SampleProcessor, epoch: int, counts: Counter) -> Processed | None:
    counts["read"] += 1
    result = process(item, epoch, counts) if isinstance(item, RawSample) else item
    if isinstance(result, str):
        counts[result] += 1
        return None
    counts["yielded"] += 1
    return result


def _worker_main(task: WorkerTask, out: mp.Queue) -> None:
    counts: Counter = Counter()
    try:
        chunk: list[Processed] = []
        for sample in iter_worker(task, counts):
            chunk.append(sample)
            if len(chunk) == SEND_CHUNK:
                out.put(("samples", chunk))
                chunk = []
        if chunk:
            out.put(("samples", chunk))
        out.put(("done", dict(counts)))
    except BaseException as err:  # report to the parent instead of dying silently
        out.put(("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))


def run_workers(
    tasks: list[WorkerTask], first_worker: int, total: int, counts: Counter, start_method: str = "fork"
) -> Iterator[Processed]:
    """Interleave the workers' outputs round-robin starting at ``first_worker``; ``total`` samples."""
    ctx = mp.get_context(start_method)
    queues = [ctx.Queue(maxsize=QUEUE_CHUNKS) for _ in tasks]
    procs = [
        ctx.Process(target=_worker_main, args=(task, q), name=f"data-worker-{i}", daemon=True)
        for i, (task, q) in enumerate(zip(tasks, queues))
    ]
    for proc in procs:
        proc.start()
    buffers: list[deque] = [deque() for _ in tasks]
    finished = [False] * len(tasks)

    def receive(w: int) -> None:
        while True:
            try:
                kind, payload = queues[w].get(timeout=POLL_S)
                break
            except queue.Empty:
                if not procs[w].is_alive() and queues[w].empty():
                    raise RuntimeError(f"data worker {w} died (exit code {procs[w].exitcode})") from None
        if kind == "error":
            raise RuntimeError(f"data worker {w} failed: {payload}")
        if kind == "done":
            finished[w] = True
            counts.update(payload)
        else:
            buffers[w].extend(payload)

    try:
        for i in range(total):
            w = (first_worker + i) % len(tasks)
            while not buffers[w]:
                if finished[w]:
                    raise RuntimeError(f"data worker {w} ended before its quota")
                receive(w)
            yield buffers[w].popleft()
        for w in range(len(tasks)):
            while not finished[w]:
                receive(w)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc, q in zip(procs, queues):
            proc.join(timeout=5)
            q.cancel_join_thread()
            q.close()
