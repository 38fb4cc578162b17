#!/usr/bin/env python
"""Does the demo's autoencoder keep the colours? Decode cached latents and score them against their captions.

    python examples/demo/check_autoencoder.py --latents_dir demo_output/latents \\
        --model_config demo_output/demo_model_config.yaml --pretrained_model_path demo_output/vae/model.ckpt \\
        --output demo_output/autoencoder_score.json

The UNet learns to produce latents, and every image the demo shows is the autoencoder's decode of one: a
colour the autoencoder cannot reproduce, the model cannot draw, however well its UNet follows the prompt.
This decodes the posterior means of the first --samples cached latents (what encode_latents.py wrote, in
shard order) and scores the reconstructions with the same scorer as the generated images
(mindone/demo/prompt_score.py): centre colour, border colour and shape against each sample's caption.
It writes the scores as json and a labelled grid of the first 32 reconstructions beside it.
"""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from mindone.data.latents import MOMENTS_EXT, read_moments
from mindone.data.wds_sample import CAPTION_EXT, split_name
from mindone.utils.cli import UserError, run_main, setup_cli_logging
from mindone.utils.config import Option, resolve_config

logger = logging.getLogger("check_autoencoder")

OPTIONS = [
    Option("latents_dir", str, None, "latent dataset written by encode_latents.py (required)", group=None),
    Option("model_config", str, None, "model yaml whose VAE decodes (required)", group=None),
    Option("pretrained_model_path", str, None, "weights holding the VAE (required)", group=None),
    Option("samples", int, 256, "cached latents to decode and score (default: 256)", group=None),
    Option("batch_size", int, 64, "latents per VAE call (default: 64)", group=None),
    Option("output", str, None, "json file for the scores (required); the grid goes beside it as .png", group=None),
]


def build_parser():
    from mindone.utils.config import build_parser as options_parser

    return options_parser(OPTIONS, __doc__)


def read_cached(latents_dir: Path, limit: int) -> tuple[np.ndarray, list[str]]:
    """Posterior means ``[N, C, h, w]`` and captions of the first ``limit`` samples of the latent shards."""
    means, captions = [], []
    for shard in sorted(latents_dir.glob("part_*/*.tar")):
        groups: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                split = split_name(member.name) if member.isfile() else None
                if split and split[1] in (MOMENTS_EXT, CAPTION_EXT):
                    groups.setdefault(split[0], {})[split[1]] = tar.extractfile(member).read()
        for key in sorted(groups):
            group = groups[key]
            if MOMENTS_EXT in group and CAPTION_EXT in group:
                moments = read_moments(group[MOMENTS_EXT])
                means.append(moments[: moments.shape[0] // 2])
                captions.append(group[CAPTION_EXT].decode("utf-8").strip())
            if len(means) == limit:
                return np.stack(means), captions
    if not means:
        raise UserError(f"{latents_dir}: no cached latents (part_*/*.tar with .{MOMENTS_EXT} and .{CAPTION_EXT})")
    return np.stack(means), captions


def decode_all(args, means: np.ndarray) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` decodes of ``means`` by the VAE of ``--model_config`` / ``--pretrained_model_path``."""
    from mindspore import Tensor, nn

    from mindone.convert import load_sd_weights
    from mindone.models.config import build_model, load_model_config
    from mindone.utils.device import init_device

    init_device(mode="graph", device_target=None)  # one compiled decode is faster than op-by-op dispatch
    model = build_model(load_model_config(args.model_config))
    load_sd_weights(model, args.pretrained_model_path)
    model.set_train(False)

    class Decode(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.vae = model.first_stage_model

        def construct(self, z):
            return self.vae.decode(z)

    decode = Decode()
    out = []
    for start in range(0, len(means), args.batch_size):
        batch = means[start:start + args.batch_size]
        n = len(batch)
        if n < args.batch_size:  # one compiled shape: pad the last batch
            batch = np.concatenate([batch, np.zeros((args.batch_size - n, *batch.shape[1:]), batch.dtype)])
        out.append(decode(Tensor(batch)).asnumpy()[:n])
    pixels = np.concatenate(out).transpose(0, 2, 3, 1)
    return ((np.clip(pixels, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)


def main(argv: Sequence[str] | None = None) -> int:
    from mindone.demo.prompt_score import score_images
    from mindone.utils.atomic import atomic_write_text
    from mindone.utils.images import labelled_grid, save_png

    args = resolve_config(OPTIONS, argv, __doc__)
    setup_cli_logging()
    for name in ("latents_dir", "model_config", "pretrained_model_path", "output"):
        if not getattr(args, name):
            raise UserError(f"--{name} is required")
    means, captions = read_cached(Path(args.latents_dir), args.samples)
    images = decode_all(args, means)
    result = score_images(images, captions)
    output = Path(args.output)
    atomic_write_text(output, json.dumps(result, indent=1) + "\n")
    labels = [f"{r['prompt']} | seen: {r['seen_centre']} {r['seen_shape']} on {r['seen_border']}"
              for r in result["per_image"][:32]]
    save_png(labelled_grid(images[:32], labels, columns=8), output.with_suffix(".png"))
    print(f"autoencoder reconstructions: centre colour {result['centre_colour']:.2f}, border colour "
          f"{result['border_colour']:.2f}, shape {result['shape']:.2f} over {result['images']} cached latents")
    return 0


if __name__ == "__main__":
    run_main(main)
