"""Autoencoder (VAE) training loss, for models that start from random weights (the demo, a new tiny config).

SD 2.x fine-tuning keeps the released VAE frozen; a model trained from scratch needs an autoencoder first,
since a frozen random decoder turns any latent into noise. The loss is ldm's ``LPIPSWithDiscriminator``
without its perceptual and adversarial terms: per-pixel L1 reconstruction of a posterior sample plus
``kl_weight`` times the KL divergence to N(0, I) (ldm: 1e-6), both averaged per element / per sample.
"""

from __future__ import annotations

from typing import Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from mindone.models.vae import sample_posterior


class AutoencoderLoss(nn.Cell):
    """``construct(images, token_ids, noise, posterior_noise, timesteps) -> loss``: the diffusion loss's
    signature, so the same train step drives it; only ``images`` and ``posterior_noise`` are used."""

    def __init__(self, model: nn.Cell, kl_weight: float = 1e-6) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.kl_weight = Tensor(float(kl_weight), ms.float32)

    def construct(self, images: Tensor, token_ids: Tensor, noise: Tensor, posterior_noise: Tensor,
                  timesteps: Tensor) -> Tensor:
        vae = self.model.first_stage_model
        images = ops.stop_gradient(images)  # no gradient for the input (else conv_in computes one)
        mean, logvar = vae.encode(images)
        z = sample_posterior(mean, logvar, posterior_noise)
        recon = vae.decode(z).astype(ms.float32)
        rec_loss = ops.abs(recon - images.astype(ms.float32)).mean()
        mean, logvar = mean.astype(ms.float32), logvar.astype(ms.float32)
        kl = 0.5 * (ops.square(mean) + ops.exp(logvar) - 1.0 - logvar)
        kl_per_sample = kl.reshape(kl.shape[0], -1).sum(axis=1).mean()
        return rec_loss + self.kl_weight * kl_per_sample


def latent_scale_factor(vae, image_batches: Sequence[np.ndarray]) -> tuple[float, float]:
    """ldm's ``scale_by_std``: ``(std, 1 / std)`` of the posterior means of ``image_batches`` (float32 NCHW in
    [-1, 1]), the factor (5 significant digits) that gives the UNet unit-variance latents (SD's 0.18215 is
    that figure for the released VAE)."""
    means = [vae.encode(Tensor(images))[0].asnumpy().ravel() for images in image_batches]
    std = float(np.concatenate(means).std())
    return std, float(f"{1.0 / std:.5g}")


def init_posterior_logvar(vae, value: float) -> None:
    """Start a fresh VAE's posterior log-variance at ``value`` (the log-variance half of quant_conv's bias).

    At zero init the posterior std is ~1 while the latent means are ~0.3, so every sampled latent is mostly
    noise; Adam moves the bias by about the learning rate per step, which takes thousands of steps to undo.
    A trained SD VAE ends near-deterministic (logvar around -10 to -20); starting there lets a short run
    learn the reconstruction at once.
    """
    bias = vae.quant_conv.bias
    values = bias.asnumpy().copy()
    values[values.shape[0] // 2:] = value
    bias.set_data(Tensor(values, bias.dtype))
