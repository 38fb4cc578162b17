"""Multistep DPM-Solver++ (Lu et al., arXiv:2211.01095), step for step equal to diffusers'
``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint")``.

With ``solver_order=2`` this is "DPM++ 2M": the first step is first order (no history yet), later steps
use the previous data prediction, and, as in diffusers with ``final_sigmas_type="zero"``, the final step
into sigma = 0 is first order (so diffusers' ``lower_order_final`` changes nothing at order <= 2).
Defaults are what ``DPMSolverMultistepScheduler.from_config(<SD 2 scheduler config>)`` gives:
``timestep_spacing="linspace"`` (the SD 2 config sets no spacing, and this scheduler's default wins).
On a zero-terminal-SNR schedule the pure-noise point's ``acp = 0`` is taken as ``2**-24``, as diffusers
does, so that ``lambda = log(alpha / sigma)`` stays finite.
"""

from __future__ import annotations

import math

import numpy as np

from mindone.diffusion.samplers.base import Array, Sampler, check_timesteps, spaced_timesteps, split_prediction
from mindone.diffusion.schedule import NoiseSchedule


class DPMSolverSampler(Sampler):
    """DPM-Solver++ multistep, order 1 or 2, deterministic.

    Args:
        schedule: the training noise schedule.
        prediction_type: what the model predicts, ``"eps"`` or ``"v"``.
        solver_order: 2 (DPM++ 2M, recommended for guided sampling) or 1 (equivalent to DDIM).
        timestep_spacing: ``"linspace"`` (default), ``"leading"`` or ``"trailing"``.
        steps_offset: added to ``leading`` timesteps.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: str = "eps",
        solver_order: int = 2,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        super().__init__(schedule, prediction_type)
        if solver_order not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2, got {solver_order}")
        self.solver_order = solver_order
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self._alpha_sigma: list[tuple[float, float]] = []
        self._previous_x0: Array | None = None
        self._next_index = 0

    def set_timesteps(self, num_steps: int) -> np.ndarray:
        T = self.schedule.num_train_timesteps
        if self.timestep_spacing == "linspace":
            # num_steps + 1 points from 0 to T-1, dropping t=0 (diffusers' DPM-Solver variant of linspace).
            timesteps = np.linspace(0, T - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64)
            self.timesteps = check_timesteps(timesteps, T, num_steps, "linspace")
        elif self.timestep_spacing == "leading":
            if not 1 <= num_steps < T:
                raise ValueError(f"num_steps must be in [1, {T - 1}], got {num_steps}")
            ratio = T // (num_steps + 1)
            timesteps = np.arange(num_steps + 1, dtype=np.int64)[::-1][:-1] * ratio + self.steps_offset
            self.timesteps = check_timesteps(timesteps, T, num_steps, "leading")
        else:
            self.timesteps = spaced_timesteps(T, num_steps, self.timestep_spacing, self.steps_offset)
        # (alpha, sigma) at each timestep, then the end point: sigma = 0 (clean data).
        self._alpha_sigma = [self._finite_alpha_sigma(int(t)) for t in self.timesteps] + [(1.0, 0.0)]
        self._previous_x0 = None
        self._next_index = 0
        return self.timesteps

    def _finite_alpha_sigma(self, t: int) -> tuple[float, float]:
        acp = max(float(self.schedule.alphas_cumprod[t]), 2.0**-24)
        return math.sqrt(acp), math.sqrt(1.0 - acp)

    def step(self, model_output: Array, index: int, sample: Array, noise: Array | None = None) -> Array:
        if index != self._next_index:
            raise ValueError(f"DPM-Solver steps must run in order: expected step {self._next_index}, got {index}")
        n = len(self.timesteps)
        alpha_s, sigma_s = self._alpha_sigma[index]
        alpha_t, sigma_t = self._alpha_sigma[index + 1]
        x0, _ = split_prediction(model_output, sample, alpha_s, sigma_s, self.prediction_type)

        # First order without history, and for the final step into sigma = 0.
        first_order = self.solver_order == 1 or self._previous_x0 is None or index == n - 1
        # exp(-h) with h = lambda_t - lambda_s and lambda = log(alpha / sigma); 0 when sigma_t = 0.
        exp_neg_h = (alpha_s * sigma_t) / (sigma_s * alpha_t)
        if first_order:
            prev_sample = (sigma_t / sigma_s) * sample - (alpha_t * (exp_neg_h - 1.0)) * x0
        else:
            alpha_p, sigma_p = self._alpha_sigma[index - 1]
            h = math.log(alpha_t / sigma_t) - math.log(alpha_s / sigma_s)
            h_prev = math.log(alpha_s / sigma_s) - math.log(alpha_p / sigma_p)
            r = h_prev / h
            d1 = (1.0 / r) * (x0 - self._previous_x0)
            c = alpha_t * (exp_neg_h - 1.0)
            prev_sample = (sigma_t / sigma_s) * sample - c * x0 - (0.5 * c) * d1
        self._previous_x0 = x0
        self._next_index += 1
        return prev_sample
