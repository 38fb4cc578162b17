"""MindSpore context, device and distributed set-up: the one place that knows about device specifics.

Everything else in the package is device-neutral. Ascend-only settings live in :func:`_ascend_settings`
and are applied only when the device target is Ascend, so every code path also runs on the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)

MODES = ("graph", "pynative")
DEVICE_TARGETS = ("CPU", "Ascend", "GPU")


@dataclass(frozen=True)
class DeviceInfo:
    """Where this process runs: its rank and the number of data-parallel processes."""

    device_target: str
    mode: str
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, images and logs (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_msrun() -> bool:
    """True when ``msrun`` started this process for a multi-worker job.

    msrun runs the script in the workers (``MS_ROLE=MS_WORKER``) and in one scheduler process
    (``MS_ROLE=MS_SCHED``); both must call ``init()``: the scheduler's call serves the cluster and
    ends that process when the workers are done.
    """
    return os.environ.get("MS_ROLE") in ("MS_WORKER", "MS_SCHED") and int(os.environ.get("MS_WORKER_NUM", "1")) > 1


def scope_compile_cache(fingerprint: str) -> str | None:
    """Give MindSpore's graph compile cache a folder per network fingerprint; returns that folder.

    With ``MS_COMPILER_CACHE_ENABLE=1`` MindSpore reuses a cached graph when the Python source of the
    network matches, even when the cells were built differently: a LoRA run after a full fine-tune with
    the same cache path silently runs the full fine-tune's graph and trains nothing. Keying the cache by
    the options that shape the graph keeps the speed-up without that trap. Call before the first compile.
    """
    if os.environ.get("MS_COMPILER_CACHE_ENABLE") != "1":
        return None
    import hashlib

    base = os.environ.get("MS_COMPILER_CACHE_PATH") or os.path.join(os.getcwd(), "compile_cache")
    scoped = os.path.join(base, "net-" + hashlib.sha256(fingerprint.encode()).hexdigest()[:12])
    os.environ["MS_COMPILER_CACHE_PATH"] = scoped
    logger.info("graph compile cache: %s", scoped)
    return scoped


def default_device_target() -> str:
    """Ascend when MindSpore was built for it, else CPU (GPU only when asked for)."""
    import mindspore as ms

    try:
        target = ms.get_context("device_target")
    except (ValueError, RuntimeError):
        target = "CPU"
    return target if target in DEVICE_TARGETS else "CPU"


def _ascend_settings(max_device_memory: str | None, jit_level: str | None) -> None:
    """Settings that only mean something on Ascend NPUs (kept here, out of the training code)."""
    import mindspore as ms

    if max_device_memory:
        ms.runtime.set_memory(max_size=max_device_memory)
    if jit_level:
        # O0: op-by-op; O1: op fusion; O2: whole-graph sink through CANN GraphEngine (static shapes only).
        ms.set_context(jit_config={"jit_level": jit_level})


def init_device(
    mode: str = "graph",
    device_target: str | None = None,
    distributed: bool | None = None,
    seed: int | None = None,
    max_device_memory: str | None = None,
    jit_level: str | None = None,
) -> DeviceInfo:
    """Set the MindSpore execution mode and device, and join the data-parallel group when distributed.

    ``distributed=None`` joins when launched by ``msrun`` with more than one worker. In a group,
    gradients are mean-reduced across ranks (``gradients_mean=True``). ``seed`` seeds MindSpore's
    global RNG identically on every rank, so that randomly initialised weights match across ranks.
    ``device_id`` is taken from ``DEVICE_ID`` (msrun sets it per local worker) when present.
    """
    import mindspore as ms

    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: expected one of {', '.join(MODES)}")
    target = device_target or default_device_target()
    if target not in DEVICE_TARGETS:
        raise ValueError(f"--device_target {target!r}: expected one of {', '.join(DEVICE_TARGETS)}")
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    device_id = os.environ.get("DEVICE_ID")
    ms.set_device(target, int(device_id) if device_id and target != "CPU" else None)
    if target == "Ascend":
        _ascend_settings(max_device_memory, jit_level)
    if seed is not None:
        ms.set_seed(seed)

    if distributed is None:
        distributed = launched_by_msrun()
    if not distributed:
        return DeviceInfo(device_target=target, mode=mode)

    from mindspore.communication import get_group_size, get_rank, init

    init()
    rank, world_size = get_rank(), get_group_size()
    ms.reset_auto_parallel_context()
    ms.set_auto_parallel_context(
        parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=world_size
    )
    logger.info("joined data-parallel group: rank %d of %d on %s", rank, world_size, target)
    return DeviceInfo(device_target=target, mode=mode, rank=rank, world_size=world_size)
