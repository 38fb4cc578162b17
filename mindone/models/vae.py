"""AutoencoderKL of SD 2.x with ldm attribute names (encoder.down.0.block.0.conv1, decoder.up.3.upsample.conv...).

The mid-block attention keeps ldm's 1x1-conv q / k / v / proj_out, so the released checkpoint loads
without reshaping (diffusers files store these as linear layers; mindone.convert reshapes them).
"""

from __future__ import annotations

from typing import Sequence

from mindspore import Tensor, nn, ops

from mindone.models.attention import attention
from mindone.models.layers import Conv2d, GroupNorm, conv2d, upsample_nearest_2x, zero_pad

NORM_GROUPS = 32  # ldm's VAE always uses 32 (diffusers: norm_num_groups); narrow models may set fewer
NORM_EPS = 1e-6


def _norm(channels: int, groups: int = NORM_GROUPS) -> GroupNorm:
    return GroupNorm(groups, channels, eps=NORM_EPS)


class ResnetBlock(nn.Cell):
    """norm1, SiLU, conv1, norm2, SiLU, dropout, conv2; ``nin_shortcut`` 1x1 conv when channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, groups: int = NORM_GROUPS):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(p=dropout)
        self.conv2 = conv2d(out_channels, out_channels, 3, padding=1)
        self.silu = nn.SiLU()
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.nin_shortcut = conv2d(in_channels, out_channels, 1)

    def construct(self, x: Tensor) -> Tensor:
        h = self.conv1(self.silu(self.norm1(x)))
        h = self.conv2(self.dropout(self.silu(self.norm2(h))))
        if self.has_shortcut:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Cell):
    """Single-head spatial self-attention with 1x1-conv projections (``mid.attn_1``)."""

    def __init__(self, channels: int, groups: int = NORM_GROUPS):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = conv2d(channels, channels, 1)
        self.k = conv2d(channels, channels, 1)
        self.v = conv2d(channels, channels, 1)
        self.proj_out = conv2d(channels, channels, 1)

    def construct(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)

        def tokens(t: Tensor) -> Tensor:
            return t.reshape(b, c, h * w).transpose(0, 2, 1)

        out = attention(tokens(self.q(hn)), tokens(self.k(hn)), tokens(self.v(hn)), 1)
        out = out.transpose(0, 2, 1).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Cell):
    """Asymmetric (0, 1, 0, 1) zero pad then stride-2 3x3 conv, as ldm's VAE."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, pad_mode="valid")

    def construct(self, x: Tensor) -> Tensor:
        return self.conv(zero_pad(x, bottom=1, right=1))


class Upsample(nn.Cell):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv2d(channels, channels, 3, padding=1)

    def construct(self, x: Tensor) -> Tensor:
        return self.conv(upsample_nearest_2x(x))


class Level(nn.Cell):
    """One resolution level: ``block`` (res blocks), then the resampler stored under ldm's name for it
    (``downsample`` in the encoder, ``upsample`` in the decoder), absent at the outermost level."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Cell | None, resample_name: str):
        super().__init__()
        self.block = nn.CellList(blocks)
        self.resample_name = resample_name
        self.has_resample = resample is not None
        if resample is not None:
            self.insert_child_to_cell(resample_name, resample)

    def construct(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        if self.has_resample:
            x = getattr(self, self.resample_name)(x)
        return x


class MidBlock(nn.Cell):
    def __init__(self, channels: int, dropout: float, groups: int = NORM_GROUPS):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def construct(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Cell):
    def __init__(self, in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, groups: int = NORM_GROUPS):
        super().__init__()
        self.conv_in = conv2d(in_channels, ch, 3, padding=1)
        levels = []
        block_in = ch
        for i, mult in enumerate(ch_mult):
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, ch * mult, dropout, groups))
                block_in = ch * mult
            down = Downsample(block_in) if i != len(ch_mult) - 1 else None
            levels.append(Level(blocks, down, "downsample"))
        self.down = nn.CellList(levels)
        self.mid = MidBlock(block_in, dropout, groups)
        self.norm_out = _norm(block_in, groups)
        self.silu = nn.SiLU()
        self.conv_out = conv2d(block_in, 2 * z_channels, 3, padding=1)

    def construct(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(self.silu(self.norm_out(h)))


class Decoder(nn.Cell):
    def __init__(self, out_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 dropout: float = 0.0, groups: int = NORM_GROUPS):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = conv2d(z_channels, block_in, 3, padding=1)
        self.mid = MidBlock(block_in, dropout, groups)
        levels = []  # built from the lowest resolution up, stored so that up[i] is level i as in ldm
        for i in reversed(range(len(ch_mult))):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, ch * ch_mult[i], dropout, groups))
                block_in = ch * ch_mult[i]
            levels.insert(0, Level(blocks, Upsample(block_in) if i != 0 else None, "upsample"))
        self.up = nn.CellList(levels)
        self.norm_out = _norm(block_in, groups)
        self.silu = nn.SiLU()
        self.conv_out = conv2d(block_in, out_channels, 3, padding=1)
        self.num_levels = len(ch_mult)

    def construct(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for i in range(self.num_levels - 1, -1, -1):
            h = self.up[i](h)
        return self.conv_out(self.silu(self.norm_out(h)))


def sample_posterior(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """A reparameterised sample of the diagonal Gaussian posterior: mean + std * noise."""
    return mean + ops.exp(0.5 * logvar) * noise.astype(mean.dtype)


class AutoencoderKL(nn.Cell):
    """KL autoencoder: ``encode`` gives the posterior (mean, logvar), ``decode`` maps latents to images."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ch: int = 128,
                 ch_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2, z_channels: int = 4,
                 embed_dim: int = 4, dropout: float = 0.0, norm_num_groups: int = NORM_GROUPS):
        super().__init__()
        self.layout = {"ch_mult": list(ch_mult), "num_res_blocks": num_res_blocks}  # used by the converter
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels, dropout, norm_num_groups)
        self.decoder = Decoder(out_channels, ch, ch_mult, num_res_blocks, z_channels, dropout, norm_num_groups)
        self.quant_conv = conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = conv2d(embed_dim, z_channels, 1)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images [B, 3, H, W] in [-1, 1] -> posterior mean and log-variance (clamped to [-30, 20] as ldm)."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = ops.chunk(moments, 2, axis=1)
        return mean, ops.clamp(logvar, -30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents [B, 4, h, w] -> images [B, 3, 8h, 8w] (roughly in [-1, 1])."""
        return self.decoder(self.post_quant_conv(z))

    def construct(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode(x)
