"""Samplers over the SD noise schedule: DDIM and DPM-Solver++ (2M), matching diffusers step for step."""

from __future__ import annotations

from mindone.diffusion.samplers.base import Sampler, spaced_timesteps, split_prediction
from mindone.diffusion.samplers.ddim import DDIMSampler
from mindone.diffusion.samplers.dpm_solver import DPMSolverSampler
from mindone.diffusion.schedule import NoiseSchedule

SAMPLERS = ("ddim", "dpm++")


def make_sampler(name: str, schedule: NoiseSchedule, prediction_type: str, eta: float = 0.0) -> Sampler:
    """``"ddim"`` (SD 2 defaults, optional ``eta``) or ``"dpm++"`` (DPM-Solver++ 2M).

    On a zero-terminal-SNR schedule DDIM uses ``"trailing"`` spacing, so that sampling starts at ``t = T - 1``,
    the pure-noise point the model was trained on (Lin et al. 2023, section 3.3).
    """
    if name == "ddim":
        spacing = "trailing" if schedule.zero_terminal_snr else "leading"
        return DDIMSampler(schedule, prediction_type, eta=eta, timestep_spacing=spacing)
    if name == "dpm++":
        if eta:
            raise ValueError("eta applies to the ddim sampler only")
        return DPMSolverSampler(schedule, prediction_type, solver_order=2)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


__all__ = ["SAMPLERS", "DDIMSampler", "DPMSolverSampler", "Sampler", "make_sampler", "spaced_timesteps",
           "split_prediction"]
