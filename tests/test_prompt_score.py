"""The demo's prompt scorer (mindone/demo/prompt_score.py) and the readable grids (labelled_grid)."""

from __future__ import annotations

import random
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mindone.demo.prompt_score import (PALETTE_NAMES, parse_prompt, read_samples, score_images, score_prompts,
                                       write_score)
from mindone.demo.scenes import COLORS, SHAPES, draw_scene
from mindone.utils.images import labelled_grid, save_png

REPO = Path(__file__).resolve().parent.parent


def scenes(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, list[str]]:
    """``n`` sample-data scenes drawn at 512 px and shrunk to ``size`` (as img2dataset does), with their captions."""
    rng = random.Random(seed)
    images, prompts = [], []
    for _ in range(n):
        shape = rng.choice(SHAPES)
        color, background = rng.sample(sorted(COLORS), 2)
        images.append(np.asarray(draw_scene(shape, color, background, rng).resize((size, size), Image.BOX)))
        prompts.append(f"a {color} {shape} on a {background} background")
    return np.stack(images), prompts


def test_scorer_reads_the_training_scenes_right_and_mismatched_prompts_at_chance():
    images, prompts = scenes(300, seed=3)
    right = score_images(images, prompts)
    assert right["centre_colour"] >= 0.98 and right["border_colour"] >= 0.98 and right["shape"] >= 0.97, right
    # The same images against the next image's prompt: the verdicts no longer match (about chance).
    wrong = score_images(images, prompts[1:] + prompts[:1])
    assert wrong["centre_colour"] < 0.25 and wrong["border_colour"] < 0.25 and wrong["shape"] < 0.5, wrong


def test_scorer_on_flat_and_swapped_images():
    flat = np.full((2, 32, 32, 3), COLORS["red"], dtype=np.uint8)
    result = score_images(flat, ["a red circle on a blue background", "a blue square on a red background"])
    assert [r["seen_centre"] for r in result["per_image"]] == ["red", "red"]
    assert result["per_image"][0]["seen_shape"] == "none" and result["shape"] == 0.0
    assert result["centre_colour"] == 0.5 and result["border_colour"] == 0.5
    images, prompts = scenes(1, seed=5)
    color, shape, background = parse_prompt(prompts[0])
    swapped = f"a {background} {shape} on a {color} background"
    assert score_images(images, [swapped])["centre_colour"] == 0.0


def test_score_prompts_cover_the_palette_and_differ_from_the_grid():
    prompts = score_prompts()
    grid_prompts = runpy.run_path(str(REPO / "examples" / "demo" / "run_demo.py"))["PROMPTS"]  # a script, not a module
    assert len(set(prompts)) == 16 and not set(prompts) & set(grid_prompts)
    parsed = [parse_prompt(p) for p in prompts]
    assert all(color != background for color, _, background in parsed)
    for name in PALETTE_NAMES:
        assert sum(c == name for c, _, _ in parsed) == 2 and sum(b == name for _, _, b in parsed) == 2
    assert {shape for _, shape, _ in parsed} == set(SHAPES)


@pytest.mark.parametrize("text", ["a red cube on a table", "a pink circle on a blue background", "a red circle"])
def test_parse_prompt_rejects_other_text(text):
    with pytest.raises(ValueError, match="not a demo prompt"):
        parse_prompt(text)


def test_labelled_grid_enlarges_each_image_and_writes_its_label():
    images, prompts = scenes(3, seed=1, size=16)
    grid = labelled_grid(images, prompts, columns=2)
    cell, gap = 128, 4  # 16 px * 8 (nearest-neighbour), 4 px gaps
    assert grid.shape[1] == 2 * (cell + gap) + gap and grid.shape[0] > 2 * (cell + gap)
    second = grid[gap:gap + cell, 2 * gap + cell:2 * (gap + cell)]
    np.testing.assert_array_equal(second, np.repeat(np.repeat(images[1], 8, axis=0), 8, axis=1))
    text_band = grid[gap + cell:gap + cell + 20, gap:gap + cell]
    assert (text_band.sum(-1) < 200).any()  # dark text on the white band under the image
    with pytest.raises(ValueError, match="labels"):
        labelled_grid(images, prompts[:2])


def test_write_score_reads_the_pngs_prompts_and_writes_json_and_grid(tmp_path):
    images, prompts = scenes(4, seed=2)
    samples = tmp_path / "samples"
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        save_png(image, samples / f"{i:05d}.png", f"{prompt}\nNegative prompt: \nSampler: ddim")
    read, read_prompts = read_samples(samples)
    assert read_prompts == prompts and np.array_equal(read, images)
    result = write_score(samples, tmp_path / "score.json", tmp_path / "grid.png", settings={"seed": 7})
    assert result["images"] == 4 and result["centre_colour"] == 1.0 and result["settings"] == {"seed": 7}
    assert '"border_colour": 1.0' in (tmp_path / "score.json").read_text()
    assert Image.open(tmp_path / "grid.png").size[0] >= 4 * 128
