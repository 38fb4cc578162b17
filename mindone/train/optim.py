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

from mindone.errors import ConfigError

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
        raise ValueError(f"--lr_scheduler {name!r}: expected one of {', '.join(LR_SCHEDULERS)}")
    if total_steps < 1:
        raise ConfigError(f"--max_train_steps {total_steps}: must be at least 1")
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
    """AdamW (decoupled weight decay on every parameter, as diffusers' scripts): mindcv's, one fused kernel a tensor."""
    from mindcv.optim.optim_factory import init_group_params

    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen (check --use_lora / --train_text_encoder)")
    # what mindcv.optim.create_optimizer(opt="adamw", weight_decay_filter="disable") builds, as FusedAdamW
    return _fused_adamw_class()(
        init_group_params(params, weight_decay, "disable", []),
        learning_rate=list(lr_schedule),
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
    )


_FUSED_ADAMW = None


def _fused_adamw_class():
    """mindcv's AdamW with each parameter's update as one fused kernel (defined lazily: MindSpore loads late).

    mindcv's ``AdamW`` updates each parameter with ~15 small kernels; with hundreds of parameters the step
    is dominated by per-kernel launch cost (tiny UNet on CPU: 494 tensors, ~7,400 kernels). This subclass
    runs MindSpore's ``AdamWeightDecay`` primitive (CPU, GPU and Ascend), which updates the weight and both
    moments in place in one kernel per parameter. That primitive has no bias correction, so it is folded
    into its scalar inputs once per step (``c1 = 1 - beta1^t``, ``c2 = 1 - beta2^t``)::

        lr' = lr * sqrt(c2) / c1,   eps' = eps * sqrt(c2),   decay' = decay * c1 / sqrt(c2)

    which is torch's / mindcv's AdamW, ``w -= lr * (m / c1 / (sqrt(v / c2) + eps) + decay * w)``, regrouped
    (float32 rounding differs in the last bits). The parameters, moments (``adam_m.*`` / ``adam_v.*``), beta
    powers and step counter are mindcv's own, so checkpoints are unchanged. Configurations the fused path
    does not cover (per-group lr, mixed weight decay, ``clip``, a loss scale, parallel optimizer, non-float32
    parameters) run mindcv's own ``construct``.
    """
    global _FUSED_ADAMW
    if _FUSED_ADAMW is not None:
        return _FUSED_ADAMW
    import mindspore as ms
    from mindcv.optim.adamw import AdamW
    from mindspore import ops

    fused_update = ops.MultitypeFuncGraph("fused_adamw_update")
    kernel = ops.AdamWeightDecay()

    @fused_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                           "Tensor")
    def _fused_update(lr, beta1, beta2, eps, decay, param, m, v, gradient):
        return kernel(param, m, v, lr, beta1, beta2, eps, decay, gradient)

    class FusedAdamW(AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            decays = [float(w) for w in getattr(self, "group_weight_decay", [])]
            self.fused = (
                self.is_group and not self.is_group_lr and not self.clip and not self.use_parallel
                and all(self.optim_filter) and len(set(self.decay_flags)) == 1 and len(set(decays)) == 1
                and float(self.loss_scale) == 1.0 and all(p.dtype == ms.float32 for p in self.parameters)
            )
            self.fused_decay = bool(self.decay_flags[0]) if self.fused else False

        def construct(self, gradients):
            if not self.fused:
                return super().construct(gradients)
            lr = self.get_lr()
            beta1_power = self.beta1_power * self.beta1
            self.beta1_power = beta1_power
            beta2_power = self.beta2_power * self.beta2
            self.beta2_power = beta2_power
            c1 = 1.0 - beta1_power
            root_c2 = ops.sqrt(1.0 - beta2_power)
            step_lr = (lr * root_c2 / c1).reshape(())
            eps = (self.eps * root_c2).reshape(())
            if self.fused_decay:
                decay = (self.weight_decay[0] * c1 / root_c2).reshape(())
            else:
                decay = ops.zeros((), ms.float32)
            return self.hyper_map(
                ops.partial(fused_update, step_lr, self.beta1.reshape(()), self.beta2.reshape(()),
                            eps, decay),
                self.parameters, self.moments1, self.moments2, gradients)

    _FUSED_ADAMW = FusedAdamW
    return FusedAdamW


def scaled_learning_rate(
    learning_rate: float, scale_lr: bool, train_batch_size: int, gradient_accumulation_steps: int, world_size: int
) -> float:
    """diffusers' ``--scale_lr``: multiply by the effective batch size (per-device batch x accumulation x ranks)."""
    if not scale_lr:
        return learning_rate
    return learning_rate * train_batch_size * gradient_accumulation_steps * world_size
