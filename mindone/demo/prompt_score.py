"""Does the demo's model follow its prompts? Score generated images against what their prompt names.

Every prompt of the demo reads "a {color} {shape} on a {background} background" (see scenes.py).
For each image:
  centre colour  the palette colour (nearest in RGB) that most pixels of a small patch just below the
                 centre are closest to; the shapes of scenes.draw_scene cover most of that patch
  border colour  the same over a frame along the image edge, which the shapes never reach
  shape          the pixels closer to the predicted centre colour than to the predicted border colour form a
                 mask; the shape is the template (circle, square or triangle, drawn by draw_scene's geometry
                 over a grid of centres and sizes) with the highest intersection-over-union with that mask
Each is right when it equals the prompt's word. Chance is 1/8 for the colours and 1/3 for the shape.
The same scorer gives ~1.0 on the training images themselves (see tests/test_prompt_score.py).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from mindone.demo.scenes import COLORS, SHAPES

PROMPT_RE = re.compile(r"^a (\w+) (\w+) on a (\w+) background$")
PALETTE_NAMES = sorted(COLORS)
PALETTE = np.array([COLORS[name] for name in PALETTE_NAMES], dtype=np.float32)
# The prompts scored by the demo: every colour twice as the shape colour and twice as the background, every
# shape at least five times, none of them one of the grid's prompts. Chosen by rule, not by result.
SCORE_SEED = 1000  # the grid uses text_to_image.py's seed (42)


def score_prompts(n: int = 16) -> list[str]:
    """``n`` prompts: colour i with background i+3 (first round) or i+5 (second round), shapes in turn."""
    prompts = []
    for i in range(n):
        color = PALETTE_NAMES[i % 8]
        background = PALETTE_NAMES[(i % 8 + (3 if (i // 8) % 2 == 0 else 5)) % 8]
        prompts.append(f"a {color} {SHAPES[i % 3]} on a {background} background")
    return prompts


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """(color, shape, background) of a demo prompt; ValueError for any other text."""
    m = PROMPT_RE.match(prompt.strip())
    if not m or m.group(1) not in COLORS or m.group(2) not in SHAPES or m.group(3) not in COLORS:
        raise ValueError(f"not a demo prompt ('a <color> <shape> on a <color> background'): {prompt!r}")
    return m.group(1), m.group(2), m.group(3)


def nearest_palette(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> int [H, W]: index into PALETTE_NAMES of each pixel's nearest colour."""
    dist = ((image.astype(np.float32)[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    return dist.argmin(-1)


def _majority(labels: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.bincount(labels.ravel(), minlength=len(PALETTE_NAMES)).argmax())]


def centre_colour(image: np.ndarray) -> str:
    """Majority nearest-palette colour of the central patch: an eighth of each side, centred horizontally and
    starting at the middle row (a triangle's apex points up, so its area lies below the centre)."""
    h, w = image.shape[:2]
    ph, pw = max(2, h // 8), max(2, w // 8)
    top, left = h // 2, (w - pw) // 2
    return _majority(nearest_palette(image[top:top + ph, left:left + pw]))


def border_colour(image: np.ndarray) -> str:
    """Majority nearest-palette colour of the frame along the edges (a sixteenth of the side, at least 1 px)."""
    h, w = image.shape[:2]
    k = max(1, min(h, w) // 16)
    labels = nearest_palette(image)
    frame = np.concatenate([labels[:k].ravel(), labels[-k:].ravel(), labels[k:-k, :k].ravel(), labels[k:-k, -k:].ravel()])
    return _majority(frame)


@lru_cache(maxsize=8)
def shape_templates(size: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """Boolean masks [T, size, size] of every shape over a grid of draw_scene's centres and sizes, and their names.

    Drawn at 4x and averaged down, so a pixel belongs to a template when the shape covers most of it."""
    big = size * 4
    masks, names = [], []
    for shape in SHAPES:
        for half_frac in np.linspace(0.22, 0.32, 4):
            for cx_frac in np.linspace(0.4, 0.6, 5):
                for cy_frac in np.linspace(0.4, 0.6, 5):
                    img = Image.new("L", (big, big), 0)
                    draw = ImageDraw.Draw(img)
                    half, cx, cy = big * half_frac, big * cx_frac, big * cy_frac
                    if shape == "circle":
                        draw.ellipse((cx - half, cy - half, cx + half, cy + half), fill=255)
                    elif shape == "square":
                        draw.rectangle((cx - half, cy - half, cx + half, cy + half), fill=255)
                    else:
                        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=255)
                    small = np.asarray(img, dtype=np.float32).reshape(size, 4, size, 4).mean(axis=(1, 3))
                    masks.append(small >= 128)
                    names.append(shape)
    return np.stack(masks), tuple(names)


def classify_shape(image: np.ndarray, color: str, background: str) -> str:
    """The shape whose best-fitting template overlaps most (IoU) with the pixels nearer ``color`` than ``background``."""
    h, w = image.shape[:2]
    if h != w:
        raise ValueError(f"expected a square image, got {w}x{h}")
    pixels = image.astype(np.float32)
    d_fg = ((pixels - np.array(COLORS[color], np.float32)) ** 2).sum(-1)
    d_bg = ((pixels - np.array(COLORS[background], np.float32)) ** 2).sum(-1)
    mask = d_fg < d_bg
    templates, names = shape_templates(h)
    inter = (templates & mask).sum(axis=(1, 2))
    union = (templates | mask).sum(axis=(1, 2))
    return names[int((inter / np.maximum(union, 1)).argmax())]


def judge(image: np.ndarray) -> dict:
    """What one uint8 [H, W, 3] image shows: its centre colour, border colour and shape."""
    centre, border = centre_colour(image), border_colour(image)
    # One colour everywhere: there is no shape to find, and "none" never matches a prompt.
    shape = classify_shape(image, centre, border) if centre != border else "none"
    return {"centre": centre, "border": border, "shape": shape}


def score_images(images: np.ndarray, prompts: Sequence[str]) -> dict:
    """Share of images (uint8 [N, H, W, 3], one prompt each) whose centre colour, border colour and shape
    match their prompt, plus the per-image verdicts."""
    if len(images) != len(prompts) or len(prompts) == 0:
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    rows = []
    for image, prompt in zip(images, prompts):
        color, shape, background = parse_prompt(prompt)
        seen = judge(np.asarray(image))
        rows.append({"prompt": prompt, **{f"seen_{k}": v for k, v in seen.items()},
                     "centre_ok": seen["centre"] == color, "border_ok": seen["border"] == background,
                     "shape_ok": seen["shape"] == shape})
    n = len(rows)
    return {
        "images": n,
        "centre_colour": sum(r["centre_ok"] for r in rows) / n,
        "border_colour": sum(r["border_ok"] for r in rows) / n,
        "shape": sum(r["shape_ok"] for r in rows) / n,
        "all_three": sum(r["centre_ok"] and r["border_ok"] and r["shape_ok"] for r in rows) / n,
        "chance": {"centre_colour": 1 / len(COLORS), "border_colour": 1 / len(COLORS), "shape": 1 / len(SHAPES)},
        "per_image": rows,
    }


def read_samples(samples_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The PNGs text_to_image.py wrote in ``samples_dir`` (sorted by number) and their prompts (first line of
    the ``parameters`` text chunk)."""
    files = sorted(Path(samples_dir).glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{samples_dir}: no PNG images")
    images, prompts = [], []
    for path in files:
        with Image.open(path) as img:
            prompts.append(img.text["parameters"].split("\n", 1)[0])
            images.append(np.asarray(img.convert("RGB")))
    return np.stack(images), prompts


def write_score(samples_dir: Path, json_path: Path, grid_path: Path, settings: dict) -> dict:
    """Score the images of ``samples_dir``; write the result (with ``settings``, e.g. seed and sampler) as json
    and a labelled grid of the scored images with what the scorer saw under each prompt."""
    from mindone.utils.atomic import atomic_write_text
    from mindone.utils.images import labelled_grid, save_png

    images, prompts = read_samples(samples_dir)
    result = {**score_images(images, prompts), "settings": settings}
    atomic_write_text(json_path, json.dumps(result, indent=1) + "\n")
    labels = [f"{r['prompt']} | seen: {r['seen_centre']} {r['seen_shape']} on {r['seen_border']}"
              for r in result["per_image"]]
    save_png(labelled_grid(images, labels, columns=8), grid_path)
    return result


def summary_line(result: dict) -> str:
    """One line for the demo's summary: the three shares and chance."""
    return (f"centre colour {result['centre_colour']:.2f}, border colour {result['border_colour']:.2f}, "
            f"shape {result['shape']:.2f} (chance 0.12, 0.12, 0.33) over {result['images']} images")
