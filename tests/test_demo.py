"""The README's demo end to end on a small sample, a second run that reuses it, then the tutorial's Part 1.

The demo runs every real tool (local server, metadata download, filter, img2dataset, stats, training,
sampling, report); the tutorial's commands are then run as written, on the demo's output, with only
paths made absolute and step counts made small.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "examples" / "stable_diffusion_v2" / "README.md"
# The demo on its full data with half its autoencoder steps, a third of its UNet steps and half its sampler
# steps: a recipe that learns the prompts' colours, if less surely than the full one (docs/benchmarks.md; the
# demo's 64-channel UNet reaches at 350 steps the loss the 32-channel one it replaced reached at ~650).
REDUCED = ["--vae_steps", "400", "--train_steps", "350", "--sample_steps", "10"]
SMALLER = {"--max_train_steps 60": "--max_train_steps 4", "--checkpointing_steps 20": "--checkpointing_steps 2",
           "--max_train_steps 40": "--max_train_steps 3", "--steps 20": "--steps 2", "--n_samples 4": "--n_samples 2"}


def demo_env() -> dict[str, str]:
    env = dict(os.environ, GLOG_v="3", NO_ALBUMENTATIONS_UPDATE="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHON"] = sys.executable  # the tools' shell wrappers use this interpreter
    return env


def run_demo(out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo" / "run_demo.py"), "--output_dir", str(out), *REDUCED],
        cwd=REPO, env=demo_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def tutorial_part1_commands() -> list[str]:
    text = TUTORIAL.read_text()
    part1 = text.split("## Part 1")[1].split("## Part 2")[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", part1, flags=re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith(("#", "bash scripts/demo.sh", "source ", "head ")):
                commands.append(line)
    return commands


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out = root / "demo_output"
    return root, out, run_demo(out)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_runs_every_stage_and_its_model_follows_the_prompts(demo):
    root, out, proc = demo
    for stage in range(1, 13):
        assert f"[{stage}/12]" in proc.stdout and "finished in" in proc.stdout
    report = json.loads((out / "metadata_filtered" / "filter_report.json").read_text())
    assert report["rows_in"] == 1000 and report["rows_out"] == 600  # 4 rows in 10 fail one seed-001 condition
    stats = (out / "image_text_data" / "part_1_stats.csv").read_text().splitlines()
    assert stats[0] == "file_path,num_samples" and sum(int(r.split(",")[1]) for r in stats[1:]) == 600
    loss_rows = (out / "train" / "metrics.csv").read_text().splitlines()
    assert len(loss_rows) >= 2 and (out / "train" / "model.ckpt").is_file()
    # The UNet run started from the autoencoder run's weights, and its config says so.
    assert "--train_target vae" in proc.stdout
    train_cfg = yaml.safe_load((out / "train" / "config.yaml").read_text())
    assert train_cfg["pretrained_model_path"] == str(out / "vae" / "model.ckpt")
    # ... and trained on the latents cached from that autoencoder, the same 600 samples.
    assert (train_cfg["dataset_type"], train_cfg["data_path"]) == ("latents", str(out / "latents"))
    latent_stats = (out / "latents" / "part_1_stats.csv").read_text().splitlines()
    assert sum(int(r.split(",")[1]) for r in latent_stats[1:]) == 600
    assert yaml.safe_load((out / "vae" / "config.yaml").read_text())["train_target"] == "vae"
    grid = np.asarray(Image.open(out / "samples" / "grid-0000.png"))
    assert grid.ndim == 3 and grid.std() > 0
    assert grid.shape[1] >= 3 * 128 and grid.shape[0] >= 4 * 128  # 4 prompts x 3 seeds, enlarged, captioned
    # The score stage sampled 16 other prompts x 2 and scored them: 64 colour judgements (centre and border),
    # each right by chance with probability 1/8. 14 or more right happens by chance with probability 0.025;
    # with the 32-channel UNet at 500 steps this recipe got 33, 19, 25 and 41 in four runs: it is short enough
    # that its score spreads widely, so the bound is loose (the full recipe's figure is in docs/benchmarks.md).
    # The check stage decoded 256 cached latents and scored them against their captions: the autoencoder
    # keeps the colours the UNet is taught. At 400 steps it is still learning: six runs of this recipe
    # reconstructed 0.75 to 0.98 of the centre colours and 0.88 to 1.00 of the borders (docs/benchmarks.md),
    # and a stalled autoencoder scored 0.48 / 0.70, so the bound sits between the two.
    check = json.loads((out / "autoencoder_score.json").read_text())
    assert check["images"] == 256 and min(check["centre_colour"], check["border_colour"]) >= 0.6, check
    assert (out / "autoencoder_score.png").is_file() and "reconstructions: centre colour" in proc.stdout
    score = json.loads((out / "prompt_score.json").read_text())
    assert score["images"] == 32 and len(score["per_image"]) == 32 and score["settings"]["seed"] == 1000
    assert score["centre_colour"] + score["border_colour"] >= 14 / 32, score
    assert yaml.safe_load((out / "train" / "model_config.yaml").read_text())["zero_terminal_snr"] is True
    assert "centre colour" in proc.stdout and (out / "score_grid.png").is_file()
    assert Image.open(out / "loss_curve.png").size[0] > 300
    assert str(out / "samples" / "grid-0000.png") in proc.stdout  # the summary says where everything is


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_second_demo_run_reuses_every_stage(demo):
    root, out, _ = demo
    before = (out / "train" / "model.ckpt").stat().st_mtime_ns
    proc = run_demo(out)
    assert proc.stdout.count("done in an earlier run, reused") == 12
    assert (out / "train" / "model.ckpt").stat().st_mtime_ns == before


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tutorial_part1_commands_work_on_the_demo_output(demo):
    root, out, _ = demo
    commands = tutorial_part1_commands()
    assert len(commands) >= 7
    for command in commands:
        for big, small in SMALLER.items():
            command = command.replace(big, small)
        command = command.replace("demo_output/", f"{out}/").replace("outputs/", f"{root}/outputs/")
        argv = shlex.split(command)
        if argv[0] == "python":
            argv[0] = sys.executable
        proc = subprocess.run(argv, cwd=REPO, env=demo_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    outputs = root / "outputs"
    assert len(list((outputs / "tutorial_t2i" / "samples").glob("*.png"))) == 2
    assert (outputs / "tutorial_train" / "model.ckpt").is_file()
    assert "resumed from" in (outputs / "tutorial_train" / "train.log").read_text()
    assert (outputs / "own_data" / "part_1.csv").is_file()
    assert (outputs / "tutorial_lora" / "lora.ckpt").is_file()
    assert (outputs / "tutorial_lora_t2i" / "grid-0000.png").is_file()
