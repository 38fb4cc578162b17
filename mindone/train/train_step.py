"""The optimizer step: dynamic loss scaling with overflow skip, gradient accumulation, clipping, EMA.

Compiles in GRAPH_MODE (what Ascend runs) and runs in PYNATIVE. One optimizer step is
``grad_accum_steps`` calls: every call but the last runs :class:`_AccumulateCell` (forward, backward,
add the gradients to a buffer); the last runs :class:`_ApplyCell`, which adds its own gradients, then

1. mean-reduces the summed gradients across data-parallel ranks (once per optimizer step, not per call),
2. computes the global L2 norm of the gradients divided by the loss scale and the number of accumulated
   calls (the gradients are concatenated into a few flat buckets for it: a handful of kernels, not ~3 per
   tensor; the sum of squares is therefore ordered by bucket, not by tensor),
3. checks every gradient is finite through that norm (after the reduction, so all ranks agree),
4. multiplies each gradient once by ``unscale * clip`` (clipping to ``max_grad_norm`` as
   ``torch.nn.utils.clip_grad_norm_``: ``min(1, max_norm / (norm + 1e-6))``),
5. updates the loss scale (overflow: divide by ``factor``; ``window`` clean steps in a row: multiply),
6. when finite: applies the optimizer and then the EMA; on overflow the weights, the optimizer state
   (moments, lr position) and the EMA stay untouched: the step is skipped.

The two cells share the network, the accumulation buffers and the loss-scale state, so they compile to
two graphs over the same parameters; with ``grad_accum_steps=1`` only the apply graph exists and no
buffer is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

_flatten = ops.MultitypeFuncGraph("flatten")
_scale = ops.MultitypeFuncGraph("scale")
_add_assign = ops.MultitypeFuncGraph("add_assign")
_add = ops.MultitypeFuncGraph("add")
_zero_assign = ops.MultitypeFuncGraph("zero_assign")


@_flatten.register("Tensor")
def _flatten_tensor(grad):
    return ops.cast(grad, ms.float32).reshape(-1)


def _buckets(sizes: list[int], max_tensors: int = 64, max_elements: int = 2**24) -> tuple[tuple[int, int], ...]:
    """Contiguous [start, end) ranges of at most ``max_tensors`` tensors and ``max_elements`` values (a bigger
    tensor gets its own range): bounds the extra memory of a concatenated bucket, and a concat of many more
    inputs compiles slowly."""
    bounds, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (total + size > max_elements or i - start == max_tensors):
            bounds.append((start, i))
            start, total = i, 0
        total += size
    return tuple(bounds + [(start, len(sizes))])


@_scale.register("Tensor", "Tensor")
def _scale_tensor(factor, grad):
    return ops.mul(grad, ops.cast(factor, grad.dtype))


@_add_assign.register("Tensor", "Tensor")
def _add_assign_tensor(buffer, grad):
    return ops.assign_add(buffer, ops.cast(grad, buffer.dtype))


@_add.register("Tensor", "Tensor")
def _add_tensor(buffer, grad):
    return ops.add(ops.cast(buffer, grad.dtype), grad)


@_zero_assign.register("Tensor")
def _zero_assign_tensor(buffer):
    return ops.assign(buffer, ops.zeros_like(buffer))


class LossScaler(nn.Cell):
    """Loss-scale state (saved with checkpoints) and its update rule.

    ``dynamic=False`` keeps the scale fixed (1.0 for fp32/bf16 training): overflow still skips the step.
    Defaults follow ``torch.cuda.amp.GradScaler`` (init 2**16, factor 2, growth after 2000 clean steps).
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        dynamic: bool = True,
        factor: float = 2.0,
        window: int = 2000,
        min_scale: float = 1.0,
    ) -> None:
        super().__init__(auto_prefix=False)
        self.dynamic = dynamic
        self.loss_scale = Parameter(Tensor(init_scale, ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.factor = Tensor(factor, ms.float32)
        self.window = Tensor(window, ms.int32)
        self.min_scale = Tensor(min_scale, ms.float32)

    def adjust(self, finite: Tensor) -> Tensor:
        """Update the scale after a step whose gradients were ``finite`` (a bool tensor); returns ``finite``."""
        if not self.dynamic:
            return finite
        scale = self.loss_scale
        lowered = ops.maximum(scale / self.factor, self.min_scale)
        new_scale = ops.select(finite, scale, lowered)
        good = ops.select(finite, self.good_steps + 1, ops.zeros_like(self.good_steps))
        grow = good >= self.window
        new_scale = ops.select(grow, new_scale * self.factor, new_scale)
        good = ops.select(grow, ops.zeros_like(good), good)
        finite = ops.depend(finite, ops.assign(self.loss_scale, new_scale))
        return ops.depend(finite, ops.assign(self.good_steps, good))


def _grad_reducer(weights) -> nn.Cell | None:
    """A mean all-reduce of gradients when running data parallel, else None."""
    if ms.get_auto_parallel_context("parallel_mode") not in ("data_parallel", "hybrid_parallel"):
        return None
    from mindspore.communication import get_group_size

    world = get_group_size()
    return nn.DistributedGradReducer(weights, mean=True, degree=world) if world > 1 else None


class _GradCell(nn.Cell):
    """Forward and backward of ``network`` with the loss multiplied by the current loss scale."""

    def __init__(self, network: nn.Cell, weights, scaler: LossScaler) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        self.weights = weights
        self.scaler = scaler
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, 1.0) * ops.cast(self.scaler.loss_scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        return loss, grads


class _AccumulateCell(nn.Cell):
    """One non-final micro step: add the (scaled) gradients to the buffers; returns the loss."""

    def __init__(self, grad_cell: _GradCell, buffers) -> None:
        super().__init__(auto_prefix=False)
        self.grad_cell = grad_cell
        self.buffers = buffers
        self.hyper_map = ops.HyperMap()

    def construct(self, *inputs):
        loss, grads = self.grad_cell(*inputs)
        done = self.hyper_map(_add_assign, self.buffers, grads)
        return ops.depend(loss, done)


class _ApplyCell(nn.Cell):
    """The final micro step of an optimizer step: reduce, unscale, check, clip, update (see module doc)."""

    def __init__(
        self,
        grad_cell: _GradCell,
        optimizer: nn.Optimizer,
        buffers,
        grad_accum_steps: int,
        max_grad_norm: float | None,
        ema: nn.Cell | None,
    ) -> None:
        super().__init__(auto_prefix=False)
        self.grad_cell = grad_cell
        self.optimizer = optimizer
        self.scaler = grad_cell.scaler
        self.buffers = buffers
        self.accumulate = grad_accum_steps > 1
        self.accum = Tensor(float(grad_accum_steps), ms.float32)
        self.clip = max_grad_norm is not None and max_grad_norm > 0
        self.max_norm = Tensor(float(max_grad_norm or 0.0), ms.float32)
        self.reducer = _grad_reducer(optimizer.parameters)
        self.ema = ema
        self.hyper_map = ops.HyperMap()
        self.buckets = _buckets([p.size for p in optimizer.parameters])

    def global_norm(self, grads, unscale: Tensor) -> Tensor:
        """L2 norm of all ``grads * unscale`` together, computed on flat buckets of the gradients."""
        flat = self.hyper_map(_flatten, grads)
        total = ops.zeros((), ms.float32)
        for lo, hi in self.buckets:
            bucket = ops.concat(flat[lo:hi]) * unscale
            total = total + ops.sum(ops.square(bucket))
        return ops.sqrt(total)

    def construct(self, *inputs):
        loss, grads = self.grad_cell(*inputs)
        scale = self.scaler.loss_scale * 1.0  # value before this step's update, for logging
        if self.accumulate:
            grads = self.hyper_map(_add, self.buffers, grads)
            cleared = self.hyper_map(_zero_assign, self.buffers)
            grads = ops.depend(grads, cleared)
        if self.reducer is not None:
            grads = self.reducer(grads)
        unscale = 1.0 / (scale * self.accum)
        norm = self.global_norm(grads, unscale)
        finite = ops.isfinite(norm)
        if self.clip:
            unscale = unscale * ops.minimum(self.max_norm / (norm + 1e-6), ops.ones_like(norm))
        grads = self.hyper_map(ops.partial(_scale, unscale), grads)
        finite = self.scaler.adjust(finite)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
            if self.ema is not None:
                loss = ops.depend(loss, self.ema.update())
        return loss, finite, scale, norm


@dataclass
class StepOutput:
    """What one call of :class:`TrainStep` reports (as Python numbers)."""

    loss: float
    applied: bool  # an optimizer step ended with this call (False on accumulation calls)
    overflow: bool  # the optimizer step was skipped for non-finite gradients
    loss_scale: float
    grad_norm: float  # before clipping; NaN on accumulation calls


class TrainStep:
    """Calls the accumulate graph ``grad_accum_steps - 1`` times, then the apply graph.

    Args:
        network: a cell returning the scalar loss from the batch inputs.
        optimizer: built over the trainable parameters.
        scaler: loss-scale state; None for a fixed scale of 1 (overflow still skips the step).
        grad_accum_steps: micro batches per optimizer step (the loss is averaged over them).
        max_grad_norm: global-norm clipping threshold; None or 0 disables clipping.
        ema: an :class:`mindone.train.ema.EMA` updated after each applied step, or None.
    """

    def __init__(
        self,
        network: nn.Cell,
        optimizer: nn.Optimizer,
        scaler: LossScaler | None = None,
        grad_accum_steps: int = 1,
        max_grad_norm: float | None = None,
        ema: nn.Cell | None = None,
    ) -> None:
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        self.scaler = scaler or LossScaler(init_scale=1.0, dynamic=False)
        self.grad_accum_steps = grad_accum_steps
        self.optimizer = optimizer
        self.ema = ema
        network.set_train(True)
        weights = optimizer.parameters
        grad_cell = _GradCell(network, weights, self.scaler)
        self.buffers = weights.clone(prefix="accum_grad", init="zeros") if grad_accum_steps > 1 else ()
        self._accumulate = _AccumulateCell(grad_cell, self.buffers) if grad_accum_steps > 1 else None
        self._apply = _ApplyCell(grad_cell, optimizer, self.buffers, grad_accum_steps, max_grad_norm, ema)
        self._micro = 0

    def __call__(self, *inputs: Tensor) -> StepOutput:
        self._micro += 1
        if self._micro < self.grad_accum_steps:
            loss = self._accumulate(*inputs)
            return StepOutput(float(loss.asnumpy()), False, False, float(self.scaler.loss_scale.asnumpy()), np.nan)
        self._micro = 0
        loss, finite, scale, norm = self._apply(*inputs)
        return StepOutput(float(loss.asnumpy()), True, not bool(finite.asnumpy()), float(scale.asnumpy()),
                          float(norm.asnumpy()))

    def state_parameters(self) -> list[Parameter]:
        """Parameters a checkpoint must hold besides the model: optimizer state, loss scale, EMA."""
        params = list(self.optimizer.parameters_and_names())
        names = {id(p) for p in self.optimizer.parameters}
        out = [p for _, p in params if id(p) not in names]
        out += [self.scaler.loss_scale, self.scaler.good_steps]
        if self.ema is not None:
            out += self.ema.state_parameters()
        return out
