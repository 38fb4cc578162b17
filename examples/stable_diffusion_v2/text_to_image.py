"""Generate images from text with a Stable Diffusion 2.x model in MindSpore.

    python examples/stable_diffusion_v2/text_to_image.py --ckpt sd-v2-1-base.ckpt \
        --prompt "a watercolor painting of a lighthouse at dawn" --n_samples 4 --output_dir outputs/t2i

Each image is written as ``<output_dir>/samples/<NNNNN>.png`` (numbering continues after earlier runs;
the prompt, seed and sampler settings are stored in the PNG's ``parameters`` text chunk), and all images of
the run as ``<output_dir>/grid-<NNNN>.png``, one row per prompt, each image enlarged to at least 128 px
(nearest-neighbour) with its prompt, seed and sample number written under it. Every prompt starts from
the same seed, so image j of each prompt starts from the same latents, which makes prompts easy to compare.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from mindone.utils.atomic import remove_stale_temps
from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser
from mindone.utils.images import labelled_grid, save_png

logger = logging.getLogger("text_to_image")

SAMPLER_CHOICES = ("ddim", "dpm++")
MAX_STEPS = 999  # 1000 steps would reach t=1000 (DDIM, offset 1) or repeat a timestep (DPM-Solver++)
GRID_MAX_IMAGES = 64  # the grid holds the first images of a run; a long prompt file would not fit in memory


OPTIONS: list[Option] = [
    Option("config", str, "v2-base-512-eps", "model yaml: a path, or a bundled name under configs/model "
           "(v2-base-512-eps, v2-768-v, tiny); default: %(default)s", group="model"),
    Option("ckpt", str, None, "weights: a converted MindSpore .ckpt, an original SD 2.x .ckpt/.safetensors, or a "
           "diffusers folder", group="model"),
    Option("lora", str, None, "LoRA adapters saved by train_text_to_image.py --use_lora (lora.ckpt), applied on top "
           "of --ckpt", group="model"),
    Option("lora_merge", bool, False, "fold the --lora adapters into the base weights once (same images, plain model, "
           "slightly faster sampling)", action="store_true", group="model"),
    Option("allow_random_init", bool, False, "run with random weights when --ckpt is not given (smoke tests only: the "
           "images are noise)", action="store_true", group="model"),
    Option("vocab_path", str, None, "bpe_simple_vocab_16e6.txt.gz (default: the copy inside the installed "
           "open_clip_torch package)", group="model"),
    Option("prompt", str, None, "the text to draw", group="prompts"),
    Option("prompt_file", str, None, "a UTF-8 text file with one prompt per line (blank lines skipped)",
           group="prompts"),
    Option("negative_prompt", str, "", "what to steer away from (the unconditional side of guidance)",
           group="prompts"),
    Option("sampler", str, "ddim", "ddim or dpm++ (DPM-Solver++ 2M); default: %(default)s", choices=SAMPLER_CHOICES,
           group="sampling"),
    Option("steps", int, 50, "sampling steps (dpm++ does well with 20-25); default: %(default)s", group="sampling"),
    Option("guidance_scale", float, 7.5, "classifier-free guidance scale; <= 1 disables guidance (one UNet pass per "
           "step); default: %(default)s", group="sampling"),
    Option("eta", float, 0.0, "DDIM noise weight; default %(default)s (deterministic)", group="sampling"),
    Option("seed", int, 42, "random seed (>= 0); the same seed gives the same images; default: %(default)s",
           group="sampling"),
    Option("n_samples", int, 1, "images per prompt; default: %(default)s", group="sampling"),
    Option("batch_size", int, None, "images per UNet call (default: --n_samples); does not change the images' "
           "latents", group="sampling"),
    Option("H", int, None, "image height in pixels (default: the config's image_size)", group="sampling"),
    Option("W", int, None, "image width in pixels (default: the config's image_size)", group="sampling"),
    Option("dtype", str, "fp32", "compute dtype of the model (MindSpore AMP O2; the attention softmax stays fp32); "
           "fp16 is the usual choice on Ascend; default: %(default)s", choices=("fp32", "fp16", "bf16"),
           group="sampling"),
    Option("output_dir", str, "outputs/text_to_image", "where samples/ and the grid go; default: %(default)s",
           group="output and runtime"),
    Option("skip_grid", bool, False, f"do not write the grid (of the first {GRID_MAX_IMAGES} images)",
           action="store_true", group="output and runtime"),
    Option("mode", str, "graph", "MindSpore execution mode (graph compiles once, then runs faster); default: "
           "%(default)s", choices=("graph", "pynative"), group="output and runtime"),
    Option("device_target", str, None, "device (default: what MindSpore was built for)",
           choices=("CPU", "Ascend", "GPU"), group="output and runtime"),
    Option("verbose", bool, False, "debug logging", action="store_true", group="output and runtime"),
]
# --config names the model yaml here (as in ldm's scripts), so the yaml of these options is --options
PARSER = dict(formatter_class=argparse.HelpFormatter, config_flag="options",
              config_help="yaml file whose keys are these flags' names (flags given here win; --config is the "
                          "model yaml)")


def build_parser() -> argparse.ArgumentParser:
    return options_parser(OPTIONS, __doc__.split("\n\n")[0], **PARSER)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Defaults < --options yaml < flags."""
    return resolve_config(OPTIONS, argv, __doc__.split("\n\n")[0], **PARSER)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts from --prompt or --prompt_file (exactly one of them)."""
    if (args.prompt is None) == (args.prompt_file is None):
        raise UserError("give exactly one of --prompt and --prompt_file")
    if args.prompt is not None:
        if not args.prompt.strip():
            raise UserError("--prompt is empty")
        return [args.prompt]
    path = Path(args.prompt_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--prompt_file {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise UserError(f"--prompt_file {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompt_file {path}: no prompts (the file has no non-blank line)")
    return prompts


def check_args(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.steps > MAX_STEPS:
        raise UserError(f"--steps {args.steps}: expected 1..{MAX_STEPS}")
    if args.n_samples < 1:
        raise UserError(f"--n_samples {args.n_samples}: expected >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: expected >= 1")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: expected >= 0")
    if args.eta < 0 or (args.eta > 0 and args.sampler != "ddim"):
        raise UserError(f"--eta {args.eta}: expected >= 0, and only with --sampler ddim")
    if args.ckpt is None and not args.allow_random_init:
        raise UserError("--ckpt is required (pass --allow_random_init to run with random weights, for smoke tests)")
    if args.ckpt is not None and not Path(args.ckpt).exists():
        raise UserError(f"--ckpt {args.ckpt}: no such file or folder")
    if args.lora is not None and not Path(args.lora).is_file():
        raise UserError(f"--lora {args.lora}: no such file")
    if args.lora_merge and args.lora is None:
        raise UserError("--lora_merge needs --lora")


def load_model(args: argparse.Namespace, cfg: dict):
    """Build the LatentDiffusion of ``cfg`` and fill it from --ckpt (or leave it random, if allowed)."""
    from mindspore.nn.utils import no_init_parameters

    from mindone.convert import load_sd_weights
    from mindone.models.config import build_model, set_compute_dtype

    if args.ckpt is None:
        logger.warning("no --ckpt: running with RANDOM weights (--allow_random_init); the images will be noise")
        model = build_model(cfg)
    else:
        with no_init_parameters():  # the checkpoint fills every parameter right after
            model = build_model(cfg)
        load_sd_weights(model, args.ckpt)  # logs what it loaded and skipped
    if args.lora is not None:
        from mindone.train.lora import apply_lora

        apply_lora(model, args.lora, merge=args.lora_merge)
        logger.info("applied LoRA %s%s", args.lora, " (merged)" if args.lora_merge else "")
    set_compute_dtype(model, args.dtype)
    model.set_train(False)
    return model


def next_index(samples_dir: Path) -> int:
    """The first free image number in ``samples_dir`` (numbering continues after earlier runs)."""
    taken = [int(p.stem) for p in samples_dir.glob("*.png") if re.fullmatch(r"\d+", p.stem)]
    return max(taken, default=-1) + 1


def next_grid_index(output_dir: Path) -> int:
    """The first free grid number in ``output_dir``."""
    taken = [int(m.group(1)) for p in output_dir.glob("grid-*.png") if (m := re.fullmatch(r"grid-(\d+)", p.stem))]
    return max(taken, default=-1) + 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cli_logging(args.verbose)
    prompts = read_prompts(args)
    check_args(args)

    from mindone.diffusion.pipeline import StableDiffusionPipeline
    from mindone.models.config import load_model_config, size_multiple
    from mindone.models.tokenizer import SDTokenizer
    from mindone.utils.device import init_device

    cfg = load_model_config(args.config)
    height, width = args.H or int(cfg["image_size"]), args.W or int(cfg["image_size"])
    multiple = size_multiple(cfg)
    if height <= 0 or width <= 0 or height % multiple or width % multiple:  # fail before loading gigabytes
        raise UserError(f"--H/--W {height}x{width}: both must be positive multiples of {multiple} for {args.config}")
    tokenizer = SDTokenizer(args.vocab_path)
    init_device(mode=args.mode, device_target=args.device_target)
    model = load_model(args, cfg)
    pipeline = StableDiffusionPipeline(model, tokenizer, image_size=int(cfg["image_size"]))

    output_dir = Path(args.output_dir)
    samples_dir = output_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(samples_dir)  # partial files of an interrupted run
    index = next_index(samples_dir)
    logger.info("%d prompt(s) x %d sample(s), %dx%d, %s %d steps, guidance %.2f, seed %d -> %s",
                len(prompts), args.n_samples, width, height, args.sampler, args.steps, args.guidance_scale,
                args.seed, samples_dir)
    grid_images: list[np.ndarray] = []
    grid_labels: list[str] = []
    for number, prompt in enumerate(prompts, 1):
        logger.info("prompt %d/%d: %s", number, len(prompts), prompt)
        images = pipeline(prompt, negative_prompts=args.negative_prompt, sampler=args.sampler, steps=args.steps,
                          guidance_scale=args.guidance_scale, seed=args.seed, height=height, width=width,
                          n_samples=args.n_samples, eta=args.eta, batch_size=args.batch_size)
        for sample, image in enumerate(images):
            parameters = (f"{prompt}\nNegative prompt: {args.negative_prompt}\nSampler: {args.sampler}, "
                          f"Steps: {args.steps}, Guidance: {args.guidance_scale}, Eta: {args.eta}, Seed: {args.seed}, "
                          f"Sample: {sample}, Size: {width}x{height}, Dtype: {args.dtype}, Config: {args.config}, Ckpt: {args.ckpt}"
                          + (f", LoRA: {args.lora}" if args.lora else ""))
            target = samples_dir / f"{index:05d}.png"
            save_png(image, target, parameters)
            logger.info("wrote %s", target)
            index += 1
        if not args.skip_grid and len(grid_images) < GRID_MAX_IMAGES:
            kept = images[: GRID_MAX_IMAGES - len(grid_images)]
            grid_images.extend(kept)
            grid_labels.extend(f"{prompt} (seed {args.seed}, #{sample})" for sample in range(len(kept)))
    if grid_images:
        # One row per prompt; a single sample per prompt gives a square-ish grid instead of a column.
        columns = args.n_samples if args.n_samples > 1 else math.ceil(math.sqrt(len(grid_images)))
        grid_path = output_dir / f"grid-{next_grid_index(output_dir):04d}.png"
        save_png(labelled_grid(np.stack(grid_images), grid_labels, columns), grid_path)
        logger.info("wrote grid %s", grid_path)
    return 0


if __name__ == "__main__":
    run_main(main)
