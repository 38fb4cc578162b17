"""AdamW and learning-rate schedules from mindcv's factories, with diffusers' schedule names.

``mindcv.scheduler.create_scheduler`` works in epochs; passing ``steps_per_epoch=1`` makes every
"epoch" one optimizer step, so warmup and decay are counted in steps as in diffusers' ``get_scheduler``:
warmup is ``lr * i / warmup`` for ``i < warmup``, cosine then decays to ``min_lr`` over the remaining steps.
The list has one value per optimizer step; the optimizer's ``global_step`` indexes it (and is
checkpointed, so a resumed run continues the schedule where it stopped).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

from mindone.utils.cli import UserError

if TYPE_CHECKING:  # MindSpore loads only when an optimizer is built, so --help stays fast
    from mindspore import Parameter, nn

logger = logging.getLogger(__name__)

LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine")
_MINDCV_NAMES = {"constant": "constant", "constant_with_warmup": "constant", "cosine": "cosine_decay"}


def build_lr_schedule(
    name: str, learning_rate: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0
) -> list[float]:
    """Per-step learning rates (length ``total_steps``) for a diffusers-named schedule.

    ``constant`` ignores ``warmup_steps`` (as in diffusers); ``constant_with_warmup`` and ``cosine`` use it.
    """
    from mindcv.scheduler import create_scheduler

    if name not in LR_SCHEDULERS:
        raise UserError(f"--lr_scheduler {name!r}: expected one of {', '.join(LR_SCHEDULERS)}")
    if total_steps < 1:
        raise UserError(f"--max_train_steps {total_steps}: must be at least 1")
    warmup = 0 if name == "constant" else min(max(warmup_steps, 0), total_steps)
    schedule = create_scheduler(
        steps_per_epoch=1,
        scheduler=_MINDCV_NAMES[name],
        lr=learning_rate,
        min_lr=min_lr,
        warmup_epochs=warmup,
        warmup_factor=0.0,
        decay_epochs=total_steps - warmup,
        num_epochs=total_steps,
    )
    return [float(v) for v in schedule]


def build_optimizer(
    params: Sequence[Parameter],
    lr_schedule: Sequence[float],
    weight_decay: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.999,
) -> nn.Optimizer:
    """AdamW (decoupled weight decay on every parameter, as diffusers' scripts): mindcv's, with a fused update."""
    from mindcv.optim.optim_factory import init_group_params

    params = [p for p in params if p.requires_grad]
    if not params:
        raise UserError("nothing to train: every parameter is frozen (check --use_lora / --train_text_encoder)")
    # what mindcv.optim.create_optimizer(opt="adamw", weight_decay_filter="disable") builds, as FlatAdamW
    return _flat_adamw_class()(
        init_group_params(params, weight_decay, "disable", []),
        learning_rate=list(lr_schedule),
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
    )


_FLAT_ADAMW = None


def _flat_adamw_class():
    """mindcv's AdamW with the update run on concatenated parameters (defined lazily: MindSpore loads late).

    mindcv's ``AdamW`` updates each parameter with ~15 small kernels; with hundreds of parameters the
    step is dominated by per-kernel launch cost (tiny UNet on CPU: 494 tensors, ~7,400 kernels, ~110 ms
    of which ~40 ms is compute). This subclass concatenates parameters, moments and gradients into
    buckets of at most ``bucket_elements`` values, applies mindcv's exact element-wise update to each
    bucket and assigns the pieces back. The arithmetic per element is the same sequence of float32
    operations, so results are bit-identical; the parameters, moments (``adam_m.*`` / ``adam_v.*``),
    beta powers and step counter are mindcv's own, so checkpoints are unchanged. Configurations the
    flat path does not cover (per-group lr, mixed weight decay, ``clip``, parallel optimizer, non-float32
    parameters) run mindcv's own ``construct``.
    """
    global _FLAT_ADAMW
    if _FLAT_ADAMW is not None:
        return _FLAT_ADAMW
    import mindspore as ms
    from mindcv.optim.adamw import AdamW
    from mindspore import ops
    from mindspore.ops.auto_generate.gen_ops_prim import SplitWithSize

    one = ms.Tensor(1, ms.int32)
    flatten = ops.MultitypeFuncGraph("flatten")
    assign_flat = ops.MultitypeFuncGraph("assign_flat")

    @flatten.register("Tensor")
    def _flatten(x):
        return x.reshape(-1)

    @assign_flat.register("Tensor", "Tensor")
    def _assign_flat(param, flat):
        return ops.assign(param, flat.reshape(param.shape))

    class FlatAdamW(AdamW):
        def __init__(self, *args, bucket_elements: int = 2**24, bucket_tensors: int = 64, **kwargs):
            super().__init__(*args, **kwargs)
            params = list(self.parameters)
            decays = [float(w) for w in getattr(self, "group_weight_decay", [])]
            self.flat = (
                self.is_group and not self.is_group_lr and not self.clip and not self.use_parallel
                and all(self.optim_filter) and len(set(self.decay_flags)) == 1 and len(set(decays)) == 1
                and all(p.dtype == ms.float32 for p in params)
            )
            self.flat_decay = bool(self.decay_flags[0]) if self.flat else False
            # contiguous [start, end) ranges of at most bucket_elements values and bucket_tensors tensors (a
            # SplitWithSize of many more sections exceeds MindSpore's graph call-depth limit when compiled)
            bounds, start, size = [], 0, 0
            for i, p in enumerate(params):
                if i > start and (size + p.size > bucket_elements or i - start == bucket_tensors):
                    bounds.append((start, i))
                    start, size = i, 0
                size += p.size
            bounds.append((start, len(params)))
            self.bounds = tuple(bounds)
            self.bucket_sizes = tuple(tuple(int(p.size) for p in params[a:b]) for a, b in bounds)
            self.split = SplitWithSize()

        def construct(self, gradients):
            if not self.flat:
                return super().construct(gradients)
            lr = self.get_lr()
            beta1_power = self.beta1_power * self.beta1
            self.beta1_power = beta1_power
            beta2_power = self.beta2_power * self.beta2
            self.beta2_power = beta2_power
            weight_decay = self.weight_decay[0]
            params = self.hyper_map(flatten, self.parameters)
            moments1 = self.hyper_map(flatten, self.moments1)
            moments2 = self.hyper_map(flatten, self.moments2)
            gradients = self.hyper_map(flatten, gradients)
            new_params, new_m, new_v = (), (), ()
            for b in range(len(self.bounds)):
                lo, hi = self.bounds[b]
                param = ops.concat(params[lo:hi])
                m = ops.concat(moments1[lo:hi])
                v = ops.concat(moments2[lo:hi])
                gradient = ops.concat(gradients[lo:hi])
                # mindcv: scale_grad(gradients, reciprocal_scale), then _update_run_op, element for element
                gradient = ops.mul(gradient, ops.cast(self.reciprocal_scale, gradient.dtype))
                next_m = ops.mul(self.beta1, m) + ops.mul(
                    ops.cast(ops.tuple_to_array((1.0,)), ms.float32) - self.beta1, gradient)
                next_v = ops.mul(self.beta2, v) + ops.mul(
                    ops.cast(ops.tuple_to_array((1.0,)), ms.float32) - self.beta2, ops.square(gradient))
                regulate_m = next_m / (one - beta1_power)
                regulate_v = next_v / (one - beta2_power)
                update = regulate_m / (self.eps + ops.sqrt(regulate_v))
                if self.flat_decay:
                    update = ops.mul(weight_decay, param) + update
                next_param = param - ops.mul(lr, update)
                sizes = self.bucket_sizes[b]
                new_params = new_params + self.split(next_param, sizes, 0)
                new_m = new_m + self.split(next_m, sizes, 0)
                new_v = new_v + self.split(next_v, sizes, 0)
            done = self.hyper_map(assign_flat, self.parameters, new_params)
            done = ops.depend(done, self.hyper_map(assign_flat, self.moments1, new_m))
            return ops.depend(done, self.hyper_map(assign_flat, self.moments2, new_v))

    _FLAT_ADAMW = FlatAdamW
    return FlatAdamW


def scaled_learning_rate(
    learning_rate: float, scale_lr: bool, train_batch_size: int, gradient_accumulation_steps: int, world_size: int
) -> float:
    """diffusers' ``--scale_lr``: multiply by the effective batch size (per-device batch x accumulation x ranks)."""
    if not scale_lr:
        return learning_rate
    return learning_rate * train_batch_size * gradient_accumulation_steps * world_size
