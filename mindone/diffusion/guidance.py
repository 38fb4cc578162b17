"""Classifier-free guidance: one UNet call on the stacked [unconditional; conditional] batch.

The denoisers are Cells so that, in GRAPH_MODE, each compiles once (per input shape) and is reused for
every step; the guidance scale is an input tensor, not a constant, so changing it does not recompile.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops


class GuidedDenoiser(nn.Cell):
    """``uncond + scale * (cond - uncond)`` from one UNet call on a doubled batch.

    ``context`` holds the unconditional contexts first, then the conditional ones ([2B, 77, C]), in
    the order the latents are repeated. The output is float32 whatever precision the model runs in.
    """

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names (checkpoint names)
        self.model = model

    def construct(self, x: Tensor, t: Tensor, context: Tensor, guidance_scale: Tensor) -> Tensor:
        out = self.model.apply_model(ops.cat((x, x)), ops.cat((t, t)), context).astype(ms.float32)
        uncond, cond = ops.chunk(out, 2, 0)
        return uncond + guidance_scale * (cond - uncond)


class Denoiser(nn.Cell):
    """The plain conditional UNet call (guidance scale <= 1), output in float32."""

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)  # keep the model's parameter names (checkpoint names)
        self.model = model

    def construct(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        return self.model.apply_model(x, t, context).astype(ms.float32)
