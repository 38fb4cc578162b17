"""Read any supported SD 2.x weight source into NumPy arrays, without MindSpore.

Supported: an original ldm ``.ckpt`` (torch zip pickle, read weights-only) or ``.safetensors``; a
diffusers folder (``unet/``, ``vae/``, ``text_encoder/`` with safetensors or ``.bin``, optionally
sharded or ``.fp16`` variants); a MindSpore ``.ckpt`` (read with MindSpore when the file is one).
Diffusers tensors are keyed ``<component>/<name>`` so the three parts share one namespace.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mindone.convert.safetensors_io import read_safetensors
from mindone.convert.torch_pickle import read_torch_checkpoint
from mindone.utils.cli import UserError

logger = logging.getLogger(__name__)

DIFFUSERS_COMPONENTS = ("unet", "vae", "text_encoder")
_WEIGHT_NAMES = ("diffusion_pytorch_model", "model", "pytorch_model")
_VARIANTS = ("", ".fp16")


def _torch_load(path: Path) -> Any:
    """torch.load(weights_only=True) when torch is installed; the built-in restricted reader otherwise.

    Both refuse to execute code. torch's reader also refuses files that merely *contain* other
    objects (e.g. a Lightning callback next to the weights); those go to the restricted reader,
    which replaces such objects by inert placeholders.
    """
    try:
        import torch  # noqa: F401  (optional, test-only dependency)
    except ImportError:
        return read_torch_checkpoint(path)
    if not zipfile.is_zipfile(path):
        return read_torch_checkpoint(path)  # raises the clear "not a torch zip" error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        logger.info("%s: torch weights-only load refused non-tensor objects (%s); using the restricted reader",
                    path, str(err).splitlines()[0][:120])
        return read_torch_checkpoint(path)
    except (RuntimeError, TypeError, ValueError) as err:
        # e.g. a tensor reaching outside its storage: the restricted reader names the record and the file
        logger.debug("%s: torch.load failed (%s); retrying with the restricted reader",
                     path, str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
        return read_torch_checkpoint(path)
    return _torch_to_numpy(obj)


def _torch_to_numpy(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(obj, dict):
        return {k: _torch_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_torch_to_numpy(v) for v in obj)
    return obj


def _tensor_dict(obj: Any, path: Path) -> dict[str, np.ndarray]:
    """The flat name -> array mapping of an unpickled checkpoint (unwrapping Lightning's ``state_dict``)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    if not tensors:
        raise UserError(f"{path}: no tensors found in the checkpoint")
    return tensors


def _read_mindspore(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    try:
        params = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as err:
        raise UserError(f"{path}: neither a torch zip checkpoint nor a MindSpore checkpoint "
                        f"({str(err).splitlines()[0][:200]})") from err
    return {name: param.asnumpy() for name, param in params.items()}


def _read_component(folder: Path) -> dict[str, np.ndarray]:
    """Weights of one diffusers component folder (single file, sharded index, fp16 variant)."""
    for variant in _VARIANTS:
        for stem in _WEIGHT_NAMES:
            for ext, reader in ((".safetensors", read_safetensors), (".bin", lambda p: _tensor_dict(_torch_load(p), p))):
                single = folder / f"{stem}{variant}{ext}"
                if single.is_file():
                    return reader(single)
                index = folder / f"{stem}{variant}{ext}.index.json"
                if index.is_file():
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                    merged: dict[str, np.ndarray] = {}
                    for shard in shards:
                        merged.update(reader(folder / shard))
                    return merged
    raise UserError(f"{folder}: no weights file (expected e.g. diffusion_pytorch_model.safetensors or model.safetensors)")


def read_source(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Tensors of ``path`` and its layout: ``"ldm"`` (original / MindSpore names) or ``"diffusers"``."""
    path = Path(path)
    if path.is_dir():
        present = [c for c in DIFFUSERS_COMPONENTS if (path / c).is_dir()]
        if not present:
            raise UserError(f"{path}: a directory but not a diffusers model folder (no unet/, vae/ or text_encoder/)")
        tensors = {}
        for component in present:
            tensors.update({f"{component}/{k}": v for k, v in _read_component(path / component).items()})
        return tensors, "diffusers"
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    if path.suffix == ".safetensors":
        return read_safetensors(path), "ldm"
    if zipfile.is_zipfile(path):
        return _tensor_dict(_torch_load(path), path), "ldm"
    return _read_mindspore(path), "ldm"
