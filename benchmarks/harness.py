"""What the side-by-side benchmarks share: timing a step, one process per side, interleaved rounds, the best round.

A benchmark compares *sides* (diffusers/torch vs MindSpore, VAE-in-the-step vs cached latents, one loader
vs another) on the same work:

- :func:`time_steps` times a step inside a side: the first call on its own (MindSpore's graph compile),
  then ``warmup - 1`` untimed calls, then ``steps`` timed ones, of which the median counts;
- a side that must not share a process with the other (its own framework state, threads and memory) runs
  as a worker: the benchmark script started again with its hidden worker flag and the parent's settings
  (:func:`spawn_worker`, :func:`forward_flags`), which prints its figures as one ``RESULT <json>`` line
  (:func:`print_result`); a worker that fails ends the benchmark with the tail of its stderr;
- :func:`saved_reference_models`: a torch side and a MindSpore side start from the same weights, a seeded
  diffusers model saved to a temporary folder that both load (MindSpore through mindone.convert);
- :func:`interleaved_rounds` runs every side once per round, in turn, so that other load on a shared
  machine hits all sides alike; :func:`best_round` keeps, per side, the round with the fastest step.

Benchmarks run from the checkout as ``python benchmarks/<bench>.py``, which puts this folder on
``sys.path``: they import this module as ``harness``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np

T = TypeVar("T")
RESULT_PREFIX = "RESULT "


def time_steps(step: Callable[[int], object], warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds per timed step); ``step(i)`` gets the step's index."""
    start = time.perf_counter()
    step(0)
    first = time.perf_counter() - start
    for i in range(1, warmup):
        step(i)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(warmup + i)
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def print_result(result: Mapping[str, object]) -> None:
    """A worker's figures, as the line :func:`spawn_worker` reads."""
    print(RESULT_PREFIX + json.dumps(dict(result)), flush=True)


def spawn_worker(script: str, args: Iterable[object], *, label: str, env: Mapping[str, str] | None = None) -> dict:
    """Run ``python <script> <args>`` and return its last ``RESULT`` line; exit naming ``label`` if it fails."""
    cmd = [sys.executable, script, *map(str, args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=None if env is None else dict(env))
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if out.returncode or not lines:
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def forward_flags(args: argparse.Namespace, names: Iterable[str]) -> list[str]:
    """``--<name> <value>`` for each of ``names`` set in ``args``: a switch that is on gives ``--<name>`` alone,
    one that is off (False) or a value that is unset (None) gives nothing."""
    flags: list[str] = []
    for name in names:
        value = getattr(args, name)
        if value is True:
            flags.append(f"--{name}")
        elif value is not None and value is not False:
            flags += [f"--{name}", str(value)]
    return flags


@contextlib.contextmanager
def saved_reference_models(cfg: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The seeded diffusers models of a mindone model config, saved as a diffusers folder (``unet/``,
    ``vae/``, ``text_encoder/``); yields (the folder, the torch models by those names). Removed on exit."""
    from mindone.convert.diffusers_reference import build_reference_models

    models = dict(zip(("unet", "vae", "text_encoder"), build_reference_models(cfg)))
    with tempfile.TemporaryDirectory() as folder:
        for name, module in models.items():
            module.save_pretrained(Path(folder) / name)
        yield folder, models


def interleaved_rounds(run_side: Callable[[str], T], sides: Iterable[str], rounds: int) -> dict[str, list[T]]:
    """``run_side(side)`` for every side in turn, ``rounds`` times; each side's results in round order."""
    sides = list(sides)
    results: dict[str, list[T]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side in sides:
            results[side].append(run_side(side))
    return results


def best_round(results: Mapping[str, list[dict]], key: str = "step") -> dict[str, dict]:
    """Each side's round with the smallest ``key`` (seconds per step)."""
    return {side: min(runs, key=lambda r: r[key]) for side, runs in results.items()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, for the report line (the machine may be shared)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
