"""Diffusers folders: index files may only name weights inside the folder; transformers 4 and 5 text
encoder names both convert."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindone.convert import load_sd_weights  # noqa: E402
from mindone.convert.name_maps import build_rules  # noqa: E402
from mindone.convert.safetensors_io import read_safetensors, write_safetensors  # noqa: E402
from mindone.errors import CheckpointError  # noqa: E402
from mindone.models.config import build_model, load_model_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_state():
    ms.set_seed(11)
    return {name: p.asnumpy() for name, p in build_model(load_model_config("tiny")).parameters_and_names()}


def fresh_tiny():
    ms.set_seed(99)
    return build_model(load_model_config("tiny"))


def write_diffusers_folder(folder, state) -> None:
    """The tiny weights as a diffusers folder, the UNet sharded in two with an index file."""
    components: dict[str, dict[str, np.ndarray]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    for name, rule in build_rules(list(state), load_model_config("tiny")["model"]).items():
        for source, array in rule.inverse(state[name]).items():
            component, key = source.split("/", 1)
            components[component][key] = array
    keys = sorted(components["unet"])
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        write_safetensors(folder / "unet" / shard, {k: components["unet"][k] for k in names})
    write_index(folder, {k: shard for shard, names in shards.items() for k in names})
    write_safetensors(folder / "vae" / "diffusion_pytorch_model.safetensors", components["vae"])
    write_safetensors(folder / "text_encoder" / "model.safetensors", components["text_encoder"])


def write_index(folder, weight_map) -> None:
    (folder / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def assert_loaded(model, state) -> None:
    assert all(np.array_equal(p.asnumpy(), state[n]) for n, p in model.parameters_and_names())


@pytest.fixture()
def outside(tmp_path):
    """A FIFO outside the model folder: opening it for reading would block, so a test that finishes
    (under its timeout) proves the loader never opened it."""
    path = tmp_path / "other" / "x.safetensors"
    path.parent.mkdir()
    os.mkfifo(path)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ["../../other/x.safetensors", "ABSOLUTE", "sub/../../../other/x.safetensors"])
def test_index_entries_leading_out_of_the_folder_are_refused(tiny_state, tmp_path, outside, entry):
    folder = tmp_path / "model"
    write_diffusers_folder(folder, tiny_state)
    entry = str(outside) if entry == "ABSOLUTE" else entry
    assert (folder / "unet" / entry).resolve() == outside.resolve()  # the entry really names the FIFO
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    write_index(folder, {**weight_map, "conv_in.weight": entry})
    with pytest.raises(CheckpointError, match=rf"^{index}: weight_map entry '{entry}': names a file outside the model "
                                              r"folder \(absolute path or '\.\.'\); refused$"):
        load_sd_weights(fresh_tiny(), folder)


@pytest.mark.timeout(60)
def test_symlinks_pointing_out_of_the_folder_are_refused(tiny_state, tmp_path, outside):
    folder = tmp_path / "model"
    write_diffusers_folder(folder, tiny_state)
    (folder / "unet" / "extra.safetensors").symlink_to(outside)
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    write_index(folder, {**json.loads(index.read_text())["weight_map"], "conv_in.weight": "extra.safetensors"})
    with pytest.raises(CheckpointError, match=rf"^{index}: weight_map entry 'extra.safetensors': resolves to {outside}, "
                                              r"outside the model folder \(a symlink pointing out\?\); refused$"):
        load_sd_weights(fresh_tiny(), folder)
    # the single weights file of a component is held to the same rule
    text = folder / "text_encoder" / "model.safetensors"
    elsewhere = tmp_path / "elsewhere.safetensors"
    shutil.move(text, elsewhere)
    text.symlink_to(elsewhere)
    write_index(folder, {k: v for k, v in json.loads(index.read_text())["weight_map"].items()
                         if v != "extra.safetensors"})
    with pytest.raises(CheckpointError, match=r"text_encoder/model\.safetensors: resolves to .*elsewhere\.safetensors, "
                                              "outside the model folder"):
        load_sd_weights(fresh_tiny(), folder)


def test_a_hugging_face_cache_snapshot_with_blob_symlinks_loads(tiny_state, tmp_path):
    """The hub cache keeps files in models--org--name/blobs and symlinks them from snapshots/<rev>/."""
    plain = tmp_path / "plain"
    write_diffusers_folder(plain, tiny_state)
    repo = tmp_path / "hub" / "models--org--sd-tiny"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    for index, path in enumerate(sorted(p for p in plain.rglob("*") if p.is_file())):
        blob = repo / "blobs" / f"blob{index}"
        shutil.copy(path, blob)
        link = snapshot / path.relative_to(plain)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    model = fresh_tiny()
    assert load_sd_weights(model, snapshot)["layout"] == "diffusers"
    assert_loaded(model, tiny_state)


def test_a_malformed_index_is_one_line_naming_it(tiny_state, tmp_path):
    folder = tmp_path / "model"
    write_diffusers_folder(folder, tiny_state)
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"conv_in.weight": 7}}))
    with pytest.raises(CheckpointError, match=rf"^{index}: weight_map entry 'conv_in.weight' does not name a file$"):
        load_sd_weights(fresh_tiny(), folder)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match=rf"^{index}: not a readable weights index \(JSONDecodeError"):
        load_sd_weights(fresh_tiny(), folder)


def test_text_encoder_names_without_the_text_model_prefix_load(tiny_state, tmp_path):
    """transformers 5 writes CLIPTextModel tensors as encoder.layers.* (no text_model. prefix)."""
    folder = tmp_path / "v5"
    write_diffusers_folder(folder, tiny_state)
    text = folder / "text_encoder" / "model.safetensors"
    tensors = {k: np.array(v) for k, v in read_safetensors(text).items()}
    write_safetensors(text, {k.removeprefix("text_model."): v for k, v in tensors.items()})
    assert not any(k.startswith("text_model.") for k in read_safetensors(text))
    model = fresh_tiny()
    assert load_sd_weights(model, folder)["extra"] == []
    assert_loaded(model, tiny_state)


@pytest.mark.torch
def test_transformers_4_and_5_text_encoder_saves_convert_alike(tmp_path):
    """A folder saved by diffusers + transformers 4, and the same folder with its text encoder renamed
    the way transformers 5 saves it: both load into the same weights."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from mindone.convert.diffusers_reference import build_reference_models

    assert transformers.__version__.startswith("4.")  # the 4.x naming comes from a real save
    unet, vae, text = build_reference_models(load_model_config("tiny"), seed=8)
    v4 = tmp_path / "saved-by-4"
    unet.save_pretrained(v4 / "unet")
    vae.save_pretrained(v4 / "vae")
    text.save_pretrained(v4 / "text_encoder")
    saved = read_safetensors(v4 / "text_encoder" / "model.safetensors")
    assert all(k.startswith("text_model.") for k in saved)
    v5 = tmp_path / "renamed-as-5"
    shutil.copytree(v4, v5)
    write_safetensors(v5 / "text_encoder" / "model.safetensors",
                      {k.removeprefix("text_model."): np.array(v) for k, v in saved.items()})
    loaded = []
    for folder in (v4, v5):
        model = fresh_tiny()
        load_sd_weights(model, folder)
        loaded.append({n: p.asnumpy() for n, p in model.parameters_and_names()})
    reference = {k: v.detach().numpy() for k, v in text.state_dict().items()}
    ln_final = loaded[0]["cond_stage_model.model.ln_final.weight"]
    assert np.array_equal(ln_final, reference["text_model.final_layer_norm.weight"])
    assert all(np.array_equal(loaded[0][n], loaded[1][n]) for n in loaded[0])
