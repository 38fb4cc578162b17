"""What every sampler shares: timestep spacings and the conversion of a model output to (x0, eps).

A sampler's coefficients are Python floats computed in float64 from the schedule, and its updates use only
``+``, ``-`` and multiplication by those floats, so the same sampler steps numpy arrays, MindSpore tensors
or torch tensors and keeps their dtype.
"""

from __future__ import annotations

import abc
import math
from typing import Any, TypeVar

import numpy as np

from mindone.diffusion.schedule import NoiseSchedule, normalize_prediction_type

Array = TypeVar("Array", bound=Any)  # numpy array, mindspore.Tensor or torch.Tensor

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def spaced_timesteps(num_train_timesteps: int, num_steps: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """Descending int64 timesteps, spaced as diffusers does (Table 2 of arXiv:2305.08891).

    ``leading``: ``arange(num_steps) * (T // num_steps) + steps_offset`` (SD 2's DDIM: offset 1 gives 981..1 for
    50 steps); ``trailing``: ``round(arange(T, 0, -T / num_steps)) - 1``; ``linspace``:
    ``round(linspace(0, T - 1, num_steps))``.
    """
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    if spacing == "leading":
        ratio = num_train_timesteps // num_steps
        timesteps = np.arange(num_steps, dtype=np.int64)[::-1] * ratio + steps_offset
    elif spacing == "trailing":
        timesteps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        timesteps = np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"timestep spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    return check_timesteps(timesteps, num_train_timesteps, num_steps, spacing)


def check_timesteps(timesteps: np.ndarray, num_train_timesteps: int, num_steps: int, spacing: str) -> np.ndarray:
    """Refuse a step count whose spacing leaves [0, T) or repeats a timestep (e.g. 1000 leading steps
    with offset 1 reach t=1000; a repeat would divide by a zero step size in DPM-Solver)."""
    if timesteps.size and (timesteps.min() < 0 or timesteps.max() >= num_train_timesteps):
        raise ValueError(f"{num_steps} steps with {spacing} spacing reach timestep {int(timesteps.max())}, "
                         f"outside [0, {num_train_timesteps}): use fewer steps")
    if np.unique(timesteps).size != timesteps.size:
        raise ValueError(f"{num_steps} steps with {spacing} spacing repeat a timestep: use fewer steps")
    return np.ascontiguousarray(timesteps)


def split_prediction(model_output: Array, sample: Array, alpha: float, sigma: float,
                     prediction_type: str) -> tuple[Array, Array]:
    """(predicted x0, predicted eps) from the model output at a point with ``x_t = alpha * x0 + sigma * eps``."""
    if prediction_type == "eps":
        return (sample - sigma * model_output) * (1.0 / alpha), model_output
    # v = alpha * eps - sigma * x0  =>  x0 = alpha * x_t - sigma * v,  eps = alpha * v + sigma * x_t
    return alpha * sample - sigma * model_output, alpha * model_output + sigma * sample


class Sampler(abc.ABC):
    """A discrete-time sampler over a :class:`NoiseSchedule`.

    Use: ``timesteps = sampler.set_timesteps(n)``, then for ``i, t`` in ``enumerate(timesteps)``:
    ``x = sampler.step(model(x, t), i, x, noise)``. ``noise`` is needed only when :attr:`needs_noise` is true.
    """

    needs_noise: bool = False

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "eps") -> None:
        self.schedule = schedule
        self.prediction_type = normalize_prediction_type(prediction_type)
        self.timesteps = np.zeros(0, dtype=np.int64)

    def alpha_sigma(self, t: int) -> tuple[float, float]:
        """``sqrt(acp[t])`` and ``sqrt(1 - acp[t])`` as float64 Python floats."""
        acp = float(self.schedule.alphas_cumprod[t])
        return math.sqrt(acp), math.sqrt(1.0 - acp)

    @abc.abstractmethod
    def set_timesteps(self, num_steps: int) -> np.ndarray:
        """Prepare a sampling run of ``num_steps`` model calls; returns the descending timesteps."""

    @abc.abstractmethod
    def step(self, model_output: Array, index: int, sample: Array, noise: Array | None = None) -> Array:
        """Move ``sample`` from ``timesteps[index]`` to the next, less noisy, point."""
