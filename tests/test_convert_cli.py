"""convert_weights.py end to end on the tiny config: original .ckpt / .safetensors -> MindSpore -> back."""

from __future__ import annotations

import argparse
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindone.convert import load_sd_weights  # noqa: E402
from mindone.convert.safetensors_io import read_safetensors, write_safetensors  # noqa: E402
from mindone.errors import CheckpointError  # noqa: E402
from mindone.models.config import build_model, load_model_config  # noqa: E402
from mindone.utils.cli import ONE_LINE_ERRORS, UserError  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "model_conversion" / "convert_weights.py"
CONVERT_WEIGHTS = runpy.run_path(str(SCRIPT))  # the script's globals: it is a script, not a module
main = CONVERT_WEIGHTS["main"]

# what released SD 2.x files carry beyond the model: EMA copies, OpenCLIP's last block and heads
EXTRAS = {"model_ema.decay": np.array(0.9999, np.float32), "model_ema.num_updates": np.array(10, np.int32),
          "model_ema.diffusion_modeltime_embed0weight": np.zeros((4, 4), np.float32),
          "cond_stage_model.model.transformer.resblocks.2.ln_1.weight": np.ones(32, np.float32),
          "cond_stage_model.model.text_projection": np.zeros((32, 32), np.float32),
          "cond_stage_model.model.logit_scale": np.array(4.6, np.float32),
          "betas": np.linspace(1e-4, 2e-2, 1000)}


@pytest.fixture(scope="module")
def tiny_state():
    ms.set_seed(3)
    model = build_model(load_model_config("tiny"))
    return {name: p.asnumpy() for name, p in model.parameters_and_names()}


def fresh_tiny():
    ms.set_seed(99)
    return build_model(load_model_config("tiny"))


def test_safetensors_to_mindspore_and_back_with_extras(tiny_state, tmp_path, caplog):
    source, ckpt, back = tmp_path / "sd.safetensors", tmp_path / "sd.ckpt", tmp_path / "back.safetensors"
    write_safetensors(source, {**tiny_state, **EXTRAS})
    caplog.set_level("INFO")
    assert main(["--source", str(source), "--target", str(ckpt), "--config", "tiny"]) == 0
    assert "skipped 7 tensors the model does not use" in caplog.text and "model_ema.* (3)" in caplog.text
    assert caplog.text.count("skipped 7") == 1  # once, by read_as_ldm; the script does not repeat it
    model = fresh_tiny()
    report = load_sd_weights(model, ckpt)
    assert report["layout"] == "ldm" and report["loaded"] == len(tiny_state) and report["extra"] == []
    assert all(np.array_equal(p.asnumpy(), tiny_state[n]) for n, p in model.parameters_and_names())
    assert main(["--source", str(ckpt), "--target", str(back), "--config", "tiny"]) == 0
    restored = read_safetensors(back)
    assert sorted(restored) == sorted(tiny_state)
    assert all(np.array_equal(restored[n], a) and restored[n].dtype == a.dtype for n, a in tiny_state.items())


@pytest.mark.torch
def test_original_torch_ckpt_through_the_script(tiny_state, tmp_path):
    torch = pytest.importorskip("torch")
    state = {n: torch.from_numpy(np.array(a)) for n, a in {**tiny_state, **EXTRAS}.items()}
    source, target = tmp_path / "v2-tiny.ckpt", tmp_path / "ms.ckpt"
    torch.save({"state_dict": state, "global_step": 1000, "epoch": 3}, source)
    run = subprocess.run([sys.executable, str(SCRIPT), "--source", str(source), "--target", str(target),
                          "--config", "tiny", "--dtype", "fp16"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stderr and run.stderr.count("skipped 7") == 1
    model = fresh_tiny()
    report = load_sd_weights(model, source)  # the original .ckpt loads directly too
    assert sorted(report["extra"]) == sorted(EXTRAS)
    converted = ms.load_checkpoint(str(target))
    for name, param in model.parameters_and_names():
        assert converted[name].dtype == ms.float16
        np.testing.assert_array_equal(converted[name].asnumpy(), tiny_state[name].astype(np.float16))
        assert np.array_equal(param.asnumpy(), tiny_state[name])


def test_missing_tensors_stop_with_the_list_and_write_nothing(tiny_state, tmp_path):
    partial = {n: a for n, a in tiny_state.items() if ".mid.attn_1." not in n}
    write_safetensors(tmp_path / "partial.safetensors", partial)
    target = tmp_path / "out.ckpt"
    with pytest.raises(ONE_LINE_ERRORS, match=r"20 tensors missing: first_stage_model\.decoder\.mid\.attn_1\.k\.bias"):
        main(["--source", str(tmp_path / "partial.safetensors"), "--target", str(target), "--config", "tiny"])
    assert not target.exists() and list(tmp_path.iterdir()) == [tmp_path / "partial.safetensors"]
    model = fresh_tiny()
    before = {n: p.asnumpy().copy() for n, p in model.parameters_and_names()}
    with pytest.raises(CheckpointError, match="tensors missing"):
        load_sd_weights(model, tmp_path / "partial.safetensors")
    assert all(np.array_equal(p.asnumpy(), before[n]) for n, p in model.parameters_and_names())


def test_wrong_config_reports_missing_blocks(tiny_state, tmp_path):
    write_safetensors(tmp_path / "tiny.safetensors", tiny_state)
    argv = ["--source", str(tmp_path / "tiny.safetensors"), "--target", str(tmp_path / "o.ckpt")]
    with pytest.raises(ONE_LINE_ERRORS, match=r"540 tensors missing \(a different architecture\? check the model config\)"
                                              r": cond_stage_model.model.transformer.resblocks.10.\* \(12\)") as err:
        main(argv)
    summary = str(err.value)
    assert re.search(r" and \d+ more \(run with debug logging \(-v / --verbose\) to log every name\)$", summary)
    assert "output_blocks" not in summary  # beyond the 12 groups shown

    # -v: the error line says where the list is, and every missing name is in the log above it
    run = subprocess.run([sys.executable, str(SCRIPT), *argv, "-v"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert "540 tensors missing" in lines[-1] and re.search(r" and \d+ more \(every name is logged above\)$", lines[-1])
    header = next(i for i, line in enumerate(lines) if "all 540 missing tensors:" in line)
    listed = [line.strip() for line in lines[header + 1: header + 541]]
    assert len(set(listed)) == 540 and not set(listed) & set(tiny_state)
    assert "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight" in listed


def test_cli_argument_errors_are_one_line(tmp_path):
    existing = tmp_path / "exists.ckpt"
    existing.write_bytes(b"keep me")
    source = tmp_path / "source.safetensors"
    source.write_bytes(b"source bytes")
    run = subprocess.run([sys.executable, str(SCRIPT), "--source", str(source), "--target", str(existing)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and existing.read_bytes() == b"keep me"
    assert run.stderr.strip().count("\n") == 0 and "already exists (pass --overwrite" in run.stderr
    for argv in (["--target", str(source)], ["--target", str(source), "--overwrite"], ["--overwrite"]):
        # naming the source as the output (explicitly, or by the default name) never touches it
        with pytest.raises(UserError, match="is the source itself"):
            main(["--source", str(source), *argv])
    assert source.read_bytes() == b"source bytes"
    with pytest.raises(UserError, match=r"--target \(default\) .*exists\.safetensors: already exists"):
        (tmp_path / "exists.safetensors").write_bytes(b"")
        main(["--source", str(existing)])
    with pytest.raises(UserError, match="must end in .safetensors"):
        main(["--source", str(existing), "--target", str(tmp_path / "x.pt")])
    with pytest.raises(ONE_LINE_ERRORS, match="no such file or directory"):
        main(["--source", str(tmp_path / "nope"), "--target", str(tmp_path / "x.ckpt")])
    (tmp_path / "junk.ckpt").write_bytes(b"\x00garbage")
    # the reason, not a format guess: where the bytes stop making sense as a checkpoint
    with pytest.raises(ONE_LINE_ERRORS, match=r"junk\.ckpt: not a readable MindSpore checkpoint \(byte 0: field number 0 "
                                              r"\(not a protobuf message\)\); not a torch zip checkpoint either$"):
        main(["--source", str(tmp_path / "junk.ckpt"), "--target", str(tmp_path / "x.ckpt"), "--config", "tiny"])


def test_build_parser_exposes_every_flag_and_parse_args_uses_it():
    build_parser, parse_args = CONVERT_WEIGHTS["build_parser"], CONVERT_WEIGHTS["parse_args"]
    parser = build_parser()
    assert isinstance(parser, argparse.ArgumentParser) and build_parser() is not parser
    flags = {flag for action in parser._actions for flag in action.option_strings}
    assert flags == {"-h", "--help", "--options", "--source", "--target", "--config", "--dtype", "--use_ema",
                     "--overwrite", "-v", "--verbose"}
    assert all(action.help for action in parser._actions)
    argv = ["--source", "in.ckpt", "--target", "out.safetensors"]
    assert vars(parse_args(argv)) == vars(parser.parse_args(argv)) == {
        "options": None, "source": "in.ckpt", "target": "out.safetensors", "config": "v2-base-512-eps",
        "dtype": "keep", "use_ema": False, "overwrite": False, "verbose": False}
    assert parse_args(["--source", "in.ckpt"]).target is None  # convert_weights picks <source>.safetensors


def test_use_ema_takes_ldm_and_mindone_ema_copies(tiny_state, tmp_path):
    unet_names = [n for n in tiny_state if n.startswith("model.diffusion_model.")]
    ldm_ema = {"model_ema." + n[len("model."):].replace(".", ""): tiny_state[n] + 1 for n in unet_names}
    text_name = "cond_stage_model.model.ln_final.weight"
    source = tmp_path / "ema.safetensors"
    write_safetensors(source, {**tiny_state, **ldm_ema, f"ema.{text_name}": tiny_state[text_name] * 3,
                               "model_ema.num_updates": np.array(3, np.int32)})
    model = fresh_tiny()
    report = load_sd_weights(model, source, use_ema=True)
    assert report["extra"] == ["model_ema.num_updates"]
    params = dict(model.parameters_and_names())
    for name, array in tiny_state.items():
        expected = array + 1 if name in unet_names else array * 3 if name == text_name else array
        np.testing.assert_array_equal(params[name].asnumpy(), expected)
    assert load_sd_weights(fresh_tiny(), source)["extra"] == sorted([*ldm_ema, f"ema.{text_name}",
                                                                      "model_ema.num_updates"])
    write_safetensors(tmp_path / "plain.safetensors", tiny_state)
    with pytest.raises(ONE_LINE_ERRORS, match="no EMA weights"):
        main(["--source", str(tmp_path / "plain.safetensors"), "--target", str(tmp_path / "x.ckpt"),
              "--config", "tiny", "--use_ema"])


def test_diffusers_folder_variants_sharded_fp16_and_legacy_vae_names(tiny_state, tmp_path):
    """A diffusers folder as found in the wild: sharded UNet, fp16-variant VAE with old attention names."""
    import json

    from mindone.convert.name_maps import build_rules, legacy_vae_name

    components: dict[str, dict[str, np.ndarray]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    for name, rule in build_rules(list(tiny_state), load_model_config("tiny")["model"]).items():
        for source, array in rule.inverse(tiny_state[name]).items():
            component, key = legacy_vae_name(source).split("/", 1)
            components[component][key] = array
    folder = tmp_path / "sd-tiny"
    unet_keys = sorted(components["unet"])
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": unet_keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": unet_keys[1::2]}
    for shard, keys in shards.items():
        write_safetensors(folder / "unet" / shard, {k: components["unet"][k] for k in keys})
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    vae16 = {k: a.astype(np.float16) for k, a in components["vae"].items()}
    assert any(k.endswith("attentions.0.query.weight") for k in vae16)
    write_safetensors(folder / "vae" / "diffusion_pytorch_model.fp16.safetensors", vae16)
    write_safetensors(folder / "text_encoder" / "model.safetensors", components["text_encoder"])
    model = fresh_tiny()
    report = load_sd_weights(model, folder)
    assert report["layout"] == "diffusers" and report["extra"] == []
    for name, param in model.parameters_and_names():
        expected = tiny_state[name].astype(np.float16).astype(np.float32) if name.startswith("first_stage_model.") \
            else tiny_state[name]
        np.testing.assert_array_equal(param.asnumpy(), expected)
    (folder / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(CheckpointError, match="vae: no weights file"):
        load_sd_weights(fresh_tiny(), folder)


@pytest.mark.torch
def test_diffusers_folder_through_the_script(tmp_path, caplog):
    """convert_weights.py --source <diffusers folder> on a folder written by diffusers/transformers themselves."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from mindone.convert.diffusers_reference import build_reference_models
    from mindone.convert.name_maps import build_rules

    cfg = load_model_config("tiny")
    unet, vae, text = build_reference_models(cfg, seed=5)
    folder = tmp_path / "sd-tiny-diffusers"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae", safe_serialization=False)  # .bin: the torch pickle path, via the CLI
    text.save_pretrained(folder / "text_encoder")
    reference = {f"{c}/{k}": v.detach().numpy() for c, m in (("unet", unet), ("vae", vae), ("text_encoder", text))
                 for k, v in m.state_dict().items()}
    target = tmp_path / "x.ckpt"
    caplog.set_level("INFO")
    assert main(["--source", str(folder), "--target", str(target), "--config", "tiny"]) == 0
    assert "(diffusers layout)" in caplog.text
    converted = {n: p.asnumpy() for n, p in ms.load_checkpoint(str(target)).items()}
    expected_names = [n for n, _ in fresh_tiny().parameters_and_names()]
    assert sorted(converted) == sorted(expected_names)
    # back through the inverse tables, every converted tensor is exactly the diffusers one it came from
    used = set()
    for name, rule in build_rules(expected_names, cfg["model"]).items():
        for source, array in rule.inverse(converted[name]).items():
            assert array.dtype == reference[source].dtype and np.array_equal(array, reference[source]), source
            used.add(source)
    assert all(n.endswith("position_ids") for n in set(reference) - used)  # (older transformers save it)


def test_a_failed_write_is_one_line_with_the_reason(tiny_state, tmp_path, monkeypatch):
    import errno

    import mindone.convert.convert as convert_module

    write_safetensors(tmp_path / "tiny.safetensors", tiny_state)

    def disk_full(path, tensors, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert_module, "write_safetensors", disk_full)
    with pytest.raises(UserError, match=r"--target .*out\.safetensors: cannot write \(No space left on device\)$"):
        main(["--source", str(tmp_path / "tiny.safetensors"), "--target", str(tmp_path / "out.safetensors"),
              "--config", "tiny"])
