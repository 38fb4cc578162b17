"""Every tensor of the SD 2.x reference layouts through the converter, both directions, at full size.

A synthetic state dict in the reference shapes, float16: tensors up to 1M elements hold a pattern
that differs per tensor and per element; larger ones are zero-stride broadcasts of a per-tensor
constant (no memory) whose value identifies the tensor, so a swapped mapping is caught either way.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from mindone.convert.convert import to_ldm
from mindone.convert.name_maps import build_rules, legacy_vae_name
from mindone.models.config import load_model_config

BIG = 1 << 20
COMPONENT_FILES = {"unet": "diffusers_unet_v2.txt", "vae": "diffusers_vae_v2.txt",
                   "text_encoder": "diffusers_clip_v2.txt"}


def read_layout(path) -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in path.read_text().splitlines():
        name, size, _ = line.split("#")
        layout[name] = tuple(int(d) for d in re.fullmatch(r"torch\.Size\(\[(.*)\]\)", size).group(1).split(",")
                             if d.strip())
    return layout


def synthetic_state_dict(layout: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    tensors = {}
    for index, (name, shape) in enumerate(sorted(layout.items())):
        size = int(np.prod(shape))
        if size <= BIG:
            tensors[name] = ((np.arange(size, dtype=np.int64) * 7 + index) % 2039).astype(np.float16).reshape(shape)
        else:
            tensors[name] = np.broadcast_to(np.float16(index + 1), shape)  # exact in fp16 up to 2048
    return tensors


def assert_same_tensors(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        other = got[name]
        assert other.shape == array.shape and other.dtype == array.dtype, name
        if array.strides and array.strides[0] == 0:  # broadcast constant: its value identifies the tensor
            assert np.all(np.asarray(other).flat[:: max(1, other.size // 1000)] == array.flat[0]), name
        else:
            assert np.array_equal(other, array), name


@pytest.fixture(scope="module")
def layouts(reference_dir):
    ldm = read_layout(reference_dir / "original_ldm_v2.txt")
    diffusers = {f"{c}/{n}": s for c, f in COMPONENT_FILES.items() for n, s in read_layout(reference_dir / f).items()}
    return ldm, diffusers


@pytest.fixture(scope="module")
def ldm(layouts):
    return synthetic_state_dict(layouts[0])


@pytest.fixture(scope="module")
def model_cfg():
    return load_model_config("v2-base-512-eps")["model"]


def test_ldm_to_diffusers_covers_every_reference_tensor_with_its_shape(layouts, ldm, model_cfg):
    ldm_layout, diffusers_layout = layouts
    diffusers = {}
    for name, rule in build_rules(list(ldm_layout), model_cfg).items():
        for source, array in rule.inverse(ldm[name]).items():
            diffusers[legacy_vae_name(source)] = array
    assert len(diffusers) == len(diffusers_layout) == 1306
    assert {n: a.shape for n, a in diffusers.items()} == diffusers_layout


@pytest.mark.parametrize("legacy_vae_names", [True, False])
def test_diffusers_to_ldm_round_trip_is_exact(layouts, ldm, model_cfg, legacy_vae_names):
    ldm_layout, _ = layouts
    diffusers = {}
    for name, rule in build_rules(list(ldm_layout), model_cfg).items():
        for source, array in rule.inverse(ldm[name]).items():
            diffusers[legacy_vae_name(source) if legacy_vae_names else source] = array
    diffusers["text_encoder/text_model.embeddings.position_ids"] = np.arange(77)[None]
    back, extra = to_ldm(diffusers, "diffusers", ldm_layout, model_cfg, "synthetic")
    assert extra == ["text_encoder/text_model.embeddings.position_ids"]
    assert_same_tensors(back, ldm)


def test_vae_attention_is_reshaped_and_text_qkv_packed(layouts, model_cfg):
    ldm_layout, _ = layouts
    rules = build_rules(list(ldm_layout), model_cfg)
    q = rules["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert q.kind == "conv1x1" and q.sources == ("vae/encoder.mid_block.attentions.0.to_q.weight",)
    linear = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert np.array_equal(q.forward({q.sources[0]: linear}), linear[:, :, None, None])
    assert rules["first_stage_model.encoder.mid.attn_1.q.bias"].kind == "copy"
    packed = rules["cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight"]
    assert packed.sources == tuple(f"text_encoder/text_model.encoder.layers.22.self_attn.{p}_proj.weight"
                                   for p in "qkv")
    parts = {s: np.full((2, 3), i, np.float32) for i, s in enumerate(packed.sources)}
    assert np.array_equal(packed.forward(parts)[:, 0], [0, 0, 1, 1, 2, 2])



def test_every_reference_tensor_through_files_bit_exact(layouts, ldm, tmp_path):
    """original .safetensors -> MindSpore .ckpt -> original .safetensors keeps all 1214 tensors bit-exact.

    Full-size shapes for tensors up to 1M elements; larger ones keep their leading dimension only, to
    keep this fast. The full shapes go through the same code in the in-memory tests above, and full-size
    files (5.2 GB) through tests/test_convert_fullsize.py (slow).
    """
    pytest.importorskip("mindspore")
    from mindone.convert.convert import save_ldm_safetensors, save_mindspore_checkpoint
    from mindone.convert.safetensors_io import read_safetensors
    from mindone.convert.sources import read_source

    small = {n: (a if a.size <= BIG else np.ascontiguousarray(a[:, :1] if a.ndim > 1 else a[:BIG]))
             for n, a in ldm.items()}
    source, ckpt, back = tmp_path / "sd.safetensors", tmp_path / "sd.ckpt", tmp_path / "back.safetensors"
    save_ldm_safetensors(small, source)
    tensors, layout = read_source(source)
    assert layout == "ldm"
    save_mindspore_checkpoint(tensors, ckpt)
    restored, layout = read_source(ckpt)
    assert layout == "ldm" and len(restored) == 1214
    save_ldm_safetensors(restored, back)
    assert_same_tensors(read_safetensors(back), small)
    assert back.read_bytes() == source.read_bytes()
