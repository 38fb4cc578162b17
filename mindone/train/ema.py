"""Exponential moving average of weights (the UNet's, in SD training), updated inside the train graph.

The decay warms up as in diffusers' ``EMAModel`` (``use_ema_warmup=False``): at update ``n`` (from 0)
it is ``min(max_decay, (1 + n) / (10 + n))``, so early averages are not dominated by the random or
pretrained starting point. Averages are kept in float32 whatever the model's dtype.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

_ema_update = ops.MultitypeFuncGraph("ema_update")
# average -= (1 - decay) * (average - weight), in place: ApplyGradientDescent is that multiply-and-subtract in
# one kernel (CPU, GPU, Ascend), so an update is two kernels a tensor instead of three (same values).
_descend = ops.ApplyGradientDescent()


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema_update_tensor(one_minus_decay, average, weight):
    return _descend(average, one_minus_decay, average - ops.cast(weight, average.dtype))


class EMA(nn.Cell):
    """Moving averages of ``params``; parameter names are ``ema.<original name>`` in checkpoints."""

    def __init__(self, params: Sequence[Parameter], max_decay: float = 0.9999) -> None:
        super().__init__(auto_prefix=False)
        self.weights = ms.ParameterTuple(list(params))
        self.averages = ms.ParameterTuple(
            [
                Parameter(Tensor(p.asnumpy(), ms.float32), name=f"ema.{p.name}", requires_grad=False)
                for p in params
            ]
        )
        self.num_updates = Parameter(Tensor(0, ms.int32), name="ema.num_updates", requires_grad=False)
        self.max_decay = Tensor(max_decay, ms.float32)
        self.hyper_map = ops.HyperMap()

    def decay(self, n: Tensor) -> Tensor:
        n = ops.cast(n, ms.float32)
        return ops.minimum(self.max_decay, (1.0 + n) / (10.0 + n))

    def construct(self) -> Tensor:
        return self.update()

    def update(self) -> Tensor:
        """One averaging step towards the current weights (call after each applied optimizer step)."""
        one_minus_decay = 1.0 - self.decay(self.num_updates)
        done = self.hyper_map(ops.partial(_ema_update, one_minus_decay), self.averages, self.weights)
        return ops.depend(ops.assign_add(self.num_updates, ops.ones_like(self.num_updates)), done)

    def state_parameters(self) -> list[Parameter]:
        """The EMA state (averages and update count), not the tracked weights."""
        return [*self.averages, self.num_updates]

    def copy_to_weights(self) -> None:
        """Overwrite the tracked weights with the averages (for export at the end of training)."""
        for average, weight in zip(self.averages, self.weights):
            weight.set_data(Tensor(average.asnumpy(), weight.dtype))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the tracked weights hold the averages; the trained weights come back after."""
        saved = [Tensor(w.asnumpy(), w.dtype) for w in self.weights]
        try:
            self.copy_to_weights()
            yield
        finally:
            for weight, value in zip(self.weights, saved):
                weight.set_data(value)
