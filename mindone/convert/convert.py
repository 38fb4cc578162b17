"""Map any SD 2.x weight source onto the original ldm names, check it against a model, load or save it."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mindone.convert.name_maps import build_rules, normalize_legacy_vae_names, normalize_text_encoder_names
from mindone.convert.mapped_pages import release_pages
from mindone.convert.mindspore_ckpt import write_mindspore_checkpoint
from mindone.convert.safetensors_io import write_safetensors
from mindone.convert.sources import read_source
from mindone.errors import CheckpointError

logger = logging.getLogger(__name__)

_MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
_SHOWN = 12


def summarize_names(names: list[str], limit: int = _SHOWN) -> str:
    """Compact listing: ``model_ema.* (688), cond_stage_model.model.transformer.resblocks.23.* (12), ...``."""
    groups: Counter[str] = Counter()
    for name in names:
        if not name.startswith(_MODEL_PREFIXES):
            key = name.split(".", 1)[0]
        else:
            parts = name.split(".")
            numeric = next((i for i, p in enumerate(parts) if p.isdigit()), None)
            key = ".".join(parts[: numeric + 1]) if numeric is not None else name
        groups[key] += 1
    shown = [f"{k}.* ({n})" if n > 1 else (k if k in names else f"{k}.*") for k, n in sorted(groups.items())[:limit]]
    more = len(groups) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _log_all_names(what: str, names: list[str], source: str | Path) -> None:
    """Every name, one per line, at debug level: the full list behind a :func:`summarize_names` summary."""
    logger.debug("%s: all %d %s:\n%s", source, len(names), what, "\n".join(f"  {n}" for n in names))


def _full_list_hint() -> str:
    if logger.isEnabledFor(logging.DEBUG):
        return "every name is logged above"
    return "run with debug logging (-v / --verbose) to log every name"


def _raise_missing(missing: list[str], available: int, source: str | Path) -> None:
    if missing:
        _log_all_names("missing tensors", missing, source)
        hint = " (a different architecture? check the model config)" if len(missing) * 4 > available else ""
        raise CheckpointError(f"{source}: {len(missing)} tensors missing{hint}: {summarize_names(missing)} "
                              f"({_full_list_hint()})")


def to_ldm(tensors: Mapping[str, np.ndarray], layout: str, expected: Mapping[str, tuple[int, ...]],
           model_cfg: Mapping[str, Any], source: str | Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Tensors named and shaped as ``expected`` (the model's ldm layout), plus the unused source names.

    Raises CheckpointError listing the missing tensors, or the tensors whose shape does not match.
    """
    if layout == "diffusers":
        tensors = normalize_text_encoder_names(normalize_legacy_vae_names(dict(tensors)))
        rules = build_rules(list(expected), model_cfg)
        missing = sorted({s for r in rules.values() for s in r.sources if s not in tensors})
        _raise_missing(missing, len(tensors), source)
        ldm = {name: rule.forward(tensors) for name, rule in rules.items()}
        used = {s for r in rules.values() for s in r.sources}
    else:
        missing = sorted(set(expected) - set(tensors))
        _raise_missing(missing, len(tensors), source)
        ldm = {name: tensors[name] for name in expected}
        used = set(expected)
    wrong = [f"{n} {tuple(ldm[n].shape)} != {tuple(s)}" for n, s in expected.items() if tuple(ldm[n].shape) != tuple(s)]
    if wrong:
        raise CheckpointError(f"{source}: {len(wrong)} tensors have the wrong shape (does the model config match?): "
                              + "; ".join(wrong[:5]))
    return ldm, sorted(set(tensors) - used)


def ema_names(name: str) -> tuple[str, ...]:
    """Where an EMA copy of ``name`` is stored: mindone training (``ema.<name>``) or ldm's LitEma
    (``model_ema.<name under model., dots removed>``, UNet only)."""
    names = (f"ema.{name}",)
    if name.startswith("model."):
        names += ("model_ema." + name[len("model."):].replace(".", ""),)
    return names


def substitute_ema(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], source: str | Path
                   ) -> tuple[dict[str, np.ndarray], int]:
    """Tensors with every expected weight that has an EMA copy replaced by it (EMA keys consumed).

    Raises CheckpointError when the source holds no EMA weights at all.
    """
    out = dict(tensors)
    replaced = 0
    for name in expected:
        ema = next((e for e in ema_names(name) if e in out), None)
        if ema is not None:
            out[name] = out.pop(ema)
            replaced += 1
    if not replaced:
        raise CheckpointError(f"{source}: no EMA weights (ema.* or model_ema.*) to use; drop the EMA option")
    return out, replaced


def expected_layout(model) -> dict[str, tuple[int, ...]]:
    """ldm name -> shape of every parameter of a LatentDiffusion (or any cell)."""
    return {name: tuple(param.shape) for name, param in model.parameters_and_names()}


def model_layout_config(model) -> dict[str, dict[str, Any]]:
    """The architecture numbers the diffusers rename tables need, read from a LatentDiffusion."""
    return {"unet": dict(model.model.diffusion_model.layout), "vae": dict(model.first_stage_model.layout)}


def read_as_ldm(path: str | Path, expected: Mapping[str, tuple[int, ...]], model_cfg: Mapping[str, Any],
                use_ema: bool = False) -> tuple[dict[str, np.ndarray], list[str], str]:
    """Read ``path`` (any supported source) and map it to ``expected``; returns (tensors, extra names, layout).

    ``use_ema`` takes each weight's EMA copy where the file has one (training checkpoints).
    """
    tensors, layout = read_source(path)
    if use_ema:
        tensors, replaced = substitute_ema(tensors, expected, path)
        logger.info("%s: using EMA weights for %d of %d tensors", path, replaced, len(expected))
    ldm, extra = to_ldm(tensors, layout, expected, model_cfg, path)
    if extra:  # the one place this is logged: load_sd_weights and convert_weights.py rely on it
        logger.info("%s: skipped %d tensors the model does not use: %s", path, len(extra), summarize_names(extra))
        _log_all_names("skipped tensors", extra, path)
    return ldm, extra, layout


def load_sd_weights(model, path: str | Path, use_ema: bool = False) -> dict[str, Any]:
    """Load an SD 2.x checkpoint (original .ckpt / .safetensors, diffusers folder, MindSpore .ckpt) into ``model``.

    Arrays are cast to each parameter's dtype. ``use_ema`` loads the EMA copies (``ema.<name>`` from
    mindone training, ``model_ema.*`` from ldm) where present. Returns a report: ``source``, ``layout``,
    ``loaded`` (tensor count), ``extra`` (source tensors not used, e.g. model_ema.*). Raises CheckpointError
    listing missing tensors or shape mismatches; the model is left untouched in that case.
    """
    import mindspore as ms

    ldm, extra, layout = read_as_ldm(path, expected_layout(model), model_layout_config(model), use_ema)
    count = len(ldm)
    for name, param in model.parameters_and_names():
        dtype = ms.dtype_to_nptype(param.dtype)
        # pop, and give back a memory-mapped source's pages: peak memory stays near one model copy
        array = ldm.pop(name)
        param.set_data(ms.Tensor(np.ascontiguousarray(array, dtype=dtype)))
        release_pages(array)
    logger.info("loaded %d tensors from %s (%s layout)", count, path, layout)
    return {"source": str(path), "layout": layout, "loaded": count, "extra": extra}


def save_mindspore_checkpoint(tensors: Mapping[str, np.ndarray], target: str | Path) -> None:
    """Write ``tensors`` (dtype kept) as a MindSpore checkpoint, atomically, one tensor at a time."""
    write_mindspore_checkpoint(target, tensors)


def save_ldm_safetensors(tensors: Mapping[str, np.ndarray], target: str | Path) -> None:
    """Write ``tensors`` in the original layout as .safetensors (dtype kept), atomically."""
    write_safetensors(target, tensors, metadata={"format": "pt"})
