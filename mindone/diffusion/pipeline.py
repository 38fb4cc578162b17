"""Text-to-image sampling with a LatentDiffusion model: tokenize, encode, denoise with guidance, decode.

Every image has its own random stream, ``numpy.random.default_rng([seed, index])``: it draws the initial
latents and, for DDIM with eta > 0, each step's noise. So a seed gives the same latents and noise on any
backend and whatever the batch size (images then agree up to float rounding), and different seeds never
share a stream.
"""

from __future__ import annotations

import logging
from typing import Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from tqdm import tqdm

from mindone.diffusion.guidance import Denoiser, GuidedDenoiser
from mindone.diffusion.samplers import make_sampler
from mindone.diffusion.schedule import NoiseSchedule

logger = logging.getLogger(__name__)


class _TextEncoding(nn.Cell):
    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names (checkpoint names)
        self.model = model

    def construct(self, token_ids: Tensor) -> Tensor:
        return self.model.encode_text(token_ids)


class _LatentDecoding(nn.Cell):
    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names (checkpoint names)
        self.model = model

    def construct(self, z: Tensor) -> Tensor:
        return self.model.decode_latents(z).astype(ms.float32)


def _as_list(texts: str | Sequence[str], name: str) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    if not all(isinstance(t, str) for t in items):
        raise ValueError(f"{name} must be a string or a list of strings")
    return items


def _count_downsamplers(cell: nn.Cell) -> int:
    return sum(type(sub).__name__ == "Downsample" for _, sub in cell.cells_and_names())


def to_uint8_images(images: np.ndarray) -> np.ndarray:
    """Images [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (rounded, as diffusers' image processor)."""
    images = np.clip(images / 2 + 0.5, 0.0, 1.0)
    return (images.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)


class StableDiffusionPipeline:
    """Sample images from prompts with a :class:`~mindone.models.stable_diffusion.LatentDiffusion`.

    Args:
        model: the latent diffusion model (its ``parameterization`` picks eps or v sampling).
        tokenizer: ``list[str] -> int32 [N, 77]`` (``SDTokenizer``).
        image_size: default height and width in pixels.
        schedule: the training noise schedule (default: SD's scaled-linear betas over 1000 steps, rescaled to a
            zero terminal SNR when the model was trained so).
    """

    def __init__(self, model: nn.Cell, tokenizer, image_size: int = 512, schedule: NoiseSchedule | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.schedule = schedule or NoiseSchedule(zero_terminal_snr=getattr(model, "zero_terminal_snr", False))
        vae = model.first_stage_model
        self.latent_channels = vae.post_quant_conv.in_channels
        self.vae_scale_factor = 2 ** _count_downsamplers(vae.encoder)
        # Latent sides must survive the UNet's downsamplings and come back to the same size.
        self.size_multiple = self.vae_scale_factor * 2 ** _count_downsamplers(model.model.diffusion_model)
        self._guided = GuidedDenoiser(model)
        self._plain = Denoiser(model)
        self._encode_text = _TextEncoding(model)
        self._decode = _LatentDecoding(model)

    def __call__(
        self,
        prompts: str | Sequence[str],
        negative_prompts: str | Sequence[str] | None = None,
        sampler: str = "ddim",
        steps: int = 50,
        guidance_scale: float = 7.5,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        n_samples: int = 1,
        eta: float = 0.0,
        batch_size: int | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Generate ``len(prompts) * n_samples`` images, prompt-major; returns uint8 [N, H, W, 3].

        ``negative_prompts`` (one for all, or one per prompt; default "") condition the unconditional half
        of classifier-free guidance, which runs when ``guidance_scale > 1`` (as diffusers).
        ``batch_size`` images share a UNet call (default: all); it does not change their latents or noise.
        """
        prompts = _as_list(prompts, "prompts")
        negatives = _as_list("" if negative_prompts is None else negative_prompts, "negative_prompts")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(negatives)} negative prompts for {len(prompts)} prompts")
        height, width = height or self.image_size, width or self.image_size
        if height <= 0 or width <= 0 or height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"height and width must be positive multiples of {self.size_multiple}, "
                             f"got {height}x{width}")
        if seed < 0 or n_samples < 1 or steps < 1:
            raise ValueError("seed must be >= 0, n_samples and steps >= 1")

        count = len(prompts) * n_samples
        batch_size = min(batch_size or count, count)
        owner = np.repeat(np.arange(len(prompts)), n_samples)  # image i shows prompts[owner[i]]
        cond_ids = self.tokenizer(prompts)[owner]
        uncond_ids = self.tokenizer(negatives)[owner]
        latent_shape = (self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        rngs = [np.random.default_rng([seed, i]) for i in range(count)]
        latents = np.stack([rng.standard_normal(latent_shape, dtype=np.float32) for rng in rngs])
        solver = make_sampler(sampler, self.schedule, self.model.parameterization, eta)
        guided = guidance_scale > 1.0

        images = []
        for start in range(0, count, batch_size):
            batch = slice(start, min(start + batch_size, count))
            ids = np.concatenate([uncond_ids[batch], cond_ids[batch]]) if guided else cond_ids[batch]
            context = self._encode_text(Tensor(ids.astype(np.int32)))
            x = Tensor(latents[batch])
            timesteps = solver.set_timesteps(steps)
            desc = f"sampling {batch.start + 1}-{batch.stop} of {count}"
            bar = tqdm(timesteps, desc=desc, disable=not progress, leave=False)
            for i, t in enumerate(bar):
                t_batch = Tensor(np.full((x.shape[0],), t, dtype=np.int32))
                if guided:
                    out = self._guided(x, t_batch, context, Tensor(guidance_scale, ms.float32))
                else:
                    out = self._plain(x, t_batch, context)
                noise = None
                if solver.needs_noise:
                    noise = Tensor(np.stack([r.standard_normal(latent_shape, dtype=np.float32) for r in rngs[batch]]))
                x = solver.step(out, i, x, noise)
            images.append(to_uint8_images(self._decode(x).asnumpy()))
        logger.debug("generated %d images of %dx%d with %s, %d steps", count, width, height, sampler, steps)
        return np.concatenate(images)
