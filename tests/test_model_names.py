"""The full-size SD 2.x models carry exactly the original checkpoint's tensor names and shapes."""

from __future__ import annotations

import re

import pytest

ms = pytest.importorskip("mindspore")
from mindspore.nn.utils import no_init_parameters  # noqa: E402

from mindone.models.config import build_model, load_model_config  # noqa: E402


def read_layout(path) -> dict[str, tuple[int, ...]]:
    """`name#torch.Size([d0, d1])#dtype` lines -> {name: shape}."""
    layout = {}
    for line in path.read_text().splitlines():
        name, size, _ = line.split("#")
        dims = re.fullmatch(r"torch\.Size\(\[(.*)\]\)", size).group(1)
        layout[name] = tuple(int(d) for d in dims.split(",") if d.strip())
    return layout


@pytest.fixture(scope="module")
def full_model():
    with no_init_parameters():  # shapes and names only: no 5 GB of random weights
        return build_model(load_model_config("v2-base-512-eps"))


def test_full_size_names_and_shapes_equal_original_layout(full_model, reference_dir):
    expected = read_layout(reference_dir / "original_ldm_v2.txt")
    assert len(expected) == 1214
    got = {name: tuple(p.shape) for name, p in full_model.parameters_and_names()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {n: s for n, s in got.items() if s != expected[n]} == {}
    # Parameter.name (what save_checkpoint writes) is the same full name.
    assert {p.name for p in full_model.get_parameters()} == set(expected)


def test_component_parameter_counts(full_model):
    def count(cell) -> int:
        return sum(int(p.size) for p in cell.get_parameters())

    assert count(full_model.model.diffusion_model) == 865_910_724
    assert count(full_model.first_stage_model) == 83_653_863
    # 23 blocks of 12.6M + embeddings + ln_final
    assert count(full_model.cond_stage_model) == 49408 * 1024 + 77 * 1024 + 23 * 12_596_224 + 2 * 1024


def test_768_v_config_has_same_layout_and_v_parameterization(full_model):
    cfg = load_model_config("v2-768-v")
    assert cfg["parameterization"] == "v" and cfg["image_size"] == 768
    assert cfg["model"] == load_model_config("v2-base-512-eps")["model"]
    with no_init_parameters():
        model = build_model(cfg)
    assert model.parameterization == "v"
    assert {n: p.shape for n, p in model.parameters_and_names()} == {
        n: p.shape for n, p in full_model.parameters_and_names()}
