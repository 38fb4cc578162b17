"""LoRA: rank-r adapters on the UNet attention projections (optionally the text tower), saved alone.

A wrapped ``nn.Dense`` computes ``W x + b + (alpha / r) * up(down(x))`` with ``down`` [r, in] drawn from
N(0, 1/r) and ``up`` [out, r] zero, so an injected model starts exactly equal to the base model. The
base ``weight`` / ``bias`` keep their original parameter names (``...attn1.to_q.weight``) and the adapter
adds ``...attn1.to_q.lora_down`` / ``lora_up``: base checkpoints still load by name, and an adapter file
holds only ``lora_*`` tensors plus the rank, alpha and targets it was trained with.

Targets: UNet ``attn1`` / ``attn2`` ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (as diffusers' LoRA
training). Text tower (``--lora_text_encoder``): ``attn.out_proj``, ``mlp.c_fc``, ``mlp.c_proj``; OpenCLIP
keeps q/k/v fused in one ``in_proj_weight`` tensor, which is not a Dense layer and is left frozen.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from mindone.errors import CheckpointError, ConfigError
from mindone.train.checkpoint import load_parameters, save_parameters

logger = logging.getLogger(__name__)

UNET_TARGETS = r"^model\.diffusion_model\..*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
TEXT_TARGETS = r"^cond_stage_model\..*\.(attn\.out_proj|mlp\.c_fc|mlp\.c_proj)$"


class LoRADense(nn.Cell):
    """A Dense layer plus a low-rank update; shares the base layer's weight and bias parameters."""

    def __init__(self, base: nn.Dense, rank: int, alpha: float) -> None:
        super().__init__()
        out_dim, in_dim = base.weight.shape
        self.in_channels, self.out_channels = in_dim, out_dim
        self.weight = base.weight
        self.has_bias = base.has_bias
        self.bias = base.bias if base.has_bias else None
        self.rank = rank
        self.scale = float(alpha) / rank
        self.lora_down = Parameter(initializer(Normal(1.0 / rank), (rank, in_dim), ms.float32), name="lora_down")
        self.lora_up = Parameter(initializer("zeros", (out_dim, rank), ms.float32), name="lora_up")

    def construct(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        bias = self.bias.astype(dtype) if self.has_bias else None
        out = ops.dense(x, self.weight.astype(dtype), bias)
        low = ops.dense(ops.dense(x, self.lora_down.astype(dtype)), self.lora_up.astype(dtype))
        return out + low * self.scale

    def merged_dense(self) -> nn.Dense:
        """A plain Dense whose weight is ``W + scale * up @ down`` (the same function, no adapter)."""
        dense = nn.Dense(self.in_channels, self.out_channels, has_bias=self.has_bias)
        delta = self.scale * (self.lora_up.asnumpy().astype(np.float32) @ self.lora_down.asnumpy().astype(np.float32))
        weight = self.weight.asnumpy().astype(np.float32) + delta
        dense.weight.set_data(Tensor(weight, self.weight.dtype))
        if self.has_bias:
            dense.bias.set_data(Tensor(self.bias.asnumpy(), self.bias.dtype))
        return dense


def _child(parent: nn.Cell, key: str) -> nn.Cell:
    return parent._cells[key]  # pylint: disable=protected-access


def _replace(root: nn.Cell, qualified: str, new: nn.Cell) -> None:
    *path, last = qualified.split(".")
    parent = root
    for key in path:
        parent = _child(parent, key)
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        parent[int(last)] = new
    else:
        setattr(parent, last, new)


def _rename_parameters(root: nn.Cell) -> None:
    """Give every parameter its full path under ``root`` again (swapping a child resets its names)."""
    for name, param in root.parameters_and_names():
        param.name = name


def _targets(root: nn.Cell, text_encoder: bool) -> list[str]:
    patterns = [re.compile(UNET_TARGETS)] + ([re.compile(TEXT_TARGETS)] if text_encoder else [])
    return [
        name
        for name, cell in root.cells_and_names()
        if isinstance(cell, nn.Dense) and any(p.match(name) for p in patterns)
    ]


def inject_lora(model: nn.Cell, rank: int = 4, alpha: float | None = None, text_encoder: bool = False) -> list[str]:
    """Wrap the target Dense layers of a LatentDiffusion in :class:`LoRADense`; returns their names."""
    if rank < 1:
        raise ConfigError(f"--lora_rank {rank}: must be at least 1")
    alpha = float(rank if alpha is None else alpha)
    names = _targets(model, text_encoder)
    if not names:
        raise ConfigError("LoRA: no attention projection (attn1/attn2 to_q/to_k/to_v/to_out.0) found in the model")
    cells = dict(model.cells_and_names())
    for name in names:
        _replace(model, name, LoRADense(cells[name], rank, alpha))
    _rename_parameters(model)
    model.lora_config = {"lora_rank": rank, "lora_alpha": alpha, "lora_text_encoder": text_encoder}
    logger.info("LoRA rank %d (alpha %g) on %d layers", rank, alpha, len(names))
    return names


def lora_parameters(model: nn.Cell) -> list[tuple[str, Parameter]]:
    """``(name, parameter)`` of the adapters (``*.lora_down`` / ``*.lora_up``) in model order."""
    return [(name, p) for name, p in model.parameters_and_names() if name.endswith((".lora_down", ".lora_up"))]


def mark_only_lora_trainable(model: nn.Cell) -> None:
    """Freeze every parameter except the adapters."""
    for name, param in model.parameters_and_names():
        param.requires_grad = name.endswith((".lora_down", ".lora_up"))


def save_lora(model: nn.Cell, path: str | os.PathLike) -> Path:
    """Write only the adapter weights (and rank / alpha / targets) to a ``.ckpt``, atomically."""
    params = lora_parameters(model)
    if not params:
        raise ValueError("save_lora: the model has no LoRA adapters")
    return save_parameters(params, path, metadata=dict(getattr(model, "lora_config", {})))


def merge_lora(model: nn.Cell) -> int:
    """Fold every adapter into its base weight and remove it; returns the number merged."""
    wrapped = [(name, cell) for name, cell in model.cells_and_names() if isinstance(cell, LoRADense)]
    for name, cell in wrapped:
        _replace(model, name, cell.merged_dense())
    _rename_parameters(model)
    return len(wrapped)


def apply_lora(model: nn.Cell, lora_ckpt: str | os.PathLike, merge: bool = False) -> nn.Cell:
    """Load a LoRA file saved by :func:`save_lora` into ``model`` (for inference); ``merge`` folds it in.

    Unmerged, the adapters stay separate layers (switchable, a little slower); merged, the model is a
    plain SD model again with the adapted weights.
    """
    path = Path(lora_ckpt)
    if not path.is_file():
        raise CheckpointError(f"--lora {path}: file not found")
    meta = ms.load_checkpoint(str(path))
    try:
        rank = int(_scalar(meta["lora_rank"]))
        alpha = float(_scalar(meta["lora_alpha"]))
        text = bool(_scalar(meta.get("lora_text_encoder", False)))
    except KeyError:
        raise CheckpointError(f"--lora {path}: not a LoRA file (no lora_rank / lora_alpha entries)") from None
    inject_lora(model, rank=rank, alpha=alpha, text_encoder=text)
    load_parameters(lora_parameters(model), path, strict=True)
    if merge:
        merge_lora(model)
    return model


def _scalar(value) -> object:
    """A checkpoint metadata entry (saved as a Tensor or a plain value) as a Python scalar."""
    if isinstance(value, (Tensor, Parameter)):
        return value.asnumpy().item()
    return value
