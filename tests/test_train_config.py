"""Config: yaml defaults, flags override, resolved config saved and reloadable, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mindone.train.options import TRAIN_OPTIONS
from mindone.errors import ConfigError
from mindone.utils.config import resolve_config, save_config

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "stable_diffusion_v2" / "train_text_to_image.py"


def resolve(argv):
    return resolve_config(TRAIN_OPTIONS, argv, "test")


def test_defaults_then_yaml_then_flags(tmp_path):
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(yaml.safe_dump({"learning_rate": 2e-5, "train_batch_size": 3, "use_ema": True,
                                   "validation_prompts": ["a cat", "a dog"], "snr_gamma": 5}))
    args = resolve(["--config", str(cfg), "--train_batch_size", "7", "--use_ema", "false"])
    assert args.learning_rate == 2e-5  # yaml over default
    assert args.train_batch_size == 7  # flag over yaml
    assert args.use_ema is False  # bool flag with a value
    assert args.validation_prompts == ["a cat", "a dog"]
    assert args.snr_gamma == 5.0 and isinstance(args.snr_gamma, float)
    assert args.gradient_accumulation_steps == 1  # untouched default
    assert resolve(["--use_lora"]).use_lora is True  # bare bool flag
    assert resolve(["--validation_prompts", "x", "y z"]).validation_prompts == ["x", "y z"]


def test_resolved_config_round_trips(tmp_path):
    args = resolve(["--data_path", "/data", "--mixed_precision", "bf16", "--validation_prompts", "a cat",
                    "--max_train_steps", "9"])
    saved = save_config(args, TRAIN_OPTIONS, tmp_path / "out" / "config.yaml")
    again = resolve(["--config", str(saved)])
    for opt in TRAIN_OPTIONS:
        assert getattr(again, opt.name) == getattr(args, opt.name), opt.name
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("content, message", [
    ({"learning_rat": 1e-4}, "unknown key 'learning_rat'"),
    ({"train_batch_size": "big"}, "key 'train_batch_size': expected int"),
    ({"train_batch_size": 2.5}, "key 'train_batch_size': expected int"),
    ({"mixed_precision": "fp8"}, "key 'mixed_precision': 'fp8' is not one of"),
    ({"use_ema": "maybe"}, "key 'use_ema': expected bool"),
    (["not", "a", "mapping"], "expected a mapping"),
])
def test_bad_yaml_is_one_clear_error(tmp_path, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        resolve(["--config", str(cfg)])


def test_missing_or_invalid_config_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        resolve(["--config", str(tmp_path / "nope.yaml")])
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid yaml"):
        resolve(["--config", str(broken)])


def test_recipes_in_repo_load():
    recipes = sorted((REPO / "configs" / "train").glob("*.yaml"))
    assert len(recipes) >= 3
    for recipe in recipes:
        args = resolve(["--config", str(recipe)])
        assert args.model_config and args.output_dir


@pytest.mark.parametrize("flags, message", [
    ([], "--data_path: required"),
    (["--data_path", "d", "--train_batch_size", "0"], "--train_batch_size 0: must be at least 1"),
    (["--data_path", "d", "--caption_dropout", "1.5"], "--caption_dropout 1.5"),
    (["--data_path", "d", "--use_lora", "--train_text_encoder"], "--lora_text_encoder"),
    (["--data_path", "d", "--lr_scheduler", "linear"], "invalid choice"),
    (["--data_path", "d", "--zero_terminal_snr"], "--zero_terminal_snr: zero_terminal_snr needs parameterization 'v'"),
    (["--data_path", "d", "--input_perturbation", "-0.1"], "--input_perturbation -0.1: must be 0 (off) or positive"),
    (["--data_path", "d", "--train_target", "vae", "--gradient_checkpointing"], "apply to the UNet"),
    (["--data_path", "d", "--report_to", "wandb"], "invalid choice"),
    (["--data_path", "d", "--aspect_ratio_buckets", "--bucket_step", "32"], "--bucket_step 32: bucket sides must be "
     "multiples of 64 for v2-base-512-eps"),
    (["--data_path", "d", "--aspect_ratio_buckets", "--dataset_type", "latents"], "cached latents have one fixed size"),
])
def test_cli_rejects_bad_flags_with_one_line(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "out"), *flags],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are checked


def test_loader_flags_reach_the_data_stream(tmp_path):
    import importlib.util

    from mindone.data.loader import build_sample_stream, steps_per_epoch
    from tests.helpers.synthetic_data import fake_tokenizer, make_clean_dataset

    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = make_clean_dataset(tmp_path, num_shards=2, per_shard=6)
    args = resolve(["--data_path", str(tmp_path), "--resolution", "32", "--train_batch_size", "2",
                    "--filter_min_aesthetic", "5", "--filter_max_watermark", "0.8", "--uneven_policy", "drop",
                    "--shuffle_buffer", "3", "--shard_root", str(tmp_path)])
    options = script.data_config(args, rank=0, world_size=1)
    assert options["filters"] == {"min_aesthetic": 5.0, "max_pwatermark": 0.8}  # the old flag name, read as the new
    assert (options["uneven"], options["shuffle_buffer"], options["shard_root"]) == ("drop", 3, str(tmp_path))
    assert (options["rank"], options["world_size"], options["random_crop"]) == (0, 1, True)  # no --center_crop
    options.update(num_workers=0)
    stream = build_sample_stream(tokenizer=fake_tokenizer, **options)
    meta = {m.key: m.meta for shard in data.shards for m in shard}
    keys = [x["key"] for x in stream]
    assert keys and all(meta[k]["AESTHETIC_SCORE"] >= 5 and meta[k]["pwatermark"] <= 0.8 for k in keys)
    # The trainer's step count comes from the same config's epoch plan, without opening a shard.
    assert steps_per_epoch(**options) == stream.steps_per_epoch == len(keys) // 2
