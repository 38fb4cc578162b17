"""The SD loss against a numpy re-computation (eps / v targets, min-SNR weights), the frozen parts get
no gradient, and the host-drawn step noise is a pure function of the run position."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from mindone.diffusion.schedule import NoiseSchedule
from mindone.train.loss import DiffusionLoss, latent_shape, sample_step_noise


class StubLDM(nn.Cell):
    """LatentDiffusion's training interface with arithmetic simple enough to redo in numpy."""

    def __init__(self) -> None:
        super().__init__()
        self.vae_w = Parameter(Tensor(0.5, ms.float32), name="first_stage_model.w")
        self.text_w = Parameter(Tensor(0.01, ms.float32), name="cond_stage_model.w")
        self.unet_w = Parameter(Tensor(0.3, ms.float32), name="model.diffusion_model.w")
        self.scale_factor = 0.18215

    def encode_images(self, x, noise=None):
        return (x * self.vae_w + 0.1 * noise) * self.scale_factor

    def encode_text(self, ids):
        return ids.astype(ms.float32)[:, :, None] * self.text_w

    def apply_model(self, x_t, t, context):
        return x_t * self.unet_w + context.mean() + t.astype(ms.float32).reshape(-1, 1, 1, 1) * 1e-4


def expected_loss(images, ids, noise, post, t, prediction, gamma, input_noise=None):
    sched = NoiseSchedule()
    acp = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    lat = (images * 0.5 + 0.1 * post) * 0.18215
    x_t = np.sqrt(acp) * lat + np.sqrt(1 - acp) * (noise if input_noise is None else input_noise)
    pred = x_t * 0.3 + (ids * 0.01).mean() + t.reshape(-1, 1, 1, 1) * 1e-4
    target = noise if prediction == "eps" else np.sqrt(acp) * noise - np.sqrt(1 - acp) * lat
    per = ((pred - target) ** 2).reshape(len(t), -1).mean(1)
    if gamma:
        snr = (acp / (1 - acp)).reshape(-1)
        per = per * np.minimum(snr, gamma) / (snr if prediction == "eps" else snr + 1)
    return per.mean()


@pytest.mark.parametrize("prediction, gamma", [("eps", None), ("v", None), ("eps", 5.0), ("v_prediction", 5.0)])
def test_loss_matches_numpy(prediction, gamma):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (3, 4, 4, 4)).astype(np.float32)
        ids = rng.integers(0, 100, (3, 77)).astype(np.int32)
        n = sample_step_noise(1, 0, 5, 0, 3, (4, 4, 4))
        n.timesteps[:] = [0, 500, 999]  # both ends of the schedule
        loss = DiffusionLoss(StubLDM(), NoiseSchedule(), prediction, snr_gamma=gamma)
        got = loss(Tensor(images), Tensor(ids), Tensor(n.noise), Tensor(n.posterior_noise), Tensor(n.timesteps))
        want = expected_loss(images.astype(np.float64), ids, n.noise, n.posterior_noise, n.timesteps,
                             "v" if prediction.startswith("v") else "eps", gamma)
        assert float(got.asnumpy()) == pytest.approx(want, rel=2e-5)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_input_perturbation_noises_the_input_only(prediction, mode):
    """diffusers' --input_perturbation: x_t from noise + gamma * xi, the eps / v target from the noise alone;
    the other draws of the step are the ones an unperturbed step makes."""
    ms.set_context(mode=mode)
    try:
        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (3, 4, 4, 4)).astype(np.float32)
        ids = rng.integers(0, 100, (3, 77)).astype(np.int32)
        plain = sample_step_noise(1, 0, 5, 0, 3, (4, 4, 4))
        n = sample_step_noise(1, 0, 5, 0, 3, (4, 4, 4), input_perturbation=0.5)
        for field in ("noise", "posterior_noise", "timesteps"):
            assert np.array_equal(getattr(plain, field), getattr(n, field))
        assert plain.input_noise is None and len(plain.inputs()) == 3 and len(n.inputs()) == 4
        xi = (n.input_noise - n.noise) / 0.5
        assert 0.8 < xi.std() < 1.2 and abs(xi.mean()) < 0.2  # gamma times unit-variance noise
        loss = DiffusionLoss(StubLDM(), NoiseSchedule(), prediction)
        got = float(loss(Tensor(images), Tensor(ids), *(Tensor(x) for x in n.inputs())).asnumpy())
        args = (images.astype(np.float64), ids, n.noise, n.posterior_noise, n.timesteps, prediction, None)
        assert got == pytest.approx(expected_loss(*args, input_noise=n.input_noise), rel=2e-5)
        assert abs(got - expected_loss(*args)) > 1e-3  # the perturbation reached x_t
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_gradients_reach_only_the_trained_parts(train_text_encoder):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        model = StubLDM()
        loss = DiffusionLoss(model, NoiseSchedule(), "eps", train_text_encoder=train_text_encoder)
        n = sample_step_noise(0, 0, 0, 0, 2, (4, 4, 4))
        inputs = (Tensor(np.ones((2, 4, 4, 4), np.float32)), Tensor(np.ones((2, 77), np.int32)),
                  Tensor(n.noise), Tensor(n.posterior_noise), Tensor(n.timesteps))
        params = ms.ParameterTuple([model.vae_w, model.text_w, model.unet_w])
        grads = ops.GradOperation(get_by_list=True)(loss, params)(*inputs)
        vae_g, text_g, unet_g = (float(g.asnumpy()) for g in grads)
        assert vae_g == 0.0  # the VAE encode is always a constant input
        assert (text_g != 0.0) == train_text_encoder
        assert unet_g != 0.0
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_step_noise_is_a_pure_function_of_the_position():
    a = sample_step_noise(7, 1, 12, 0, 4, (4, 8, 8), noise_offset=0.1)
    b = sample_step_noise(7, 1, 12, 0, 4, (4, 8, 8), noise_offset=0.1)
    assert np.array_equal(a.noise, b.noise) and np.array_equal(a.timesteps, b.timesteps)
    other_rank = sample_step_noise(7, 0, 12, 0, 4, (4, 8, 8), noise_offset=0.1)
    next_micro = sample_step_noise(7, 1, 12, 1, 4, (4, 8, 8), noise_offset=0.1)
    assert not np.array_equal(a.noise, other_rank.noise) and not np.array_equal(a.noise, next_micro.noise)
    assert a.timesteps.dtype == np.int32 and a.timesteps.min() >= 0 and a.timesteps.max() < 1000
    plain = sample_step_noise(7, 1, 12, 0, 4, (4, 8, 8))
    offset = a.noise - plain.noise  # the offset is constant over each channel's pixels
    assert np.allclose(offset, offset[:, :, :1, :1], atol=1e-6) and np.abs(offset).max() > 0.01


def test_latent_shape_from_config():
    cfg = {"model": {"vae": {"ch_mult": [1, 2, 4, 4], "embed_dim": 4}}}
    assert latent_shape(cfg, 512) == (4, 64, 64)
    with pytest.raises(ValueError, match="multiple"):
        latent_shape(cfg, 500)
