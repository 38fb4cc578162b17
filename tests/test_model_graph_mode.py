"""The UNet, text encoder and VAE compile in GRAPH_MODE on CPU and match PyNative."""

from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn  # noqa: E402

from mindone.models.config import build_model, load_model_config  # noqa: E402


class Decode(nn.Cell):
    def __init__(self, vae):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, z):
        return self.vae.decode(z)


@pytest.fixture
def graph_mode():
    previous = ms.get_context("mode")
    yield lambda: ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_context(mode=previous)


@pytest.mark.timeout(600)
def test_unet_text_encoder_and_vae_graph_mode_match_pynative(graph_mode):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(5)
    model = build_model(load_model_config("tiny"))
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    t = Tensor(np.array([17, 640], np.int32))
    ids = np.zeros((2, 77), np.int32)
    ids[:, :6] = [49406, 320, 1125, 539, 2368, 49407]
    ids = Tensor(ids)
    context_eager = model.encode_text(ids).asnumpy()
    out_eager = model.apply_model(x, t, Tensor(context_eager)).asnumpy()
    images_eager = model.first_stage_model.decode(x).asnumpy()

    graph_mode()
    unet = model.model.diffusion_model
    text = model.cond_stage_model
    context_graph = text(ids).asnumpy()
    out_graph = unet(x, t, Tensor(context_eager)).asnumpy()
    images_graph = Decode(model.first_stage_model)(x).asnumpy()
    assert ms.get_context("mode") == ms.GRAPH_MODE
    assert np.abs(out_eager).max() > 0.1
    np.testing.assert_allclose(out_graph, out_eager, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(context_graph, context_eager, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(images_graph, images_eager, atol=1e-5, rtol=1e-5)
