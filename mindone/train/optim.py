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
    from mindone.train.fused_adamw import FusedAdamW

    # what mindcv.optim.create_optimizer(opt="adamw", weight_decay_filter="disable") builds, as FusedAdamW
    return FusedAdamW(
        init_group_params(params, weight_decay, "disable", []),
        learning_rate=list(lr_schedule),
        weight_decay=weight_decay,
        beta1=beta1,
        beta2=beta2,
    )


def scaled_learning_rate(
    learning_rate: float, scale_lr: bool, train_batch_size: int, gradient_accumulation_steps: int, world_size: int
) -> float:
    """diffusers' ``--scale_lr``: multiply by the effective batch size (per-device batch x accumulation x ranks)."""
    if not scale_lr:
        return learning_rate
    return learning_rate * train_batch_size * gradient_accumulation_steps * world_size
