"""Multi-head attention core shared by the UNet, the VAE mid-block and the text tower.

Scores and softmax are computed in float32 whatever the activation dtype: SD 2.1 overflows in fp16
attention otherwise (ldm's ATTN_PRECISION="fp32"). The optional flash path (Ascend only) lives in
``flash_attention.py``.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops

from mindone.models.flash_attention import flash_attention
from mindone.models.layers import linear

# BatchMatMul primitives with transpose flags: their gradients are BatchMatMuls with flags too, where the
# generic ops.matmul's gradient adds Transpose kernels (and k^T would otherwise be a Transpose of its own)
_bmm = ops.BatchMatMul()
_bmm_nt = ops.BatchMatMul(transpose_b=True)


def attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int, mask: Tensor | None = None,
              use_flash: bool = False) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over ``num_heads`` heads.

    q: [B, Nq, C], k / v: [B, Nk, C], mask: additive float mask broadcastable to [B, H, Nq, Nk].
    Returns [B, Nq, C] in the dtype of ``v``.
    """
    if use_flash and mask is None:
        return flash_attention(q, k, v, num_heads)
    b, nq, c = q.shape
    nk = k.shape[1]
    d = c // num_heads
    scale = float(d) ** -0.5
    qh = q.astype(ms.float32).reshape(b, nq, num_heads, d).transpose(0, 2, 1, 3)
    kh = k.astype(ms.float32).reshape(b, nk, num_heads, d).transpose(0, 2, 1, 3)
    vh = v.reshape(b, nk, num_heads, d).transpose(0, 2, 1, 3)
    scores = _bmm_nt(qh * scale, kh)
    if mask is not None:
        scores = scores + mask
    probs = ops.softmax(scores, axis=-1).astype(v.dtype)
    out = _bmm(probs, vh)
    return out.transpose(0, 2, 1, 3).reshape(b, nq, c)


class CrossAttention(nn.Cell):
    """ldm ``CrossAttention``: to_q / to_k / to_v without bias, ``to_out.0`` with bias."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int,
                 use_flash: bool = False):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.use_flash = use_flash
        self.to_q = linear(query_dim, inner, bias=False)
        self.to_k = linear(context_dim, inner, bias=False)
        self.to_v = linear(context_dim, inner, bias=False)
        self.to_out = nn.SequentialCell([linear(inner, query_dim)])

    def construct(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is None:
            context = x
        out = attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads,
                        use_flash=self.use_flash)
        return self.to_out(out)
