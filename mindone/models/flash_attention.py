"""Ascend-only fused attention (``ops.flash_attention_score``), isolated behind ``use_flash_attention``.

Nothing in the CPU test environment can run this kernel; it is only selected when a config sets
``use_flash_attention: true`` and the MindSpore device target is Ascend.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops

from mindone.errors import ConfigError


def flash_attention(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
    """Unmasked fused attention on [B, N, C] inputs (BSH layout); computes in fp16, returns v's dtype."""
    dtype = v.dtype
    head_dim = q.shape[-1] // num_heads
    out = ops.flash_attention_score(q.astype(ms.float16), k.astype(ms.float16), v.astype(ms.float16),
                                    num_heads, scalar_value=float(head_dim) ** -0.5,
                                    input_layout="BSH")
    return out.astype(dtype)


def check_flash_supported() -> None:
    """Raise a clear error when the flash path is requested on a device that has no kernel for it."""
    target = ms.get_context("device_target")
    if target != "Ascend":
        raise ConfigError(f"use_flash_attention needs device_target Ascend (current: {target}); "
                          "set use_flash_attention: false in the model config")
