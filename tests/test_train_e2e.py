"""End-to-end training on CPU in GRAPH_MODE: overfit, checkpoints, validation grid, SIGKILL + resume.

Three runs of ``train_text_to_image.py`` on 8 generated images with a micro SD config (the tiny
config's block types at fewer blocks, so that the graph compiles in seconds): run A goes straight
to step 40 (validation grids at 20 and 40); run B is killed with SIGKILL once checkpoint-20 exists
and resumed with ``--resume_from_checkpoint latest``. The runs share a MindSpore compile cache, so
only the first pays the full graph compile.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers.training import MICRO_MODEL, train_env, write_image_folder, write_micro_model

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "stable_diffusion_v2" / "train_text_to_image.py"

STEPS = 40


def train_args(data: Path, model_cfg: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--data_path", str(data), "--model_config", str(model_cfg), "--output_dir", str(out),
        "--resolution", "16", "--train_batch_size", "4", "--max_train_steps", str(STEPS),
        "--learning_rate", "1e-3", "--lr_scheduler", "cosine", "--lr_warmup_steps", "3",
        "--checkpointing_steps", "10", "--logging_steps", "1", "--use_ema", "--ema_decay", "0.99",
        "--dataloader_num_workers", "0", "--mode", "graph", "--device_target", "CPU", "--seed", "7", *extra,
    ]


def run_train(args: list[str], env: dict, cwd: Path, timeout: float = 420) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_loss(out: Path) -> dict[int, float]:
    from mindone.train.metrics import read_metrics

    return {int(r["step"]): r["loss"] for r in read_metrics(out / "metrics.csv")}


def read_tensorboard(out: Path):
    """The run's TensorBoard logs as TensorBoard itself reads them (orphaned points of a killed run purged)."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator

    acc = EventAccumulator(str(out / "logs"), size_guidance={SCALARS: 0, IMAGES: 0})
    acc.Reload()
    return acc


def tensorboard_loss(out: Path) -> dict[int, float]:
    events = read_tensorboard(out).Scalars("train/loss")
    assert len(events) == len({e.step for e in events}), "a step logged twice"
    return {e.step: e.value for e in events}


def load_state(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_e2e")
    data = write_image_folder(root / "data")
    model_cfg = write_micro_model(root / "micro.yaml")
    env = train_env(root / "ms_cache")
    return root, data, model_cfg, env


@pytest.fixture(scope="module")
def run_a(setup):
    root, data, model_cfg, env = setup
    out = root / "run_a"
    run_train(train_args(data, model_cfg, out, "--checkpoints_total_limit", "3",
                         "--validation_prompts", "a red square", "a blue square", "--validation_steps", "20",
                         "--validation_inference_steps", "2"), env, root)
    return out


@pytest.mark.timeout(600)
def test_overfit_checkpoints_and_validation_grid(run_a):
    loss = read_loss(run_a)
    assert sorted(loss) == list(range(1, STEPS + 1))
    start = np.mean([loss[s] for s in (1, 2, 3)])
    end = np.mean([loss[s] for s in range(STEPS - 4, STEPS + 1)])
    assert start > 0.8, f"the zero-initialised UNet output should start near the noise variance, got {start}"
    assert end < 0.45 * start, f"loss did not fall well below its start: {start:.3f} -> {end:.3f}"

    kept = sorted(p.name for p in (run_a / "checkpoints").iterdir())
    assert kept == ["checkpoint-20", "checkpoint-30", "checkpoint-40"]  # total limit 3, oldest pruned
    grid = np.asarray(Image.open(run_a / "samples" / "step_0000040.png"))
    assert grid.shape[1] == 2 * (128 + 4) + 4  # two 16 px samples side by side, enlarged 8x, 4 px gaps
    assert (run_a / "samples" / "step_0000020.png").is_file()
    assert grid.std() > 0  # an image, not a blank

    # The same figures in TensorBoard (--report_to's default), read back with TensorBoard's own reader.
    board = read_tensorboard(run_a)
    assert {"train/loss", "train/lr", "train/grad_norm", "train/loss_scale", "train/images_per_s"} <= set(
        board.Tags()["scalars"])
    tb_loss = tensorboard_loss(run_a)
    assert sorted(tb_loss) == sorted(loss)
    assert np.allclose([tb_loss[s] for s in loss], [loss[s] for s in loss], rtol=1e-6)  # stored as float32
    images = board.Images("validation/samples")
    assert [e.step for e in images] == [20, 40] and (images[-1].width, images[-1].height) == grid.shape[1::-1]

    saved = yaml.safe_load((run_a / "config.yaml").read_text())
    assert saved["max_train_steps"] == STEPS and saved["use_ema"] is True and saved["seed"] == 7

    # The exported weights are the EMA averages under the original SD names.
    final = load_state(run_a / "model.ckpt")
    state = load_state(run_a / "checkpoints" / "checkpoint-40" / "train_state.ckpt")
    unet = [k for k in final if k.startswith("model.diffusion_model.")]
    assert unet and all(np.array_equal(final[k], state[f"ema.{k}"]) for k in unet)
    assert not np.array_equal(state[unet[0]], state[f"ema.{unet[0]}"])
    assert any(k.startswith("first_stage_model.") for k in final)
    assert any(k.startswith("cond_stage_model.model.") for k in final)


@pytest.mark.timeout(600)
def test_sigkill_then_resume_matches_uninterrupted_run(setup, run_a):
    root, data, model_cfg, env = setup
    out = root / "run_b"
    args = train_args(data, model_cfg, out)  # no validation: sampling must not change the training result
    log = open(root / "run_b_killed.log", "w")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, cwd=root, stdout=log,
                            stderr=subprocess.STDOUT)
    target = out / "checkpoints" / "checkpoint-20" / "meta.json"
    deadline = time.time() + 400
    while not target.exists():
        assert proc.poll() is None, (root / "run_b_killed.log").read_text()[-3000:]
        assert time.time() < deadline, "run B never reached checkpoint-20"
        time.sleep(0.05)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert still_running, "run B finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.ckpt").exists()

    run_train([*args, "--resume_from_checkpoint", "latest"], env, root)
    resumed_log = (out / "train.log").read_text()
    assert "resumed from" in resumed_log

    # The metrics csv describes one run: every step once, in order, with the same losses as run A.
    loss_a, loss_b = read_loss(run_a), read_loss(out)
    assert sorted(loss_b) == list(range(1, STEPS + 1))
    assert np.allclose([loss_b[s] for s in range(1, STEPS + 1)], [loss_a[s] for s in range(1, STEPS + 1)],
                       rtol=0, atol=1e-6)
    # So do the TensorBoard curves: two event files, the killed run's points after step 20 purged on reading.
    assert len(list((out / "logs").glob("events.out.tfevents.*"))) == 2
    tb_b = tensorboard_loss(out)
    assert sorted(tb_b) == list(range(1, STEPS + 1))
    assert np.allclose([tb_b[s] for s in range(1, STEPS + 1)], [loss_a[s] for s in range(1, STEPS + 1)],
                       rtol=1e-6, atol=1e-6)
    # Same seed, same data positions, same per-step noise: the final state equals the uninterrupted run's.
    # Tolerance: exact is expected (CPU kernels are deterministic run to run); 1e-6 absolute covers a
    # different thread split of float32 reductions between processes.
    a = load_state(run_a / "checkpoints" / "checkpoint-40" / "train_state.ckpt")
    b = load_state(out / "checkpoints" / "checkpoint-40" / "train_state.ckpt")
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by {worst}"
    fa, fb = load_state(run_a / "model.ckpt"), load_state(out / "model.ckpt")
    assert all(np.allclose(fa[k], fb[k], rtol=0, atol=1e-6) for k in fa)


@pytest.mark.timeout(600)
def test_lora_on_webdataset_with_workers_then_text_to_image(setup, run_a, tmp_path):
    """LoRA (UNet + text tower) from run A's weights, webdataset shards read by 2 forked data workers;
    text_to_image.py applies the adapters, merged or not, to the same base weights."""
    from tests.helpers.synthetic_data import make_clean_dataset

    root, _, model_cfg, env = setup
    shards = make_clean_dataset(tmp_path / "wds", num_shards=2, per_shard=4).root
    out = tmp_path / "lora_run"
    args = train_args(shards, model_cfg, out, "--dataset_type", "webdataset", "--use_lora", "--lora_rank", "2",
                      "--lora_text_encoder", "--pretrained_model_path", str(run_a / "model.ckpt"))
    args = [a for a in args if a not in ("--use_ema",)] + ["--report_to", "none"]
    args[args.index("--ema_decay"):args.index("--ema_decay") + 2] = []
    args[args.index("--max_train_steps") + 1] = "6"
    args[args.index("--dataloader_num_workers") + 1] = "2"
    run_train(args, env, root)

    assert not (out / "logs").exists()  # --report_to none: metrics.csv only
    adapters = load_state(out / "lora.ckpt")
    ups = {k: v for k, v in adapters.items() if k.endswith(".lora_up")}
    assert not any(k.endswith(".weight") for k in adapters)  # adapters only, no base weights
    unet_ups = [v for k, v in ups.items() if k.startswith("model.diffusion_model.")]
    text_ups = [v for k, v in ups.items() if k.startswith("cond_stage_model.")]
    assert unet_ups and text_ups
    # lora_up starts at zero: non-zero after training means gradients reached both towers.
    untrained = [k for k, v in ups.items() if not np.abs(v).max() > 0]
    assert not untrained, f"{len(untrained)} of {len(ups)} adapters never moved: {untrained[:6]}"

    def sample(name: str, *extra: str) -> np.ndarray:
        target = tmp_path / name
        proc = subprocess.run(
            [sys.executable, str(REPO / "examples" / "stable_diffusion_v2" / "text_to_image.py"),
             "--config", str(model_cfg), "--ckpt", str(run_a / "model.ckpt"), "--prompt", "a red square",
             "--steps", "2", "--mode", "pynative", "--output_dir", str(target), "--skip_grid", *extra],
            env=env, cwd=root, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return np.asarray(Image.open(target / "samples" / "00000.png"), dtype=np.int16)

    base = sample("base")
    with_lora = sample("lora", "--lora", str(out / "lora.ckpt"))
    merged = sample("merged", "--lora", str(out / "lora.ckpt"), "--lora_merge")
    assert np.abs(with_lora - base).max() > 0  # the adapters change the images
    assert np.abs(merged - with_lora).max() <= 1  # merging is the same function (uint8 rounding aside)


@pytest.mark.timeout(600)
def test_fp16_mixed_precision_with_dynamic_loss_scale(setup, tmp_path):
    """--mixed_precision fp16 in GRAPH_MODE: the loss scale is applied and reported, steps stay finite,
    the loss falls, and the exported master weights are float32."""
    root, data, model_cfg, env = setup
    out = tmp_path / "fp16"
    args = train_args(data, model_cfg, out, "--mixed_precision", "fp16", "--loss_scale", "1024",
                      "--loss_scale_window", "5")
    args[args.index("--max_train_steps") + 1] = "20"
    run_train(args, env, root)
    from mindone.train.metrics import read_metrics

    rows = read_metrics(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 21))
    scales = [float(r["loss_scale"]) for r in rows]
    assert scales[0] >= 1024 and max(scales) > 1024  # clean windows of 5 steps double the scale
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    first, last = np.mean([float(r["loss"]) for r in rows[:3]]), np.mean([float(r["loss"]) for r in rows[-3:]])
    assert last < first
    final = load_state(out / "model.ckpt")
    assert all(v.dtype == np.float32 for k, v in final.items() if k.startswith("model.diffusion_model."))


@pytest.mark.timeout(600)
def test_autoencoder_stage_then_unet_from_it(setup, tmp_path):
    """--train_target vae in GRAPH_MODE trains only the autoencoder (past step 18, where ops.pad's gradient
    once hung) and its reconstruction loss falls; a UNet run started from its model.ckpt keeps that VAE."""
    root, data, model_cfg, env = setup
    vae_out, unet_out = tmp_path / "vae", tmp_path / "unet"
    args = train_args(data, model_cfg, vae_out, "--train_target", "vae", "--lr_scheduler", "constant",
                      "--learning_rate", "3e-3")
    run_train(args, env, root)
    loss = read_loss(vae_out)
    assert sorted(loss) == list(range(1, STEPS + 1))
    start = np.mean([loss[s] for s in range(1, 5)])
    end = np.mean([loss[s] for s in range(STEPS - 4, STEPS + 1)])
    assert end < 0.75 * start, f"reconstruction loss did not fall: {start:.3f} -> {end:.3f}"
    assert not (vae_out / "samples").exists()  # validation samples need a trained UNet: skipped
    vae_final = load_state(vae_out / "model.ckpt")
    vae_state = load_state(vae_out / "checkpoints" / f"checkpoint-{STEPS}" / "train_state.ckpt")
    # EMA tracked the autoencoder's weights alone (every one of them).
    tracked = {k[len("ema."):] for k in vae_state if k.startswith("ema.")} & set(vae_final)
    assert tracked == {k for k in vae_final if k.startswith("first_stage_model.")}, sorted(tracked)[:5]

    # ldm's scale_by_std: the run wrote the model config with scale_factor = 1 / std of its latents.
    from mindone.models.config import load_model_config

    scaled = load_model_config(vae_out / "model_config.yaml")
    assert {**scaled, "scale_factor": None} == {**MICRO_MODEL, "scale_factor": None}
    assert 0.01 < scaled["scale_factor"] < 100 and scaled["scale_factor"] != MICRO_MODEL["scale_factor"]

    args = train_args(data, vae_out / "model_config.yaml", unet_out,
                      "--pretrained_model_path", str(vae_out / "model.ckpt"), "--prediction_type", "v_prediction",
                      "--zero_terminal_snr")
    args[args.index("--max_train_steps") + 1] = "3"
    run_train(args, env, root)
    # The config written beside the weights records what they were trained to predict, and on which schedule.
    trained = load_model_config(unet_out / "model_config.yaml")
    assert trained["parameterization"] == "v" and trained["zero_terminal_snr"] is True
    unet_final = load_state(unet_out / "model.ckpt")
    vae_keys = [k for k in vae_final if k.startswith("first_stage_model.")]
    assert all(np.array_equal(unet_final[k], vae_final[k]) for k in vae_keys)  # frozen, carried over
    unet_keys = [k for k in vae_final if k.startswith("model.diffusion_model.")]
    assert any(not np.array_equal(unet_final[k], vae_final[k]) for k in unet_keys)


@pytest.mark.timeout(600)
def test_aspect_ratio_buckets_train_in_graph_mode_with_one_graph_per_size(setup, tmp_path):
    """--aspect_ratio_buckets on webdataset shards of three aspect ratios: every batch has
    one bucket size, GRAPH_MODE compiles each size once, and the run trains and exports as usual."""
    from tests.helpers.synthetic_data import regular_member, write_dataset

    root, _, model_cfg, env = setup
    sizes = [(72, 36), (36, 72), (48, 48)]  # aspect 2, 1/2, 1: buckets 24x8, 8x24 and 16x16 at resolution 16
    members = [[regular_member(s, i, size=sizes[(s * 8 + i) % 3]) for i in range(8)] for s in range(2)]
    shards = write_dataset(tmp_path / "wds", members).root
    out = tmp_path / "bucket_run"
    args = train_args(shards, model_cfg, out, "--dataset_type", "webdataset", "--aspect_ratio_buckets",
                      "--bucket_step", "8", "--bucket_window", "4", "--report_to", "none")
    args[args.index("--max_train_steps") + 1] = "12"
    args[args.index("--train_batch_size") + 1] = "2"
    run_train(args, env, root)
    log = (out / "train.log").read_text()
    sizes = re.findall(r"batch size (\d+)x(\d+): compiling its train graph", log)
    assert sorted(sizes) == [("16", "16"), ("24", "8"), ("8", "24")]  # each bucket size compiled once
    loss = read_loss(out)
    assert sorted(loss) == list(range(1, 13)) and all(np.isfinite(v) for v in loss.values())
    assert (out / "model.ckpt").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["aspect_ratio_buckets"] is True
