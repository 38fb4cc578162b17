"""The SD 2.x UNet, with ldm ``openaimodel.py`` attribute names (they are the checkpoint names).

Layout of ``input_blocks`` / ``middle_block`` / ``output_blocks`` follows ldm exactly, e.g.
``input_blocks.1.0`` is a ResBlock, ``input_blocks.1.1`` its SpatialTransformer, ``input_blocks.3.0.op``
the first downsampling conv. Every block takes ``(x, emb, context)`` so a level is a plain loop, which
keeps the network graph-mode friendly.
"""

from __future__ import annotations

from typing import Sequence

from mindspore import Tensor, nn, ops

from mindone.models.attention import CrossAttention
from mindone.models.flash_attention import check_flash_supported
from mindone.models.layers import (Conv2d, GroupNorm, LayerNorm, conv2d, linear, sinusoidal_frequencies,
                                   timestep_embedding, upsample_nearest_2x)

NORM_GROUPS = 32  # ldm's GroupNorm32


class ResBlock(nn.Cell):
    """ldm ResBlock: in_layers (norm, SiLU, conv), emb_layers (SiLU, linear), out_layers (norm, SiLU, dropout, conv)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.SequentialCell([GroupNorm(NORM_GROUPS, channels), nn.SiLU(),
                                            conv2d(channels, out_channels, 3, padding=1)])
        self.emb_layers = nn.SequentialCell([nn.SiLU(), linear(emb_channels, out_channels)])
        self.out_layers = nn.SequentialCell([GroupNorm(NORM_GROUPS, out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                             conv2d(out_channels, out_channels, 3, padding=1)])
        self.has_skip_conv = channels != out_channels
        if self.has_skip_conv:
            self.skip_connection = conv2d(channels, out_channels, 1)

    def construct(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).astype(h.dtype)
        h = h + emb_out.reshape(emb_out.shape[0], emb_out.shape[1], 1, 1)
        h = self.out_layers(h)
        if self.has_skip_conv:
            x = self.skip_connection(x)
        return x + h


class GEGLU(nn.Cell):
    """Gated GELU projection (``ff.net.0.proj``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = linear(dim_in, dim_out * 2)
        self.gelu = nn.GELU(approximate=False)

    def construct(self, x: Tensor) -> Tensor:
        x, gate = ops.chunk(self.proj(x), 2, axis=-1)
        return x * self.gelu(gate)


class FeedForward(nn.Cell):
    """``ff.net`` = [GEGLU, Dropout, Linear] with inner width 4 * dim."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        inner = dim * 4
        self.net = nn.SequentialCell([GEGLU(dim, inner), nn.Dropout(p=dropout), linear(inner, dim)])

    def construct(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Cell):
    """Self-attention, cross-attention on the text context, GEGLU feed-forward; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, use_flash: bool = False):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head, use_flash)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, use_flash)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)

    def construct(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Cell):
    """ldm SpatialTransformer with linear proj_in / proj_out (``use_linear_in_transformer``)."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_flash: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm(NORM_GROUPS, channels, eps=1e-6)
        self.proj_in = linear(channels, inner)
        self.transformer_blocks = nn.CellList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim, use_flash) for _ in range(depth)])
        self.proj_out = linear(inner, channels)

    def construct(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x).reshape(b, c, h * w).transpose(0, 2, 1)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        x = self.proj_out(x)
        return x.transpose(0, 2, 1).reshape(b, c, h, w) + x_in


class Downsample(nn.Cell):
    """Stride-2 3x3 conv (``op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = conv2d(channels, channels, 3, stride=2, padding=1)

    def construct(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Cell):
    """Nearest 2x upsampling then a 3x3 conv (``conv``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv2d(channels, channels, 3, padding=1)

    def construct(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:
        return self.conv(upsample_nearest_2x(x))


class InputConv(Conv2d):
    """``input_blocks.0.0``: the stem conv, with the block call signature."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, 3, padding=1)

    def construct(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:  # pylint: disable=arguments-differ
        return super().construct(x)


class TimestepEmbedSequential(nn.SequentialCell):
    """One entry of input_blocks / output_blocks: children named 0, 1, 2 as in ldm."""

    def construct(self, x: Tensor, emb: Tensor, context: Tensor) -> Tensor:  # pylint: disable=arguments-differ
        for layer in self.cell_list:
            x = layer(x, emb, context)
        return x


class UNetModel(nn.Cell):
    """ldm ``UNetModel`` as configured for SD 2.x (see configs/model/*.yaml)."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4, model_channels: int = 320,
                 channel_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_levels: Sequence[int] = (0, 1, 2), num_head_channels: int = 64,
                 transformer_depth: int = 1, context_dim: int = 1024, dropout: float = 0.0,
                 use_flash_attention: bool = False, use_recompute: bool = False):
        super().__init__()
        if use_flash_attention:
            check_flash_supported()
        self.model_channels = model_channels
        # architecture numbers the weight converter needs to map diffusers names onto this layout
        self.layout = {"channel_mult": list(channel_mult), "num_res_blocks": num_res_blocks,
                       "attention_levels": list(attention_levels)}
        self.time_freqs = sinusoidal_frequencies(model_channels)
        time_dim = model_channels * 4
        self.time_embed = nn.SequentialCell([linear(model_channels, time_dim), nn.SiLU(), linear(time_dim, time_dim)])

        def transformer(ch: int) -> SpatialTransformer:
            heads = ch // num_head_channels
            return SpatialTransformer(ch, heads, num_head_channels, transformer_depth, context_dim, use_flash_attention)

        blocks = [TimestepEmbedSequential([InputConv(in_channels, model_channels)])]
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, time_dim, model_channels * mult, dropout)]
                ch = model_channels * mult
                if level in attention_levels:
                    layers.append(transformer(ch))
                blocks.append(TimestepEmbedSequential(layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                skip_channels.append(ch)
        self.input_blocks = nn.CellList(blocks)

        self.middle_block = TimestepEmbedSequential(
            [ResBlock(ch, time_dim, ch, dropout), transformer(ch), ResBlock(ch, time_dim, ch, dropout)])

        blocks = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), time_dim, model_channels * mult, dropout)]
                ch = model_channels * mult
                if level in attention_levels:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                blocks.append(TimestepEmbedSequential(layers))
        self.output_blocks = nn.CellList(blocks)

        self.out = nn.SequentialCell([GroupNorm(NORM_GROUPS, ch), nn.SiLU(), conv2d(model_channels, out_channels, 3,
                                                                                   padding=1)])
        if use_recompute:
            for block in list(self.input_blocks) + [self.middle_block] + list(self.output_blocks):
                block.recompute()

    def construct(self, x: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        """Predict eps (or v) for latents ``x`` [B, 4, h, w] at ``timesteps`` [B] given ``context`` [B, 77, C]."""
        emb = self.time_embed(timestep_embedding(timesteps, self.time_freqs))
        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for i, block in enumerate(self.output_blocks):
            h = ops.cat([h, skips[-1 - i].astype(h.dtype)], axis=1)
            h = block(h, emb, context)
        return self.out(h).astype(x.dtype)
