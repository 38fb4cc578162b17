"""Guards for the CPU speed fixes: they must keep the function the model computes (no timing asserts here)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn  # noqa: E402

from mindone.models.layers import Conv2d  # noqa: E402


class _SquareSum(nn.Cell):
    def __init__(self, conv):
        super().__init__(auto_prefix=False)
        self.conv = conv

    def construct(self, x):
        y = self.conv(x)
        return (y * y).sum()


@contextlib.contextmanager
def _mode(mode):
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


def _native_twin(ours, rng):
    """An ``nn.Conv2d`` with ``ours``' geometry and weights; both get the same random bias."""
    native = nn.Conv2d(ours.in_channels, ours.out_channels, ours.kernel_size, stride=ours.stride,
                       pad_mode=ours.pad_mode, padding=ours.padding, has_bias=True)
    native.weight.set_data(ours.weight.value())
    ours.bias.set_data(Tensor(rng.standard_normal(ours.out_channels).astype(np.float32)))
    native.bias.set_data(ours.bias.value())
    return native


def _assert_same(got, want):
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))


def _forward_and_grads(conv, x):
    weights = conv.trainable_params()
    grad_fn = ms.value_and_grad(_SquareSum(conv), 0, weights)
    _, (gx, (gw, gb)) = grad_fn(x)
    return conv(x).asnumpy(), gx.asnumpy(), gw.asnumpy(), gb.asnumpy()


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
@pytest.mark.parametrize("kernel, stride, padding, pad_mode",
                         [(3, 1, 1, "pad"), (3, 2, 1, "pad"), (3, 2, 0, "valid"), (1, 1, 0, "pad")])
def test_cpu_im2col_conv_matches_native_conv(mode, kernel, stride, padding, pad_mode):
    """The CPU im2col + MatMul path of ``Conv2d`` gives the native Conv2D's output and gradients."""
    if ms.get_context("device_target") != "CPU":
        pytest.skip("the im2col path is CPU only")
    with _mode(mode):
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal((2, 8, 9, 10)).astype(np.float32))
        ours = Conv2d(8, 6, kernel, stride=stride, padding=padding, pad_mode=pad_mode)
        assert ours.im2col == (kernel > 1)
        native = _native_twin(ours, rng)
        _assert_same(_forward_and_grads(ours, x), _forward_and_grads(native, x))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
@pytest.mark.parametrize("kernel, stride, padding, pad_mode, max_rows",
                         [(3, 1, 1, "pad", 4), (3, 2, 1, "pad", 3), (3, 2, 0, "valid", 3), (3, 1, 1, "pad", 1)])
def test_banded_im2col_conv_matches_native_conv(monkeypatch, mode, kernel, stride, padding, pad_mode, max_rows):
    """Above IM2COL_MAX_ELEMENTS of unfolded input (full-size VAE levels) the conv runs in bands of output
    rows; the result and the input / weight / bias gradients are still the native Conv2D's."""
    import mindone.models.layers as layers

    if ms.get_context("device_target") != "CPU":
        pytest.skip("the im2col path is CPU only")
    with _mode(mode):
        rng = np.random.default_rng(2)
        b, c, h, w = 2, 5, 15, 9
        x = Tensor(rng.standard_normal((b, c, h, w)).astype(np.float32))
        ours = Conv2d(c, 4, kernel, stride=stride, padding=padding, pad_mode=pad_mode)
        native = _native_twin(ours, rng)
        ho = (h + 2 * padding - kernel) // stride + 1
        wo = (w + 2 * padding - kernel) // stride + 1
        per_row = b * c * kernel * kernel * wo
        bands = -(-ho // max_rows)
        rows = -(-ho // bands)
        assert bands > 1 and (ho % rows or rows == 1), "each case should have several bands, the last one shorter"
        shapes = []
        if mode == ms.PYNATIVE_MODE:  # a graph cannot call back into Python
            monkeypatch.setattr(layers.ops, "unfold",
                                lambda t, *a, **k: shapes.append(t.shape) or _unfold(t, *a, **k))
        monkeypatch.setattr(layers, "IM2COL_MAX_ELEMENTS", per_row * max_rows)
        _assert_same(_forward_and_grads(ours, x), _forward_and_grads(native, x))
        if mode == ms.PYNATIVE_MODE:
            assert len(shapes) % bands == 0 and len(shapes) >= bands
            band_rows = [s[2] for s in shapes[:bands]]
            assert band_rows[:-1] == [(rows - 1) * stride + kernel] * (bands - 1)
            assert band_rows[-1] == (ho - (bands - 1) * rows - 1) * stride + kernel


def test_convs_with_an_output_row_too_big_to_unfold_take_the_native_kernel(monkeypatch):
    """If even one output row's unfolded input is over IM2COL_MAX_ELEMENTS the native Conv2D runs."""
    import mindone.models.layers as layers

    with _mode(ms.PYNATIVE_MODE):
        rng = np.random.default_rng(1)
        x = Tensor(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
        ours = Conv2d(4, 3, 3, padding=1)
        native = _native_twin(ours, rng)
        calls = []
        monkeypatch.setattr(layers.ops, "unfold", lambda *a, **k: calls.append(1) or _unfold(*a, **k))
        monkeypatch.setattr(layers, "IM2COL_MAX_ELEMENTS", 4 * 9 * 8 - 1)  # one element short of one row
        np.testing.assert_allclose(ours(x).asnumpy(), native(x).asnumpy(), rtol=1e-5, atol=1e-5)
        assert not calls
        monkeypatch.setattr(layers, "IM2COL_MAX_ELEMENTS", 4 * 9 * 8)  # one row per band
        np.testing.assert_allclose(ours(x).asnumpy(), native(x).asnumpy(), rtol=1e-5, atol=1e-5)
        assert len(calls) == 8
        monkeypatch.setattr(layers, "IM2COL_MAX_ELEMENTS", 4 * 9 * 64)  # the whole conv in one unfold
        calls.clear()
        np.testing.assert_allclose(ours(x).asnumpy(), native(x).asnumpy(), rtol=1e-5, atol=1e-5)
        assert len(calls) == 1


_unfold = ms.ops.unfold


def test_conv_keeps_torch_parameter_layout():
    conv = Conv2d(4, 5, 3, padding=1)
    assert [p.name.rsplit(".", 1)[-1] for p in conv.get_parameters()] == ["weight", "bias"]
    assert conv.weight.shape == (5, 4, 3, 3)
    out = conv(Tensor(np.zeros((1, 4, 6, 6), np.float32)))
    assert out.shape == (1, 5, 6, 6)


def test_fused_adamw_matches_mindcv_adamw():
    """build_optimizer's fused AdamW (one AdamWeightDecay kernel a tensor, bias correction folded into its
    scalars) updates parameters and moments as mindcv's AdamW, to float32 rounding, with mindcv's names."""
    pytest.importorskip("mindcv")
    from mindcv.optim import create_optimizer

    from mindone.train.optim import build_optimizer

    def params(tag):
        rng = np.random.default_rng(0)
        return [ms.Parameter(Tensor(rng.standard_normal(shape).astype(np.float32)), name=f"{tag}.p{i}")
                for i, shape in enumerate([(3, 4), (5,), (2, 3, 3), (7, 1)])]

    ours_p, ref_p = params("a"), params("b")
    schedule = [1e-2, 2e-2, 3e-2, 4e-2]
    ours = build_optimizer(ours_p, schedule, weight_decay=1e-2)
    ref = create_optimizer(ref_p, opt="adamw", lr=schedule, weight_decay=1e-2, weight_decay_filter="disable")
    assert ours.fused and not getattr(ref, "fused", False)
    rng = np.random.default_rng(1)
    for i in range(4):
        grads = [rng.standard_normal(p.shape).astype(np.float32) * 10.0 ** -i for p in ref_p]
        for opt in (ours, ref):
            opt(tuple(Tensor(g) for g in grads))
    for a, b in zip(list(ours.parameters) + list(ours.moments1) + list(ours.moments2),
                    list(ref.parameters) + list(ref.moments1) + list(ref.moments2)):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=2e-6, atol=1e-7)
    assert int(ours.global_step.asnumpy()[0]) == 4
    assert [p.name.split(".", 1)[0] for p in ours.moments1] == ["adam_m"] * 4


def test_fused_adamw_reads_only_internals_mindcv_still_has():
    """The mindcv / MindSpore attributes FusedAdamW relies on exist on mindcv's own AdamW; a configuration the
    fused kernel does not cover (a clipped AdamW here) falls back to mindcv's construct and still steps."""
    pytest.importorskip("mindcv")
    from mindcv.optim import create_optimizer

    from mindone.train.fused_adamw import MINDCV_ATTRIBUTES, FusedAdamW

    ref = create_optimizer([ms.Parameter(Tensor(np.ones((2, 2), np.float32)), name="w")], opt="adamw", lr=1e-2,
                           weight_decay=1e-2, weight_decay_filter="disable")
    missing = [name for name in MINDCV_ATTRIBUTES if not hasattr(ref, name)]
    assert not missing, f"mindcv's AdamW lost {missing}: FusedAdamW needs updating"
    w = ms.Parameter(Tensor(np.ones((2, 2), np.float32)), name="w2")
    clipped = FusedAdamW([w], learning_rate=1e-2, weight_decay=1e-2, clip=True)
    assert not clipped.fused
    clipped((Tensor(np.full((2, 2), 0.5, np.float32)),))
    assert float(w.asnumpy().max()) < 1.0
