"""Parity: tiny random diffusers / transformers models, converted by mindone.convert, give the same outputs.

The reference models are built with SD 2.x's block types (linear transformer projections, cross-attention
on a 77-token context, GELU OpenCLIP-style text tower), saved as a diffusers folder, loaded into the
MindSpore tiny model through ``load_sd_weights`` and compared in fp32 (max abs diff <= 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
ms = pytest.importorskip("mindspore")

from mindone.convert import load_sd_weights  # noqa: E402
from mindone.convert.diffusers_reference import build_reference_models  # noqa: E402
from mindone.models.config import build_model, load_model_config  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cfg = load_model_config("tiny")
    unet, vae, text = build_reference_models(cfg)
    folder = tmp_path_factory.mktemp("diffusers_tiny")
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae", safe_serialization=False)  # .bin: exercises the torch pickle path
    text.save_pretrained(folder / "text_encoder")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    model = build_model(cfg)
    report = load_sd_weights(model, folder)
    return model, (unet, vae, text), report


def test_report_lists_layout_and_counts(converted):
    model, _, report = converted
    assert report["layout"] == "diffusers"
    assert report["loaded"] == len(list(model.get_parameters()))
    assert all(not name.startswith(("unet/", "vae/")) for name in report["extra"])


def test_unet_matches_diffusers(converted):
    model, (unet, _, _), _ = converted
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    context = rng.standard_normal((2, 77, 32)).astype(np.float32)
    t = np.array([3, 801], np.int64)
    with torch.no_grad():
        expected = unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(context)).sample.numpy()
    got = model.apply_model(ms.Tensor(x), ms.Tensor(t.astype(np.int32)), ms.Tensor(context)).asnumpy()
    assert np.abs(expected).max() > 0.1  # a real signal, not two zero outputs
    assert np.abs(got - expected).max() <= ATOL


def test_vae_encode_and_decode_match_diffusers(converted):
    model, (_, vae, _), _ = converted
    rng = np.random.default_rng(1)
    images = rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    latents = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        posterior = vae.encode(torch.from_numpy(images)).latent_dist
        decoded = vae.decode(torch.from_numpy(latents)).sample.numpy()
    mean, logvar = model.first_stage_model.encode(ms.Tensor(images))
    assert np.abs(mean.asnumpy() - posterior.mean.numpy()).max() <= ATOL
    assert np.abs(logvar.asnumpy() - posterior.logvar.numpy()).max() <= ATOL
    got = model.first_stage_model.decode(ms.Tensor(latents)).asnumpy()
    assert np.abs(got - decoded).max() <= ATOL


def test_text_encoder_matches_clip_text_model_last_hidden_state(converted):
    """SD 2 (diffusers) runs a 23-layer CLIPTextModel and uses last_hidden_state (final norm applied):
    the same as ldm's penultimate OpenCLIP block + ln_final that the MindSpore encoder computes."""
    model, (_, _, text), _ = converted
    rng = np.random.default_rng(2)
    ids = np.zeros((3, 77), np.int64)
    for row, length in enumerate((5, 40, 75)):
        ids[row, 0] = 49406
        ids[row, 1:length + 1] = rng.integers(256, 49406, length)
        ids[row, length + 1] = 49407
    with torch.no_grad():
        expected = text(torch.from_numpy(ids)).last_hidden_state.numpy()
    got = model.encode_text(ms.Tensor(ids.astype(np.int32))).asnumpy()
    assert np.abs(got - expected).max() <= ATOL
