"""Validation samples during training: the prompts, sampled with the EMA weights, saved as a PNG grid
(each image enlarged to at least 128 px with its prompt under it)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Sequence


from mindone.utils.images import labelled_grid, save_png

logger = logging.getLogger(__name__)


class Validator:
    """Samples the validation prompts (DDIM) with the EMA weights swapped in when given.

    The pipeline is built once, so its compiled graphs are reused by every validation of the run. The
    seed is fixed across validations: successive grids differ only by the training progress.
    """

    def __init__(self, model, tokenizer, prompts: Sequence[str], output_dir: str | os.PathLike, image_size: int,
                 ema=None, num_inference_steps: int = 20, guidance_scale: float = 7.5, seed: int = 0,
                 tensorboard=None) -> None:
        from mindone.diffusion.pipeline import StableDiffusionPipeline

        self.pipe = StableDiffusionPipeline(model, tokenizer, image_size=image_size)
        # Attaching the model under the pipeline's cells may prefix its parameter names; put the names back
        # so that checkpoints and compiled train graphs see the original SD names.
        for name, param in model.parameters_and_names():
            param.name = name
        self.prompts = list(prompts)
        self.output_dir = Path(output_dir)
        self.ema = ema
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.tensorboard = tensorboard  # a TensorBoardLogger: each grid also goes there

    def __call__(self, step: int) -> Path:
        """Sample and save ``samples/step_<step>.png``; returns its path."""
        # The model's train flag is left alone: SD has no dropout or batch norm at training time, and
        # flipping it would make the compiled train step recompile after every validation.
        swap = self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext()
        with swap:
            images = self.pipe(self.prompts, sampler="ddim", steps=self.num_inference_steps,
                               guidance_scale=self.guidance_scale, seed=self.seed, progress=False)
        grid = labelled_grid(images, self.prompts)
        path = save_png(grid, self.output_dir / "samples" / f"step_{step:07d}.png")
        if self.tensorboard is not None:
            self.tensorboard.image(step, "validation/samples", grid)
        logger.info("validation samples of %d prompt(s) at step %d: %s", len(self.prompts), step, path)
        return path
