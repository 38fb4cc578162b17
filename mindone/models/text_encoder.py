"""OpenCLIP text tower (ViT-H/14 for SD 2.x) with open_clip attribute names.

SD 2.x conditions on the penultimate block's output passed through ``ln_final``. The model is built
with exactly the blocks that are run (23 for SD 2.x, matching the 280 text tensors of the original
layout); a released file's 24th block is an extra key that the loader reports and skips.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from mindone.models.attention import attention
from mindone.models.layers import Embedding, LayerNorm, linear


class MultiheadAttention(nn.Cell):
    """torch ``nn.MultiheadAttention`` layout: packed ``in_proj_weight`` [3C, C] / ``in_proj_bias``, ``out_proj``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = Parameter(initializer(Normal(0.02), (3 * width, width), ms.float32))
        self.in_proj_bias = Parameter(initializer("zeros", (3 * width,), ms.float32))
        self.out_proj = linear(width, width)

    def construct(self, x: Tensor, mask: Tensor) -> Tensor:
        qkv = ops.matmul(x, self.in_proj_weight.astype(x.dtype).T) + self.in_proj_bias.astype(x.dtype)
        q, k, v = ops.chunk(qkv, 3, axis=-1)
        return self.out_proj(attention(q, k, v, self.heads, mask))


class MLP(nn.Cell):
    """``mlp.c_fc`` -> GELU (exact, as OpenCLIP ViT-H) -> ``mlp.c_proj``."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = linear(width, hidden)
        self.gelu = nn.GELU(approximate=False)
        self.c_proj = linear(hidden, width)

    def construct(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Cell):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def construct(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Cell):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def construct(self, x: Tensor, mask: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class OpenCLIPTextTransformer(nn.Cell):
    """The ``cond_stage_model.model`` part: token_embedding, positional_embedding, transformer, ln_final."""

    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int):
        super().__init__()
        self.token_embedding = Embedding(vocab_size, width)
        self.positional_embedding = Parameter(initializer(Normal(0.01), (context_length, width), ms.float32))
        self.transformer = Transformer(width, layers, heads)
        self.ln_final = LayerNorm(width)
        causal = np.triu(np.full((context_length, context_length), -np.inf, dtype=np.float32), 1)
        self.attn_mask = Tensor(causal)

    def construct(self, token_ids: Tensor) -> Tensor:
        x = self.token_embedding(token_ids) + self.positional_embedding
        x = self.transformer(x, self.attn_mask)
        return self.ln_final(x)


class OpenCLIPTextEncoder(nn.Cell):
    """Frozen text conditioner: token ids [B, 77] int32 -> context [B, 77, width] (penultimate + ln_final)."""

    def __init__(self, vocab_size: int = 49408, context_length: int = 77, width: int = 1024, layers: int = 23,
                 heads: int = 16):
        super().__init__()
        self.model = OpenCLIPTextTransformer(vocab_size, context_length, width, layers, heads)

    def construct(self, token_ids: Tensor) -> Tensor:
        return self.model(token_ids)
