"""LatentDiffusion: the UNet, VAE and text encoder under their original checkpoint prefixes.

``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE) and ``cond_stage_model.model.*``
(text tower) are the names of a released SD 2.x checkpoint, so weights load by name.
"""

from __future__ import annotations

from mindspore import Tensor, nn

from mindone.errors import ConfigError
from mindone.models.text_encoder import OpenCLIPTextEncoder
from mindone.models.unet import UNetModel
from mindone.models.vae import AutoencoderKL, sample_posterior

PARAMETERIZATIONS = ("eps", "v")


class DiffusionWrapper(nn.Cell):
    """Holds the UNet as ``diffusion_model`` (ldm's ``model.diffusion_model`` prefix)."""

    def __init__(self, unet: UNetModel):
        super().__init__()
        self.diffusion_model = unet

    def construct(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        return self.diffusion_model(x, t, context)


def check_terminal_snr(parameterization: str, zero_terminal_snr: bool) -> None:
    """A zero terminal SNR needs v-prediction: at the last timestep eps is the input itself and x0 unknowable."""
    if zero_terminal_snr and parameterization != "v":
        raise ConfigError("zero_terminal_snr needs parameterization 'v' (v-prediction), got "
                         f"{parameterization!r}")


class LatentDiffusion(nn.Cell):
    """SD 2.x latent diffusion model; ``construct`` is the UNet call (x_t, t, context) -> prediction."""

    def __init__(self, unet: UNetModel, vae: AutoencoderKL, text_encoder: OpenCLIPTextEncoder,
                 scale_factor: float = 0.18215, parameterization: str = "eps", zero_terminal_snr: bool = False):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        check_terminal_snr(parameterization, zero_terminal_snr)
        self.model = DiffusionWrapper(unet)
        self.first_stage_model = vae
        self.cond_stage_model = text_encoder
        self.scale_factor = scale_factor
        self.parameterization = parameterization
        # Whether the noise schedule it was trained on ends in pure noise (NoiseSchedule(zero_terminal_snr=...)).
        self.zero_terminal_snr = bool(zero_terminal_snr)

    def encode_images(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Images in [-1, 1] NCHW -> scaled latents (posterior sample with ``noise``, or the mean)."""
        mean, logvar = self.first_stage_model.encode(x)
        z = mean if noise is None else sample_posterior(mean, logvar, noise)
        return z * self.scale_factor

    def decode_latents(self, z: Tensor) -> Tensor:
        """Scaled latents -> images in [-1, 1] (clipped)."""
        return self.first_stage_model.decode(z / self.scale_factor).clip(-1.0, 1.0)

    def encode_text(self, token_ids: Tensor) -> Tensor:
        """Token ids [B, 77] int32 -> cross-attention context [B, 77, width]."""
        return self.cond_stage_model(token_ids)

    def apply_model(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        return self.model(x_t, t, context)

    def construct(self, x_t: Tensor, t: Tensor, context: Tensor) -> Tensor:
        return self.apply_model(x_t, t, context)
