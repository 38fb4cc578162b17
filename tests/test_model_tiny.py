"""Behaviour of the MindSpore SD 2.x networks on the tiny config (PyNative, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor  # noqa: E402

from mindone.errors import ConfigError  # noqa: E402
from mindone.models.attention import attention  # noqa: E402
from mindone.models.config import build_model, load_model_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(0)
    return build_model(load_model_config("tiny"))


def test_unet_output_shape_and_dependence_on_inputs(tiny):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 4, 8, 8)).astype(np.float32))
    ctx = Tensor(rng.standard_normal((2, 77, 32)).astype(np.float32))
    t = Tensor(np.array([1, 999], np.int32))
    out = tiny.apply_model(x, t, ctx).asnumpy()
    assert out.shape == (2, 4, 8, 8) and out.dtype == np.float32 and np.isfinite(out).all()
    # timesteps and context both change the prediction; float timesteps are accepted
    out_t = tiny.apply_model(x, Tensor(np.array([500.0, 999.0], np.float32)), ctx).asnumpy()
    out_c = tiny.apply_model(x, t, ctx * 2).asnumpy()
    assert np.abs(out_t[0] - out[0]).max() > 1e-4 and np.abs(out_t[1] - out[1]).max() < 1e-5
    assert np.abs(out_c - out).max() > 1e-4


def test_text_encoder_is_causal(tiny):
    ids = np.zeros((2, 77), np.int32)
    ids[:, 0] = 49406
    ids[:, 1:6] = [320, 1125, 539, 320, 2368]
    ids[1, 4] = 1929  # differ only at position 4
    ctx = tiny.encode_text(Tensor(ids)).asnumpy()
    assert ctx.shape == (2, 77, 32)
    np.testing.assert_allclose(ctx[0, :4], ctx[1, :4], atol=1e-6)
    assert np.abs(ctx[0, 4:] - ctx[1, 4:]).max() > 1e-3
    # ln_final output: zero mean per token (affine is identity at init)
    np.testing.assert_allclose(ctx.mean(-1), 0, atol=1e-5)


def test_vae_encode_decode_and_latent_scaling(tiny):
    rng = np.random.default_rng(1)
    img = Tensor(rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32))
    mean, logvar = tiny.first_stage_model.encode(img)
    assert mean.shape == (1, 4, 8, 8) and logvar.shape == (1, 4, 8, 8)
    z_mean = tiny.encode_images(img).asnumpy()
    np.testing.assert_allclose(z_mean, mean.asnumpy() * 0.18215, rtol=1e-6, atol=1e-7)
    noise = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    z = tiny.encode_images(img, Tensor(noise)).asnumpy()
    expected = (mean.asnumpy() + np.exp(0.5 * logvar.asnumpy()) * noise) * 0.18215
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    images = tiny.decode_latents(Tensor(z)).asnumpy()
    assert images.shape == (1, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    raw = tiny.first_stage_model.decode(Tensor(z / 0.18215)).asnumpy()
    np.testing.assert_allclose(images, np.clip(raw, -1, 1), atol=1e-6)


def test_attention_scores_in_fp32_do_not_overflow_in_fp16():
    rng = np.random.default_rng(2)
    # q.k reaches ~2 * 64 * 32 * 32 > 65504: an fp16 score matmul overflows to inf (NaN probabilities).
    q = rng.uniform(30, 32, (1, 16, 64)).astype(np.float16)
    k = rng.uniform(30, 32, (1, 16, 64)).astype(np.float16)
    q[0, 0] *= 2
    v = rng.standard_normal((1, 16, 64)).astype(np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(q[0] @ k[0].T).any()  # the premise: fp16 scores overflow
    out16 = attention(Tensor(q), Tensor(k), Tensor(v), 1)
    assert out16.dtype == ms.float16
    f32 = [Tensor(a.astype(np.float32)) for a in (q, k, v)]
    ref = attention(*f32, 1).asnumpy()
    out16 = out16.asnumpy().astype(np.float32)
    assert np.isfinite(out16).all()
    np.testing.assert_allclose(out16, ref, atol=2e-3, rtol=2e-3)


def test_config_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_model_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text((load_model_config.__globals__["CONFIG_DIR"] / "tiny.yaml").read_text()
                   .replace("num_res_blocks: 2", "num_res_block: 2"))
    with pytest.raises(ConfigError, match=r"model\.unet.*num_res_block"):
        load_model_config(bad)


def test_flash_attention_flag_is_refused_off_ascend():
    cfg = load_model_config("tiny")
    cfg["model"]["unet"]["use_flash_attention"] = True
    with pytest.raises(ConfigError, match="use_flash_attention needs device_target Ascend"):
        build_model(cfg)


def test_recompute_flag_keeps_the_function(tiny):
    cfg = load_model_config("tiny")
    cfg["model"]["unet"]["use_recompute"] = True
    model = build_model(cfg)
    reference = dict(tiny.parameters_and_names())
    for name, param in model.parameters_and_names():
        param.set_data(reference[name].data.copy())
    rng = np.random.default_rng(4)
    x = Tensor(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    ctx = Tensor(rng.standard_normal((1, 77, 32)).astype(np.float32))
    t = Tensor(np.array([250], np.int32))
    np.testing.assert_allclose(model.apply_model(x, t, ctx).asnumpy(), tiny.apply_model(x, t, ctx).asnumpy(),
                               atol=1e-6)
