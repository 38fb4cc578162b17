"""The autoencoder loss (--train_target vae) against numpy; training with it: tests/test_train_e2e.py."""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor

from mindone.train.vae_loss import AutoencoderLoss
from tests.helpers.training import MICRO_MODEL


def micro_model():
    from mindone.models.config import build_model

    ms.set_seed(0)
    return build_model(MICRO_MODEL)


def inputs(batch=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((batch, 3, size, size), np.float32)
    for b in range(batch):  # flat colours with a square, like the demo images
        images[b] = rng.uniform(-1, 1, size=(3, 1, 1))
        images[b, :, 4:12, 4:12] = rng.uniform(-1, 1, size=(3, 1, 1))
    posterior = rng.standard_normal((batch, 4, size // 2, size // 2)).astype(np.float32)
    dummy = (Tensor(np.zeros((batch, 77), np.int32)), Tensor(np.zeros((batch, 4, 8, 8), np.float32)))
    return Tensor(images), dummy[0], dummy[1], Tensor(posterior), Tensor(np.zeros((batch,), np.int32))


def test_loss_is_l1_plus_weighted_kl():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        model = micro_model()
        args = inputs()
        vae = model.first_stage_model
        mean, logvar = (t.asnumpy() for t in vae.encode(args[0]))
        z = mean + np.exp(0.5 * logvar) * args[3].asnumpy()
        recon = vae.decode(Tensor(z)).asnumpy()
        l1 = np.abs(recon - args[0].asnumpy()).mean()
        kl = (0.5 * (mean**2 + np.exp(logvar) - 1 - logvar)).reshape(4, -1).sum(axis=1).mean()
        for weight in (0.0, 1e-2):
            got = float(AutoencoderLoss(model, kl_weight=weight)(*args).asnumpy())
            np.testing.assert_allclose(got, l1 + weight * kl, rtol=1e-4, atol=1e-5)
    finally:
        ms.set_context(mode=previous)
