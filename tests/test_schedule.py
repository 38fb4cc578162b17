"""The SD noise schedule and its graph-safe training helpers (add_noise, target, snr)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindone.diffusion.schedule import NoiseSchedule, normalize_prediction_type


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


def _batch(seed: int = 0, shape=(3, 4, 5, 5)):
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(shape).astype(np.float32)
    noise = rng.standard_normal(shape).astype(np.float32)
    t = np.array([0, 417, 999], dtype=np.int32)[: shape[0]]
    return x0, noise, t


def test_scaled_linear_betas_and_cumprod(schedule):
    betas = schedule.betas
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert betas[0] == pytest.approx(0.00085, rel=1e-12) and betas[-1] == pytest.approx(0.012, rel=1e-12)
    # Square roots of the betas are evenly spaced (scaled linear), which a plain linspace would not be.
    assert np.allclose(np.diff(np.sqrt(betas)), (0.012**0.5 - 0.00085**0.5) / 999, rtol=0, atol=1e-12)
    assert betas[500] < (0.00085 + 0.012) / 2  # squared, so below the plain-linear midpoint
    acp = schedule.alphas_cumprod
    assert np.all(np.diff(acp) < 0) and acp[0] == pytest.approx(1 - 0.00085)
    # Terminal sqrt(alpha-bar) of SD's schedule as published in arXiv:2305.08891 (Table 1): 0.068265.
    assert np.sqrt(acp[-1]) == pytest.approx(0.068265, abs=1e-6)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule(beta_schedule="cosine")
    with pytest.raises(ValueError, match="prediction_type"):
        normalize_prediction_type("x0")
    assert normalize_prediction_type("v_prediction") == "v" and normalize_prediction_type("epsilon") == "eps"


def test_add_noise_target_snr_pynative(schedule):
    x0, noise, t = _batch()
    acp = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x_t = schedule.add_noise(Tensor(x0), Tensor(noise), Tensor(t)).asnumpy()
    np.testing.assert_allclose(x_t, np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(schedule.target(Tensor(x0), Tensor(noise), Tensor(t), "eps").asnumpy(), noise)
    v = schedule.target(Tensor(x0), Tensor(noise), Tensor(t), "v").asnumpy()
    # v parameterization: x0 = sqrt(acp) * x_t - sqrt(1 - acp) * v and eps = sqrt(acp) * v + sqrt(1 - acp) * x_t.
    np.testing.assert_allclose(np.sqrt(acp) * x_t - np.sqrt(1 - acp) * v, x0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt(acp) * v + np.sqrt(1 - acp) * x_t, noise, rtol=0, atol=1e-5)
    snr = schedule.snr(Tensor(t)).asnumpy()
    np.testing.assert_allclose(snr, schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t]), rtol=1e-6)
    assert snr[0] > snr[1] > snr[2]


def test_helpers_keep_half_precision(schedule):
    x0, noise, t = _batch()
    out = schedule.add_noise(Tensor(x0).astype(ms.float16), Tensor(noise).astype(ms.float16), Tensor(t))
    assert out.dtype == ms.float16


class _NoisyTargetStep(nn.Cell):
    """What a training step does with the schedule, compiled as one graph."""

    def __init__(self, schedule: NoiseSchedule, prediction_type: str) -> None:
        super().__init__()
        self.schedule = schedule
        self.prediction_type = prediction_type

    def construct(self, x0, noise, t):
        x_t = self.schedule.add_noise(x0, noise, t)
        target = self.schedule.target(x0, noise, t, self.prediction_type)
        return x_t, target, self.schedule.snr(t), self.schedule.alphas_cumprod_at(t)


@pytest.fixture
def graph_mode():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


def test_helpers_compile_in_graph_mode(schedule, graph_mode):
    x0, noise, t = _batch(seed=1)
    x_t, v, snr, acp_t = _NoisyTargetStep(schedule, "v")(Tensor(x0), Tensor(noise), Tensor(t))
    acp = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(x_t.asnumpy(), np.sqrt(acp) * x0 + np.sqrt(1 - acp) * noise, rtol=0, atol=1e-6)
    np.testing.assert_allclose(v.asnumpy(), np.sqrt(acp) * noise - np.sqrt(1 - acp) * x0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(snr.asnumpy(), schedule.alphas_cumprod[t] / (1 - schedule.alphas_cumprod[t]), rtol=1e-6)
    np.testing.assert_allclose(acp_t.asnumpy(), schedule.alphas_cumprod[t], rtol=1e-6)


@pytest.mark.torch
def test_schedule_matches_diffusers(schedule):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear")
    np.testing.assert_allclose(schedule.betas, ref.betas.numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(schedule.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    x0, noise, t = _batch(seed=2)
    tt = torch.from_numpy(t.astype(np.int64))
    ref_xt = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), tt).numpy()
    ref_v = ref.get_velocity(torch.from_numpy(x0), torch.from_numpy(noise), tt).numpy()
    ours_xt = schedule.add_noise(Tensor(x0), Tensor(noise), Tensor(t)).asnumpy()
    ours_v = schedule.target(Tensor(x0), Tensor(noise), Tensor(t), "v").asnumpy()
    np.testing.assert_allclose(ours_xt, ref_xt, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours_v, ref_v, rtol=0, atol=1e-5)


def test_zero_terminal_snr_schedule():
    """Lin et al. 2023: sqrt(acp) shifted to end at 0 and scaled to keep its start; the last step is pure noise."""
    ours, sd = NoiseSchedule(zero_terminal_snr=True), NoiseSchedule()
    assert ours.alphas_cumprod[-1] == 0.0 and sd.alphas_cumprod[-1] > 4e-3
    np.testing.assert_allclose(ours.alphas_cumprod[0], sd.alphas_cumprod[0], rtol=1e-12)
    root, sd_root = np.sqrt(ours.alphas_cumprod), np.sqrt(sd.alphas_cumprod)
    expected = (sd_root - sd_root[-1]) * sd_root[0] / (sd_root[0] - sd_root[-1])
    np.testing.assert_allclose(root, expected, rtol=0, atol=1e-12)
    assert np.all(np.diff(ours.alphas_cumprod) < 0)
    t = Tensor(np.array([0, 999], np.int32))
    x0 = np.ones((2, 4, 2, 2), np.float32)
    noise = np.full((2, 4, 2, 2), 0.5, np.float32)
    x_t = ours.add_noise(Tensor(x0), Tensor(noise), t).asnumpy()
    np.testing.assert_allclose(x_t[1], noise[1], atol=1e-7)  # nothing of the image is left at t=999
    np.testing.assert_allclose(ours.target(Tensor(x0), Tensor(noise), t, "v").asnumpy()[1], -x0[1], atol=1e-7)
    assert ours.snr(t).asnumpy()[1] == 0.0


@pytest.mark.torch
def test_zero_terminal_snr_matches_diffusers():
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", rescale_betas_zero_snr=True)
    ours = NoiseSchedule(zero_terminal_snr=True)
    # diffusers rescales in float32; ours is float64.
    np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=0, atol=1e-5)  # float32 ratios of ~1e-3
