"""DDIM and DPM-Solver++ (2M): SD 2 timesteps, exactness on an ideal denoiser, parity with diffusers."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from mindone.diffusion.samplers import DDIMSampler, DPMSolverSampler, make_sampler, spaced_timesteps
from mindone.diffusion.schedule import NoiseSchedule

SCHEDULE = NoiseSchedule()
SD2_SCHEDULER_CONFIG = dict(  # the scheduler_config.json released with SD 2.x (no timestep_spacing key)
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
)


def _alpha_sigma(t: int) -> tuple[float, float]:
    acp = SCHEDULE.alphas_cumprod[t]
    return float(np.sqrt(acp)), float(np.sqrt(1 - acp))


def fake_model(x: np.ndarray, t: int, prediction_type: str) -> np.ndarray:
    """A smooth, bounded, deterministic stand-in for the UNet; its v output is the eps output re-expressed."""
    alpha, sigma = _alpha_sigma(int(t))
    eps = sigma * x + 0.3 * alpha * np.tanh(x + t / 250.0)
    if prediction_type == "eps":
        return eps.astype(np.float32)
    x0 = (x - sigma * eps) / alpha
    return (alpha * eps - sigma * x0).astype(np.float32)


def _x_T(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, 4, 6, 6)).astype(np.float32)


def test_sd2_ddim_timesteps_are_leading_with_offset_one():
    ddim = DDIMSampler(SCHEDULE)
    np.testing.assert_array_equal(ddim.set_timesteps(50), np.arange(981, 0, -20))
    np.testing.assert_array_equal(ddim.set_timesteps(4), [751, 501, 251, 1])
    np.testing.assert_array_equal(spaced_timesteps(1000, 4, "trailing"), [999, 749, 499, 249])
    np.testing.assert_array_equal(spaced_timesteps(1000, 4, "linspace"), [999, 666, 333, 0])
    with pytest.raises(ValueError, match="num_steps"):
        ddim.set_timesteps(1001)


def test_dpm_solver_timesteps_drop_zero():
    np.testing.assert_array_equal(DPMSolverSampler(SCHEDULE).set_timesteps(4), [999, 749, 500, 250])


@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_ideal_denoiser_lands_on_the_data(name, prediction_type):
    """If the data distribution is a single point c, an exact model makes both samplers return c."""
    c = np.linspace(-1, 1, 2 * 4 * 6 * 6).reshape(2, 4, 6, 6)
    sampler = make_sampler(name, SCHEDULE, prediction_type)
    timesteps = sampler.set_timesteps(10)
    x = _x_T().astype(np.float64)
    alpha, sigma = _alpha_sigma(int(timesteps[0]))
    eps_start = (x - alpha * c) / sigma
    for i, t in enumerate(timesteps):
        alpha, sigma = _alpha_sigma(int(t))
        eps = (x - alpha * c) / sigma
        x = sampler.step(eps if prediction_type == "eps" else alpha * eps - sigma * c, i, x)
    if name == "dpm++":  # ends at sigma = 0
        np.testing.assert_allclose(x, c, rtol=0, atol=1e-9)
    else:  # SD 2's DDIM ends on acp[0] (set_alpha_to_one=False), along the deterministic path's constant eps
        alpha, sigma = _alpha_sigma(0)
        np.testing.assert_allclose(x, alpha * c + sigma * eps_start, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_samplers_step_mindspore_tensors(name):
    """The same sampler steps numpy arrays and MindSpore tensors alike, keeping float32."""
    x_np = _x_T(2)
    x_ms = ms.Tensor(x_np)
    on_numpy, on_mindspore = make_sampler(name, SCHEDULE, "v"), make_sampler(name, SCHEDULE, "v")
    on_mindspore.set_timesteps(4)
    for i, t in enumerate(on_numpy.set_timesteps(4)):
        x_np = on_numpy.step(fake_model(x_np, t, "v"), i, x_np)
        x_ms = on_mindspore.step(ms.Tensor(fake_model(x_ms.asnumpy(), t, "v")), i, x_ms)
    assert x_np.dtype == np.float32 and x_ms.dtype == ms.float32
    np.testing.assert_allclose(x_ms.asnumpy(), x_np, rtol=0, atol=1e-5)


def test_misuse_is_reported():
    ddim = make_sampler("ddim", SCHEDULE, "eps", eta=1.0)
    ddim.set_timesteps(2)
    with pytest.raises(ValueError, match="needs noise"):
        ddim.step(_x_T(), 0, _x_T())
    dpm = make_sampler("dpm++", SCHEDULE, "eps")
    dpm.set_timesteps(3)
    with pytest.raises(ValueError, match="in order"):
        dpm.step(_x_T(), 1, _x_T())
    with pytest.raises(ValueError, match="sampler"):
        make_sampler("euler", SCHEDULE, "eps")


def _diffusers_loop(scheduler, steps, prediction_type, x, noises=None, eta=0.0):
    torch = pytest.importorskip("torch")
    scheduler.set_timesteps(steps)
    xt = torch.from_numpy(x.copy())
    out = []
    for i, t in enumerate(scheduler.timesteps):
        model_output = torch.from_numpy(fake_model(xt.numpy(), int(t), prediction_type))
        kwargs = {"eta": eta, "variance_noise": torch.from_numpy(noises[i])} if noises is not None else {}
        xt = scheduler.step(model_output, t, xt, **kwargs).prev_sample
        out.append(xt.numpy())
    return scheduler.timesteps.numpy(), out


def _our_loop(sampler, steps, prediction_type, x, noises=None):
    out = []
    timesteps = sampler.set_timesteps(steps)
    for i, t in enumerate(timesteps):
        x = sampler.step(fake_model(x, t, prediction_type), i, x, None if noises is None else noises[i])
        out.append(x)
    return timesteps, out


def _assert_same_run(ours, theirs):
    np.testing.assert_array_equal(ours[0], theirs[0])
    assert len(ours[1]) == len(theirs[1])
    for i, (a, b) in enumerate(zip(ours[1], theirs[1])):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=f"step {i}")


@pytest.mark.torch
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_ddim_matches_diffusers(prediction_type, steps):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(
        **SD2_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False,
        prediction_type="epsilon" if prediction_type == "eps" else "v_prediction",
    )
    assert ref.config.timestep_spacing == "leading"
    x = _x_T(3)
    _assert_same_run(_our_loop(DDIMSampler(SCHEDULE, prediction_type), steps, prediction_type, x),
                     _diffusers_loop(ref, steps, prediction_type, x))


@pytest.mark.torch
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
def test_ddim_with_eta_matches_diffusers(prediction_type):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(
        **SD2_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False,
        prediction_type="epsilon" if prediction_type == "eps" else "v_prediction",
    )
    x = _x_T(4)
    noises = np.random.default_rng(5).standard_normal((10,) + x.shape).astype(np.float32)
    sampler = DDIMSampler(SCHEDULE, prediction_type, eta=0.7)
    _assert_same_run(_our_loop(sampler, 10, prediction_type, x, noises),
                     _diffusers_loop(ref, 10, prediction_type, x, noises, eta=0.7))


@pytest.mark.torch
@pytest.mark.parametrize("prediction_type", ["eps", "v"])
@pytest.mark.parametrize("steps", [1, 2, 7, 20])
def test_dpm_solver_pp_2m_matches_diffusers(prediction_type, steps):
    diffusers = pytest.importorskip("diffusers")
    # What a user gets from DPMSolverMultistepScheduler.from_config(<SD 2 scheduler config>).
    ref = diffusers.DPMSolverMultistepScheduler(
        **SD2_SCHEDULER_CONFIG, algorithm_type="dpmsolver++", solver_order=2,
        prediction_type="epsilon" if prediction_type == "eps" else "v_prediction",
    )
    assert ref.config.timestep_spacing == "linspace" and ref.config.final_sigmas_type == "zero"
    x = _x_T(6)
    _assert_same_run(_our_loop(DPMSolverSampler(SCHEDULE, prediction_type), steps, prediction_type, x),
                     _diffusers_loop(ref, steps, prediction_type, x))


@pytest.mark.torch
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_spacings_match_diffusers(spacing):
    diffusers = pytest.importorskip("diffusers")
    for steps in (1, 3, 7, 50, 333):
        ddim_ref = diffusers.DDIMScheduler(**SD2_SCHEDULER_CONFIG, timestep_spacing=spacing)
        ddim_ref.set_timesteps(steps)
        ours = DDIMSampler(SCHEDULE, timestep_spacing=spacing, steps_offset=1).set_timesteps(steps)
        np.testing.assert_array_equal(ours, ddim_ref.timesteps.numpy(), err_msg=f"ddim {spacing} {steps}")
        dpm_ref = diffusers.DPMSolverMultistepScheduler(**SD2_SCHEDULER_CONFIG, timestep_spacing=spacing)
        dpm_ref.set_timesteps(steps)
        ours = DPMSolverSampler(SCHEDULE, timestep_spacing=spacing, steps_offset=1).set_timesteps(steps)
        np.testing.assert_array_equal(ours, dpm_ref.timesteps.numpy(), err_msg=f"dpm {spacing} {steps}")


@pytest.mark.parametrize("name", ["ddim", "dpm++"])
def test_999_steps_work_and_1000_are_refused_with_a_reason(name):
    # SD 2's DDIM (leading, offset 1) would reach t=1000 at 1000 steps; DPM-Solver++'s linspace would
    # repeat a timestep (a zero step size).
    sampler = make_sampler(name, NoiseSchedule(), "eps")
    timesteps = sampler.set_timesteps(999)
    assert len(np.unique(timesteps)) == 999 and timesteps.max() <= 999 and timesteps.min() >= 0
    with pytest.raises(ValueError, match="use fewer steps"):
        sampler.set_timesteps(1000)


ZTSNR = NoiseSchedule(zero_terminal_snr=True)


@pytest.mark.torch
@pytest.mark.parametrize("name", ["ddim", "dpm++"])
@pytest.mark.parametrize("steps", [1, 2, 20])
def test_zero_terminal_snr_sampling_matches_diffusers(name, steps):
    """make_sampler on a zero-terminal-SNR schedule: DDIM starts at t=999 (trailing), as diffusers with
    rescale_betas_zero_snr=True and timestep_spacing="trailing"; DPM++ keeps lambda finite as diffusers."""
    diffusers = pytest.importorskip("diffusers")
    common = dict(SD2_SCHEDULER_CONFIG, rescale_betas_zero_snr=True, prediction_type="v_prediction")
    if name == "ddim":
        ref = diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    else:
        ref = diffusers.DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    sampler = make_sampler(name, ZTSNR, "v")
    x = _x_T(7)
    ours = _our_loop(sampler, steps, "v", x)
    assert ours[0][0] == 999
    _assert_same_run(ours, _diffusers_loop(ref, steps, "v", x))
    assert all(np.isfinite(a).all() for a in ours[1])
