"""DDIM (Song et al., arXiv:2010.02502), step for step equal to diffusers' ``DDIMScheduler``.

Defaults are SD 2's released scheduler config: ``timestep_spacing="leading"`` with ``steps_offset=1``,
``set_alpha_to_one=False`` (the step after t=1 lands on acp[0], not 1) and no clipping of x0.
"""

from __future__ import annotations

import math

import numpy as np

from mindone.diffusion.samplers.base import Array, Sampler, spaced_timesteps, split_prediction
from mindone.diffusion.schedule import NoiseSchedule


class DDIMSampler(Sampler):
    """DDIM with ``eta`` (0: deterministic; 1: DDPM-like ancestral noise).

    Args:
        schedule: the training noise schedule.
        prediction_type: what the model predicts, ``"eps"`` or ``"v"``.
        eta: weight of the fresh noise added at each step; when > 0, :meth:`step` needs ``noise``.
        timestep_spacing: ``"leading"`` (SD 2), ``"trailing"`` or ``"linspace"``.
        steps_offset: added to ``leading`` timesteps (SD 2: 1).
        set_alpha_to_one: whether the last step targets acp = 1 instead of acp[0].
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: str = "eps",
        eta: float = 0.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 1,
        set_alpha_to_one: bool = False,
    ) -> None:
        super().__init__(schedule, prediction_type)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        self.needs_noise = self.eta > 0
        self.timestep_spacing = timestep_spacing
        self.steps_offset = steps_offset
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(schedule.alphas_cumprod[0])
        self._stride = 0

    def set_timesteps(self, num_steps: int) -> np.ndarray:
        T = self.schedule.num_train_timesteps
        self.timesteps = spaced_timesteps(T, num_steps, self.timestep_spacing, self.steps_offset)
        # diffusers steps back by T // num_steps whatever the spacing; kept for step-for-step parity.
        self._stride = T // num_steps
        return self.timesteps

    def step(self, model_output: Array, index: int, sample: Array, noise: Array | None = None) -> Array:
        t = int(self.timesteps[index])
        prev_t = t - self._stride
        acp_t = float(self.schedule.alphas_cumprod[t])
        acp_prev = float(self.schedule.alphas_cumprod[prev_t]) if prev_t >= 0 else self.final_alpha_cumprod

        x0, eps = split_prediction(model_output, sample, math.sqrt(acp_t), math.sqrt(1.0 - acp_t), self.prediction_type)
        variance = (1.0 - acp_prev) / (1.0 - acp_t) * (1.0 - acp_t / acp_prev)
        std = self.eta * math.sqrt(variance)
        prev_sample = math.sqrt(acp_prev) * x0 + math.sqrt(1.0 - acp_prev - std**2) * eps
        if self.eta > 0:
            if noise is None:
                raise ValueError("DDIM with eta > 0 needs noise for every step")
            prev_sample = prev_sample + std * noise
        return prev_sample
