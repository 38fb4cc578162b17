"""``FusedAdamW``: mindcv's AdamW with each parameter's update as one fused kernel.

mindcv's ``AdamW`` updates each parameter with ~15 small kernels; with hundreds of parameters the step is
dominated by per-kernel launch cost (tiny UNet on CPU: 494 tensors, ~7,400 kernels). This subclass runs
MindSpore's ``AdamWeightDecay`` primitive (CPU, GPU and Ascend), which updates the weight and both moments
in place in one kernel per parameter. That primitive has no bias correction, so it is folded into its scalar
inputs once per step (``c1 = 1 - beta1^t``, ``c2 = 1 - beta2^t``)::

    lr' = lr * sqrt(c2) / c1,   eps' = eps * sqrt(c2),   decay' = decay * c1 / sqrt(c2)

which is torch's / mindcv's AdamW, ``w -= lr * (m / c1 / (sqrt(v / c2) + eps) + decay * w)``, regrouped
(float32 rounding differs in the last bits). The parameters, moments (``adam_m.*`` / ``adam_v.*``), beta
powers and step counter are mindcv's own, so checkpoints are unchanged. Configurations the fused path does
not cover (per-group lr, mixed weight decay, ``clip``, a loss scale, parallel optimizer, non-float32
parameters) run mindcv's own ``construct``.

It reads these attributes of mindcv's ``AdamW`` (set in its and MindSpore's ``Optimizer.__init__``):
:data:`MINDCV_ATTRIBUTES`. ``tests/test_perf_regressions.py`` checks that they exist and that the fused
update equals mindcv's, so a mindcv or MindSpore release that changes them fails there, not in training.
"""

from __future__ import annotations

import mindspore as ms
from mindcv.optim.adamw import AdamW
from mindspore import ops

# mindcv / MindSpore optimizer internals this class relies on (see the module docstring).
MINDCV_ATTRIBUTES = ("is_group", "is_group_lr", "clip", "use_parallel", "optim_filter", "decay_flags",
                     "loss_scale", "parameters", "moments1", "moments2", "beta1", "beta2", "beta1_power",
                     "beta2_power", "eps", "weight_decay", "hyper_map", "get_lr")

_fused_update = ops.MultitypeFuncGraph("fused_adamw_update")
_kernel = ops.AdamWeightDecay()


@_fused_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _update_one(lr, beta1, beta2, eps, decay, param, m, v, gradient):
    return _kernel(param, m, v, lr, beta1, beta2, eps, decay, gradient)


class FusedAdamW(AdamW):
    """mindcv's ``AdamW`` (same constructor), one ``AdamWeightDecay`` kernel per parameter where it applies;
    ``fused`` says whether it does."""

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
            ops.partial(_fused_update, step_lr, self.beta1.reshape(()), self.beta2.reshape(()), eps, decay),
            self.parameters, self.moments1, self.moments2, gradients)
