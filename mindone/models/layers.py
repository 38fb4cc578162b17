"""Small building blocks whose parameter names follow the PyTorch checkpoints (weight / bias).

MindSpore's own ``nn.LayerNorm`` / ``nn.GroupNorm`` / ``nn.Embedding`` name their parameters
gamma / beta / embedding_table; these replacements name them like the checkpoints do, so loading a
released file is a plain name lookup. Norms always compute in float32 and cast back, as ldm's
``GroupNorm32`` does, which keeps fp16 runs stable.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer


class GroupNorm(nn.Cell):
    """GroupNorm over NCHW input with ``weight`` / ``bias`` parameters, computed in float32."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels not divisible by {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = Parameter(initializer("ones", (num_channels,), ms.float32))
        self.bias = Parameter(initializer("zeros", (num_channels,), ms.float32))

    def construct(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        y = ops.group_norm(x.astype(ms.float32), self.num_groups, self.weight.astype(ms.float32),
                           self.bias.astype(ms.float32), self.eps)
        return y.astype(dtype)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with ``weight`` / ``bias`` parameters, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = Parameter(initializer("ones", (dim,), ms.float32))
        self.bias = Parameter(initializer("zeros", (dim,), ms.float32))
        self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        y, _, _ = self.layer_norm(x.astype(ms.float32), self.weight.astype(ms.float32), self.bias.astype(ms.float32))
        return y.astype(dtype)


class Embedding(nn.Cell):
    """Token embedding table stored as ``weight`` [vocab, dim] (torch ``nn.Embedding`` layout)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.weight = Parameter(initializer(Normal(0.02), (vocab_size, dim), ms.float32))

    def construct(self, ids: Tensor) -> Tensor:
        return ops.gather(self.weight, ids, 0)


def linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Dense:
    """A torch-layout linear layer: ``weight`` [out, in], optional ``bias``."""
    return nn.Dense(in_dim, out_dim, has_bias=bias)


_bmm = ops.BatchMatMul()  # its gradient uses transpose flags; ops.matmul's adds a Transpose of the unfolded input
IM2COL_MAX_ELEMENTS = 1 << 25  # 128 MiB of float32 unfolded input per unfold call (shapes are static in graphs)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with bias and symmetric zero ``padding`` (torch layout: ``weight`` [out, in, k, k], ``bias``).

    On the CPU backend a convolution with a kernel larger than 1x1 runs as im2col (``ops.unfold``) and one
    MatMul with the same weight. MindSpore's CPU Conv2D hands oneDNN plain NCHW memory descriptors, and for
    those oneDNN only has its reference kernel unless the kernel is 1x1 (``ONEDNN_VERBOSE=1`` shows
    ``jit_uni_ncsp:conv+ref:any`` for 3x3, forward and backward-data): a 3x3 conv of [8, 32, 32, 32] takes
    ~100-200 ms there against ~6 ms for unfold + MatMul (and ~2 ms in torch). Same function and parameters;
    only the summation order differs (float32 rounding, ~1e-7 relative). Other devices use the native Conv2D.

    When the unfolded input would exceed ``IM2COL_MAX_ELEMENTS`` (the 256-512 px VAE levels: kh*kw times
    the activation, gigabytes per layer), the output rows are computed in bands: zero rows are added above
    and below once (the width is padded by each unfold), each band of output rows takes its input rows plus
    the (kh - 1) halo, is unfolded and multiplied on its own, and the bands are concatenated along H. Shapes
    are static, so the band count is a Python int and the loop unrolls in GRAPH_MODE; slicing and concat are
    differentiable. Only if a single output row is over the limit does the native kernel run.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
                 pad_mode: str = "pad"):
        super().__init__(in_ch, out_ch, kernel, stride=stride, pad_mode=pad_mode, padding=padding, has_bias=True)
        self.pad_hw = (padding, padding) if pad_mode == "pad" else (0, 0)
        self.im2col = (ms.get_context("device_target") == "CPU" and kernel > 1
                       and pad_mode in ("pad", "valid"))

    def construct(self, x: Tensor) -> Tensor:
        if not self.im2col:
            return super().construct(x)
        b, c, h, w = x.shape
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph, pw = self.pad_hw
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (w + 2 * pw - kw) // sw + 1
        per_row = b * c * kh * kw * wo  # unfolded elements per output row
        weight = ops.broadcast_to(self.weight.reshape(1, self.out_channels, -1), (b, self.out_channels, c * kh * kw))
        if per_row * ho <= IM2COL_MAX_ELEMENTS:
            cols = ops.unfold(x, self.kernel_size, 1, self.pad_hw, self.stride)  # [B, C*kh*kw, ho*wo], (c, i, j)
            out = _bmm(weight, cols)
            return self.bias_add(out.reshape(b, self.out_channels, ho, wo), self.bias)
        max_rows = IM2COL_MAX_ELEMENTS // per_row
        if max_rows < 1:
            return super().construct(x)
        bands = -(-ho // max_rows)
        rows = -(-ho // bands)  # even bands; the last one may be shorter
        x = zero_pad(x, top=ph, bottom=ph)
        outs = []
        for r0 in range(0, ho, rows):
            n = min(rows, ho - r0)
            band = x[:, :, r0 * sh:(r0 + n - 1) * sh + kh, :]
            cols = ops.unfold(band, self.kernel_size, 1, (0, pw), self.stride)  # W padded by unfold
            outs.append(_bmm(weight, cols).reshape(b, self.out_channels, n, wo))
        return self.bias_add(ops.cat(outs, axis=2), self.bias)


def zero_pad(x: Tensor, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0) -> Tensor:
    """Zero padding of an NCHW tensor's H and W, built from concatenations rather than ``ops.pad``.

    On the CPU backend the gradient of ``ops.pad`` (PadV3Grad) spun forever after a few training steps in
    GRAPH_MODE (MindSpore 2.10, seen in VAE training); the concat's gradient is a slice. Same values.
    """
    b, c, h, w = x.shape
    if left:
        x = ops.concat((ops.zeros((b, c, h, left), x.dtype), x), axis=3)
    if right:
        x = ops.concat((x, ops.zeros((b, c, h, right), x.dtype)), axis=3)
    w += left + right
    if top:
        x = ops.concat((ops.zeros((b, c, top, w), x.dtype), x), axis=2)
    if bottom:
        x = ops.concat((x, ops.zeros((b, c, bottom, w), x.dtype)), axis=2)
    return x


def conv2d(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    """A torch-layout 2-D convolution with bias and explicit zero padding (see :class:`Conv2d`)."""
    return Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding)


def upsample_nearest_2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling of NCHW input (same result as torch ``interpolate(nearest)``)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h, 1, w, 1)
    x = ops.broadcast_to(x, (b, c, h, 2, w, 2))
    return x.reshape(b, c, h * 2, w * 2)


def sinusoidal_frequencies(dim: int, max_period: float = 10000.0) -> Tensor:
    """Frequencies of ldm's sinusoidal timestep embedding (a constant; build it once in __init__)."""
    half = dim // 2
    return Tensor(np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / half), ms.float32)


def timestep_embedding(timesteps: Tensor, freqs: Tensor) -> Tensor:
    """Sinusoidal timestep embedding in [cos | sin] order, as ldm (diffusers: flip_sin_to_cos=True)."""
    args = timesteps.astype(ms.float32).reshape(-1, 1) * freqs.reshape(1, -1)
    return ops.cat([ops.cos(args), ops.sin(args)], axis=-1)
