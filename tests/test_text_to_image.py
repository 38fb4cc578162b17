"""examples/stable_diffusion_v2/text_to_image.py end to end on the tiny config (random weights in a ckpt)."""

from __future__ import annotations

import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from PIL import Image

from mindone.models.config import build_model, load_model_config

SCRIPT = "examples/stable_diffusion_v2/text_to_image.py"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """Random tiny weights saved as a MindSpore checkpoint under the original ldm names."""
    ms.set_seed(3)
    model = build_model(load_model_config("tiny"))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    ms.save_checkpoint(model, str(path))
    return path


def _cli(repo_root, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the script as a user would, in its own process (fresh MindSpore device and context)."""
    return subprocess.run([sys.executable, str(repo_root / SCRIPT), *args], capture_output=True, text=True,
                          cwd=repo_root, timeout=timeout)


@pytest.fixture
def run(repo_root, tiny_ckpt):
    def _run(output_dir, *extra: str) -> None:
        proc = _cli(repo_root, "--config", "tiny", "--ckpt", str(tiny_ckpt), "--steps", "1", "--mode", "pynative",
                    "--output_dir", str(output_dir), *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"wrote {output_dir}/samples/" in proc.stderr  # the log says where the images went

    return _run


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_images_grid_and_seeding(run, tmp_path):
    out = tmp_path / "out"
    run(out, "--prompt", "a red cube on a table", "--n_samples", "2", "--seed", "7")
    samples = out / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["00000.png", "00001.png"]
    first = Image.open(samples / "00000.png")
    assert first.size == (32, 32) and first.mode == "RGB"  # the tiny config's image_size
    assert "a red cube on a table" in first.text["parameters"] and "Seed: 7" in first.text["parameters"]
    grid = _pixels(out / "grid-0000.png")
    assert grid.shape[1] == 2 * (128 + 4) + 4  # one row, n_samples columns of 32 px images enlarged 4x, 4 px gaps
    np.testing.assert_array_equal(grid[4:132:4, 136:264:4], _pixels(samples / "00001.png"))
    assert not np.array_equal(_pixels(samples / "00000.png"), _pixels(samples / "00001.png"))

    # Same seed again: numbering continues, pixels are identical.
    run(out, "--prompt", "a red cube on a table", "--n_samples", "2", "--seed", "7")
    assert (out / "grid-0001.png").is_file()
    for a, b in (("00000", "00002"), ("00001", "00003")):
        np.testing.assert_array_equal(_pixels(samples / f"{a}.png"), _pixels(samples / f"{b}.png"))
    assert not list(out.rglob("*.tmp"))

    reference = _pixels(samples / "00000.png")
    run(tmp_path / "seed8", "--prompt", "a red cube on a table", "--seed", "8", "--skip_grid")
    assert not np.array_equal(_pixels(tmp_path / "seed8" / "samples" / "00000.png"), reference)
    assert not list((tmp_path / "seed8").glob("grid-*.png"))
    run(tmp_path / "neg", "--prompt", "a red cube on a table", "--seed", "7", "--negative_prompt", "blurry, dark")
    assert not np.array_equal(_pixels(tmp_path / "neg" / "samples" / "00000.png"), reference)

    # fp16 compute (what Ascend runs): the same images up to fp16 rounding, and said so in the PNG.
    run(tmp_path / "fp16", "--prompt", "a red cube on a table", "--seed", "7", "--dtype", "fp16", "--skip_grid")
    half = Image.open(tmp_path / "fp16" / "samples" / "00000.png")
    diff = np.abs(np.asarray(half.convert("RGB"), np.int16) - reference.astype(np.int16))
    assert "Dtype: fp16" in half.text["parameters"]
    assert diff.mean() < 2.0 and diff.max() <= 16, (diff.mean(), diff.max())


@pytest.mark.timeout(120)
def test_prompt_file_and_size_flags(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n\n  a dog  \n", encoding="utf-8")
    out = tmp_path / "out"
    run(out, "--prompt_file", str(prompts), "--H", "16", "--W", "48", "--sampler", "dpm++",
        "--guidance_scale", "1")
    files = sorted((out / "samples").iterdir())
    assert [p.name for p in files] == ["00000.png", "00001.png"]
    assert Image.open(files[1]).size == (48, 16) and "a dog\n" in Image.open(files[1]).text["parameters"]
    # 1 sample per prompt: ceil(sqrt(2)) = 2 columns of 48 px wide images enlarged 3x, 4 px gaps
    assert _pixels(out / "grid-0000.png").shape[1] == 2 * (144 + 4) + 4


@pytest.mark.parametrize("args, message", [
    (["--config", "tiny", "--prompt", "x"], "--ckpt is required"),
    (["--config", "tiny", "--prompt", "x", "--ckpt", "/nonexistent.ckpt"], "--ckpt /nonexistent.ckpt: no such file"),
    (["--config", "tiny", "--prompt_file", "/nonexistent.txt", "--allow_random_init"],
     "--prompt_file /nonexistent.txt"),
    (["--config", "tiny", "--allow_random_init"], "exactly one of --prompt and --prompt_file"),
    (["--config", "tiny", "--prompt", "x", "--allow_random_init", "--sampler", "dpm++", "--eta", "1"], "--eta"),
    (["--config", "tiny", "--prompt", "x", "--allow_random_init", "--H", "40"], "multiples of 16"),
    (["--config", "tiny", "--prompt", "x", "--allow_random_init", "--steps", "1000"], "--steps 1000: expected 1..999"),
    (["--config", "tiny", "--prompt", "x", "--allow_random_init", "--lora", "/nonexistent.ckpt"],
     "--lora /nonexistent.ckpt: no such file"),
    (["--config", "tiny", "--prompt", "x", "--allow_random_init", "--lora_merge"], "--lora_merge needs --lora"),
])
def test_user_errors_are_one_line(repo_root, args, message):
    proc = _cli(repo_root, *args, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help_lists_every_flag(repo_root):
    proc = _cli(repo_root, "--help", timeout=60)
    assert proc.returncode == 0
    for flag in ("--ckpt", "--config", "--prompt", "--prompt_file", "--negative_prompt", "--sampler", "--steps",
                 "--guidance_scale", "--seed", "--n_samples", "--H", "--W", "--output_dir", "--mode", "--vocab_path",
                 "--batch_size", "--allow_random_init", "--eta", "--lora", "--lora_merge", "--dtype"):
        assert flag in proc.stdout
