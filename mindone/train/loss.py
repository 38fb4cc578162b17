"""The SD 2.x training loss, and the per-step random inputs it takes.

:class:`DiffusionLoss` is the cell the train step differentiates: frozen VAE encode (a posterior sample)
times the scale factor, with no gradient; text encode (frozen unless ``train_text_encoder``); ``x_t``
from the noise schedule; the UNet; MSE against the eps or v target; optional min-SNR-gamma weighting
(Hang et al. 2023; eps: ``min(snr, gamma) / snr``, v: ``min(snr, gamma) / (snr + 1)``, as diffusers).

Input perturbation (Ning et al. 2023, diffusers' ``--input_perturbation``): ``x_t`` is made from
``noise + gamma * xi`` while the target keeps ``noise``; the perturbed noise is the loss's sixth input.

The randomness of a step (timesteps, noise, the posterior sample's noise, the noise offset, the
perturbation) is drawn
on the host by :func:`sample_step_noise` from a generator seeded by ``(seed, rank, step, micro step)``
and fed to the graph as inputs. A step's randomness then depends only on where the run is, not on how
it got there, so a resumed run repeats exactly what an uninterrupted one would have done, and each rank
draws different noise for its own data shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from mindone.diffusion.schedule import NoiseSchedule, normalize_prediction_type
from mindone.models.vae import sample_posterior


def latent_shape(model_cfg: dict, image_size: int) -> tuple[int, int, int]:
    """(channels, height, width) of the latents of ``image_size`` images for a model config dict."""
    vae = model_cfg["model"]["vae"]
    down = 2 ** (len(vae.get("ch_mult", [1, 2, 4, 4])) - 1)
    if image_size % down:
        raise ValueError(f"resolution {image_size} is not a multiple of the VAE downsampling factor {down}")
    return int(vae.get("embed_dim", vae.get("z_channels", 4))), image_size // down, image_size // down


@dataclass
class StepNoise:
    """Host-drawn random inputs of one micro step."""

    noise: np.ndarray  # [B, C, h, w] float32 (noise offset included)
    posterior_noise: np.ndarray  # [B, C, h, w] float32, samples the VAE posterior
    timesteps: np.ndarray  # [B] int32 in [0, num_train_timesteps)
    input_noise: np.ndarray | None = None  # [B, C, h, w]: noise + input_perturbation * xi, when that is on

    def inputs(self) -> tuple[np.ndarray, ...]:
        """The loss's random inputs in order: noise, posterior noise, timesteps (and the perturbed noise)."""
        extra = () if self.input_noise is None else (self.input_noise,)
        return (self.noise, self.posterior_noise, self.timesteps, *extra)


def sample_step_noise(
    seed: int,
    rank: int,
    step: int,
    micro_step: int,
    batch_size: int,
    shape: tuple[int, int, int],
    num_train_timesteps: int = 1000,
    noise_offset: float = 0.0,
    input_perturbation: float = 0.0,
) -> StepNoise:
    """Timesteps and noises for one micro step, a pure function of its position in the run (each draw comes
    after the ones an option-free step makes, so turning an option on leaves the others' values alone)."""
    rng = np.random.default_rng([seed, rank, step, micro_step])
    timesteps = rng.integers(0, num_train_timesteps, size=(batch_size,), dtype=np.int64).astype(np.int32)
    noise = rng.standard_normal((batch_size, *shape), dtype=np.float32)
    posterior_noise = rng.standard_normal((batch_size, *shape), dtype=np.float32)
    if noise_offset:
        # Offset noise (Guttenberg 2023): a per-channel constant lets the model shift the mean brightness.
        noise = noise + np.float32(noise_offset) * rng.standard_normal((batch_size, shape[0], 1, 1), dtype=np.float32)
    input_noise = None
    if input_perturbation:
        input_noise = noise + np.float32(input_perturbation) * rng.standard_normal(noise.shape, dtype=np.float32)
    return StepNoise(noise=noise, posterior_noise=posterior_noise, timesteps=timesteps, input_noise=input_noise)


class DiffusionLoss(nn.Cell):
    """``construct(images or moments, token_ids, noise, posterior_noise, timesteps[, input_noise]) -> scalar loss``
    (float32); ``input_noise`` (input perturbation) replaces ``noise`` in ``x_t`` only, never in the target.

    Args:
        model: a ``LatentDiffusion`` (its parameter names are kept: this cell does not prefix them).
        schedule: the training noise schedule.
        prediction_type: ``eps``/``epsilon`` or ``v``/``v_prediction``.
        snr_gamma: min-SNR gamma (diffusers recommends 5.0); None for the plain MSE.
        train_text_encoder: let gradients reach the text tower (else it is a constant input).
        from_moments: the first input is the cached posterior moments ``[B, 2C, h, w]`` of the frozen VAE
            (:mod:`mindone.data.latents`) instead of images; the VAE encoder is skipped, the posterior is
            sampled with the same ``posterior_noise``.
        cached_text: the second input is the cached output of the frozen text encoder ``[B, 77, width]``
            instead of token ids; the text encoder is skipped.
    """

    def __init__(
        self,
        model: nn.Cell,
        schedule: NoiseSchedule,
        prediction_type: str = "eps",
        snr_gamma: float | None = None,
        train_text_encoder: bool = False,
        from_moments: bool = False,
        cached_text: bool = False,
    ) -> None:
        super().__init__(auto_prefix=False)
        self.from_moments = from_moments
        self.cached_text = cached_text
        self.model = model
        self.schedule = schedule
        self.prediction_type = normalize_prediction_type(prediction_type)
        self.use_snr = snr_gamma is not None and snr_gamma > 0
        self.snr_gamma = Tensor(float(snr_gamma or 0.0), ms.float32)
        self.train_text_encoder = train_text_encoder

    def construct(self, images: Tensor, token_ids: Tensor, noise: Tensor, posterior_noise: Tensor,
                  timesteps: Tensor, input_noise: Tensor = None) -> Tensor:
        if self.from_moments:
            mean, logvar = ops.split(images, images.shape[1] // 2, axis=1)
            latents = sample_posterior(mean, logvar, posterior_noise) * self.model.scale_factor
        else:
            latents = ops.stop_gradient(self.model.encode_images(images, posterior_noise))
        context = token_ids if self.cached_text else self.model.encode_text(token_ids)
        if not self.train_text_encoder:
            context = ops.stop_gradient(context)
        noise = noise.astype(latents.dtype)
        if input_noise is None:
            x_t = self.schedule.add_noise(latents, noise, timesteps)
        else:
            x_t = self.schedule.add_noise(latents, input_noise.astype(latents.dtype), timesteps)
        pred = self.model.apply_model(x_t, timesteps, context)
        target = self.schedule.target(latents, noise, timesteps, self.prediction_type)
        err = ops.square(pred.astype(ms.float32) - target.astype(ms.float32))
        per_sample = err.reshape(err.shape[0], -1).mean(axis=1)
        if self.use_snr:
            snr = self.schedule.snr(timesteps)
            weight = ops.minimum(snr, self.snr_gamma)
            if self.prediction_type == "v":
                weight = weight / (snr + 1.0)
            else:
                weight = weight / snr
            per_sample = per_sample * weight
        return per_sample.mean()
