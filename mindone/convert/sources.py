"""Read any supported SD 2.x weight source into NumPy arrays, without MindSpore.

Supported: an original ldm ``.ckpt`` (torch zip pickle, read weights-only) or ``.safetensors``; a
diffusers folder (``unet/``, ``vae/``, ``text_encoder/`` with safetensors or ``.bin``, optionally
sharded or ``.fp16`` variants); a MindSpore ``.ckpt`` (read by :mod:`mindone.convert.mindspore_ckpt`,
memory-mapped, without MindSpore's free-memory check). Diffusers tensors are keyed
``<component>/<name>`` so the three parts share one namespace. Files are data: nothing in them runs,
and a folder's index files may only name weight files inside that folder.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mindone.convert.mindspore_ckpt import read_mindspore_checkpoint
from mindone.convert.safetensors_io import read_safetensors
from mindone.convert.torch_pickle import InvalidTensor, check_archive, check_geometry, read_torch_checkpoint
from mindone.errors import CheckpointError

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
    with zipfile.ZipFile(path) as archive:
        check_archive(archive, path)  # torch would inflate compressed records whatever size they claim
    try:
        return _torch_to_numpy(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except InvalidTensor as err:
        logger.debug("%s: %s; retrying with the restricted reader", path, err)
        return read_torch_checkpoint(path)  # names the storage record in its error
    except pickle.UnpicklingError as err:
        logger.info("%s: torch weights-only load refused non-tensor objects (%s); using the restricted reader",
                    path, str(err).splitlines()[0][:120])
        return read_torch_checkpoint(path)
    except (RuntimeError, TypeError, ValueError) as err:
        # e.g. a tensor reaching outside its storage: the restricted reader names the record and the file
        logger.debug("%s: torch.load failed (%s); retrying with the restricted reader",
                     path, str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
        return read_torch_checkpoint(path)


def _torch_to_numpy(obj: Any) -> Any:
    """NumPy views of the tensors in ``obj``; raises InvalidTensor for one larger than its storage."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensor = obj.detach()
        check_geometry(tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1), tensor.storage_offset(),
                       tuple(tensor.shape), tuple(tensor.stride()), "tensor")
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
        raise CheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found in the checkpoint")
    return tensors


def _read_mindspore(path: Path) -> dict[str, np.ndarray]:
    try:
        params = read_mindspore_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; not a torch zip checkpoint either") from err
    return {name: value for name, value in params.items() if isinstance(value, np.ndarray)}


def _allowed_roots(model_folder: Path) -> tuple[Path, ...]:
    """Where a model folder's files may resolve: the folder, and for a Hugging Face cache snapshot
    (``models--org--name/snapshots/<revision>``, whose files are symlinks into ``../../blobs``) the
    cache entry of that one model."""
    root = model_folder.resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root, root.parent.parent
    return (root,)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    resolved = path.resolve()
    return any(resolved == r or r in resolved.parents for r in roots)


def _weight_file(folder: Path, name: Any, roots: tuple[Path, ...], named_in: Path | None = None) -> Path:
    """``folder / name`` once it is known to stay inside ``roots``: no absolute path, no ``..``, no
    symlink leading out. ``named_in`` is the index file the name came from (for the error)."""
    where = f"{named_in}: weight_map entry {name!r:.200}" if named_in else f"{folder / str(name)}"
    if not isinstance(name, str) or not name or "\0" in name:
        raise CheckpointError(f"{where}: not a file name")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise CheckpointError(f"{where}: names a file outside the model folder (absolute path or '..'); refused")
    candidate = folder / relative
    if not _inside(candidate, roots):
        raise CheckpointError(f"{where}: resolves to {candidate.resolve()}, outside the model folder (a symlink "
                              "pointing out?); refused")
    return candidate


def _shard_names(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a readable weights index ({type(err).__name__}: {err})") from err
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: weight_map is a {type(weight_map).__name__}, not a mapping")
    bad = next((key for key, value in weight_map.items() if not isinstance(value, str)), None)
    if bad is not None:
        raise CheckpointError(f"{index}: weight_map entry {bad!r:.100} does not name a file")
    return sorted(set(weight_map.values()))


def _read_component(folder: Path, roots: tuple[Path, ...]) -> dict[str, np.ndarray]:
    """Weights of one diffusers component folder (single file, sharded index, fp16 variant)."""
    for variant in _VARIANTS:
        for stem in _WEIGHT_NAMES:
            for ext, reader in ((".safetensors", read_safetensors), (".bin", lambda p: _tensor_dict(_torch_load(p), p))):
                single = folder / f"{stem}{variant}{ext}"
                if single.is_file():
                    return reader(_weight_file(folder, single.name, roots))
                index = folder / f"{stem}{variant}{ext}.index.json"
                if index.is_file():
                    shards = [_weight_file(folder, name, roots, named_in=index) for name in _shard_names(index)]
                    merged: dict[str, np.ndarray] = {}
                    for shard in shards:
                        merged.update(reader(shard))
                    return merged
    raise CheckpointError(f"{folder}: no weights file "
                          "(expected e.g. diffusion_pytorch_model.safetensors or model.safetensors)")


def read_source(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """Tensors of ``path`` and its layout: ``"ldm"`` (original / MindSpore names) or ``"diffusers"``."""
    path = Path(path)
    if path.is_dir():
        present = [c for c in DIFFUSERS_COMPONENTS if (path / c).is_dir()]
        if not present:
            raise CheckpointError(f"{path}: a directory but not a diffusers model folder "
                                  "(no unet/, vae/ or text_encoder/)")
        roots = _allowed_roots(path)
        tensors = {}
        for component in present:
            tensors.update({f"{component}/{k}": v for k, v in _read_component(path / component, roots).items()})
        return tensors, "diffusers"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:  # the reason (permissions, I/O error), not a guess about the format
        raise CheckpointError(f"{path}: cannot read ({err.strerror or err})") from err
    if path.suffix == ".safetensors":
        return read_safetensors(path), "ldm"
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        return _tensor_dict(_torch_load(path), path), "ldm"
    if head[:1] == b"\x80":  # a bare pickle: torch.save before 1.6 (the reader says so)
        return _tensor_dict(read_torch_checkpoint(path), path), "ldm"
    return _read_mindspore(path), "ldm"
