"""The micro SD model and the image folder the training tests train on, and the environment they train in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

MICRO_MODEL = {
    "model": {
        "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1, 2],
                 "num_res_blocks": 1, "attention_levels": [1], "num_head_channels": 16, "transformer_depth": 1,
                 "context_dim": 32},
        "vae": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 4, "embed_dim": 4},
        "text_encoder": {"vocab_size": 49408, "context_length": 77, "width": 32, "layers": 1, "heads": 2},
    },
    "scale_factor": 0.18215,
    "parameterization": "eps",
    "image_size": 16,
}


def write_micro_model(path: Path) -> Path:
    path.write_text(yaml.safe_dump(MICRO_MODEL))
    return path


def write_image_folder(root: Path, count: int = 8) -> Path:
    """``part_0.csv`` (dir,text) + JPEGs: each image a colour with its complement in the middle."""
    (root / "part_0").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["dir,text"]
    for i in range(count):
        colour = rng.integers(0, 256, size=3)
        img = np.zeros((40, 40, 3), np.uint8)  # the loader skips images under 32 px
        img[:] = colour
        img[10:30, 10:30] = 255 - colour
        Image.fromarray(img).save(root / "part_0" / f"{i:05d}.jpg", quality=95)
        rows.append(f"part_0/{i:05d}.jpg,a square of colour number {i}")
    (root / "part_0.csv").write_text("\n".join(rows) + "\n")
    return root


def train_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ, GLOG_v="3", NO_ALBUMENTATIONS_UPDATE="1", MS_COMPILER_CACHE_ENABLE="1",
               MS_COMPILER_CACHE_PATH=str(cache_dir))
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env
