"""Convert Stable Diffusion 2.x weights to one checked file in the original layout (safetensors by default).

    python tools/model_conversion/convert_weights.py --source v2-1_512-ema-pruned.ckpt  # -> <name>.safetensors
    python tools/model_conversion/convert_weights.py --source ./stable-diffusion-2-1-base --target sd21_base.safetensors
    python tools/model_conversion/convert_weights.py --source sd21_base.safetensors --target sd21_base.ckpt

SRC: an original SD 2.x .ckpt (torch pickle, read weights-only, never executing code from the file) or
.safetensors, a diffusers folder (unet/, vae/, text_encoder/; transformers 4 or 5 text encoder names),
or a MindSpore .ckpt.
DST: ``*.safetensors`` (the default, memory-mapped when loaded) or ``*.ckpt`` (MindSpore checkpoint).
Tensor names are the original checkpoint names in both outputs. Extra source tensors (model_ema.*, the
24th text block, text_projection, ...) are reported and skipped; missing ones stop the conversion.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config
from mindone.utils.config import build_parser as options_parser

logger = logging.getLogger("convert_weights")
DTYPES = {"keep": None, "fp32": np.float32, "fp16": np.float16}


OPTIONS: list[Option] = [
    Option("source", str, None, "original .ckpt/.safetensors, diffusers folder or MindSpore .ckpt", required=True,
           group=None),
    Option("target", str, None, "output file: .safetensors (original ldm layout, memory-mapped when loaded) or .ckpt "
           "(MindSpore checkpoint) (default: the source's name with .safetensors, beside it)", group=None),
    Option("config", str, "v2-base-512-eps", "model config (yaml path or bundled name: v2-base-512-eps, v2-768-v, "
           "tiny) giving the expected tensor names and shapes; both SD 2.x configs share one layout "
           "(default: %(default)s)", group=None),
    Option("dtype", str, "keep", "floating-point dtype of the output tensors; 'keep' preserves the source's, which "
           "makes a .ckpt -> .safetensors round trip bit-exact (default: %(default)s)", choices=sorted(DTYPES),
           group=None),
    Option("use_ema", bool, False, "write the EMA copy of each weight where the source has one (ldm model_ema.*, "
           "mindone training ema.*)", action="store_true", group=None),
    Option("overwrite", bool, False, "replace an existing target file", action="store_true", group=None),
    Option("verbose", bool, False, "debug logging", action="store_true", short="-v", group=None),
]
# --config names the model yaml here, so the yaml of these options is --options (as for text_to_image.py)
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__, config_flag="options",
              config_help="yaml file whose keys are these flags' names (flags given here win; --config is the "
                          "model config)")


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (also imported by tools that document every flag)."""
    return options_parser(OPTIONS, __doc__.split("\n\n")[0], **PARSER)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Defaults < --options yaml < flags."""
    return resolve_config(OPTIONS, argv, __doc__.split("\n\n")[0], **PARSER)


def default_target(source: Path) -> Path:
    """``<source>.safetensors`` beside the source (a folder's name, or a file's name without its suffix)."""
    source = Path(source)
    return source.parent / f"{source.name}.safetensors" if source.is_dir() else source.with_suffix(".safetensors")


def resolve_target(source: Path, target: str | None, overwrite: bool) -> Path:
    """The output path; raises UserError for a bad name, an existing file, or the source itself."""
    path = Path(target) if target is not None else default_target(source)
    flag = "--target" if target is not None else "--target (default)"
    if path.suffix not in (".ckpt", ".safetensors"):
        raise UserError(f"{flag} {path}: the file name must end in .safetensors (original layout) or .ckpt "
                        "(MindSpore)")
    if path.exists() and path.resolve() == source.resolve():
        raise UserError(f"{flag} {path}: is the source itself (it is read while the output is written); "
                        "name another --target")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {path}: already exists (pass --overwrite to replace it)")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_cli_logging(args.verbose)
    source = Path(args.source)
    if not source.exists():
        raise UserError(f"--source {args.source}: no such file or directory")
    target = resolve_target(source, args.target, args.overwrite)

    from mindspore.nn.utils import no_init_parameters

    from mindone.convert.convert import (expected_layout, model_layout_config, read_as_ldm, save_ldm_safetensors,
                                         save_mindspore_checkpoint)
    from mindone.models.config import build_model, load_model_config

    with no_init_parameters():  # only names and shapes are needed
        model = build_model(load_model_config(args.config))
    # read_as_ldm logs the skipped source tensors (model_ema.*, ...) itself
    tensors, _, layout = read_as_ldm(args.source, expected_layout(model), model_layout_config(model),
                                     use_ema=args.use_ema)
    dtype = DTYPES[args.dtype]
    if dtype is not None:
        tensors = {n: a.astype(dtype, copy=False) if np.issubdtype(a.dtype, np.floating) else a
                   for n, a in tensors.items()}
    try:
        if target.suffix == ".ckpt":
            save_mindspore_checkpoint(tensors, target)
        else:
            save_ldm_safetensors(tensors, target)
    except OSError as err:  # e.g. a full disk: nothing is left at --target (the writers are atomic)
        raise UserError(f"--target {target}: cannot write ({err.strerror or err})") from err
    size = sum(a.nbytes for a in tensors.values()) / 1e9
    logger.info("wrote %d tensors (%.2f GB) from %s (%s layout) to %s", len(tensors), size, args.source, layout, target)
    return 0


if __name__ == "__main__":
    run_main(main)
