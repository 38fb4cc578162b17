"""Training checkpoints: every N steps, keep the last K, written atomically, resumable.

Layout (diffusers' names)::

    <output_dir>/checkpoints/checkpoint-<global_step>/train_state.ckpt   model + optimizer + EMA + loss scale
    <output_dir>/checkpoints/checkpoint-<global_step>/meta.json          global step, data position, config

A checkpoint is written into a hidden temporary directory (``.checkpoint-<step>.<random>.tmp``) that is
renamed into place only when complete, so a run killed mid-write leaves either the previous set of
checkpoints or the new one, never a half-written ``checkpoint-<step>``; the next run sweeps the
leftover temporaries. ``train_state.ckpt`` keeps the model's own parameter names (the original SD
names), so it also loads as model weights (extra optimizer keys are then reported and skipped).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor

from mindone.convert.mapped_pages import release_pages
from mindone.convert.mindspore_ckpt import read_mindspore_checkpoint
from mindone.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

STATE_FILE = "train_state.ckpt"
META_FILE = "meta.json"
_CKPT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")

# (name, parameter) pairs. Names are passed explicitly rather than read from ``Parameter.name``: MindSpore
# rewrites ``Parameter.name`` whenever a cell holding the model is attached under another cell with
# auto-prefixing on, while the path from the model's root (``model.parameters_and_names()``) is stable.
NamedParams = Sequence[Tuple[str, Parameter]]


def named(params: Iterable[Parameter]) -> list[tuple[str, Parameter]]:
    """Pair parameters with their current names (for state whose names are fixed at creation)."""
    return [(p.name, p) for p in params]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_parameters(params: NamedParams, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``(name, parameter)`` pairs to a MindSpore ``.ckpt`` atomically; ``metadata``: str/int/float/bool."""
    path = Path(path)
    if path.suffix != ".ckpt":
        raise ValueError(f"{path}: a MindSpore checkpoint name must end with .ckpt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp_file = tmp_dir / path.name
        names = [name for name, _ in params]
        if len(set(names)) != len(names):
            raise ValueError("save_parameters: duplicate parameter names")
        entries = [{"name": name, "data": p} for name, p in params]
        ms.save_checkpoint(entries, str(tmp_file), append_dict=metadata or None)
        with open(tmp_file, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_file, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def load_parameters(params: NamedParams, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Set each ``(name, parameter)`` from the ``.ckpt`` entry of that name; returns the file's other entries.

    ``strict``: a parameter missing from the file is a :class:`~mindone.errors.CheckpointError` (listing the
    first names).
    Shapes must match. Values are cast to each parameter's dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    # memory-mapped, tensor by tensor: ms.load_checkpoint holds the whole file and refuses one larger than free RAM
    state = read_mindspore_checkpoint(path)
    missing = [name for name, _ in params if name not in state]
    if missing and strict:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise CheckpointError(f"{path}: missing {len(missing)} parameter(s): {shown}")
    for name, p in params:
        if name not in state:
            continue
        value = np.asarray(state[name])
        if tuple(value.shape) != tuple(p.shape):
            raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, the model expects {tuple(p.shape)}")
        p.set_data(Tensor(value, p.dtype))
        release_pages(value)
    names = {name for name, _ in params}
    return {k: v for k, v in state.items() if k not in names}


@dataclass(frozen=True, kw_only=True)
class TrainMeta:
    """What ``meta.json`` holds besides the weights: the data position and the settings that fix it.

    ``batches_seen`` (micro-batches of this rank, ``global_step × gradient_accumulation_steps``) maps the
    resumed run back to its place in the epoch plan; ``epoch`` and ``steps_per_epoch`` are for people and
    tools. The position is exact only when :data:`POSITION_KEYS` are unchanged on resume.
    """

    global_step: int
    batches_seen: int
    epoch: int
    steps_per_epoch: int
    world_size: int
    train_batch_size: int
    gradient_accumulation_steps: int
    seed: int
    model_config: str | None = None
    pretrained_model_path: str | None = None
    use_lora: bool = False

    # The settings whose change moves the data position (a resume with other values warns, then goes on).
    POSITION_KEYS = ("world_size", "train_batch_size", "gradient_accumulation_steps")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=_json_default)

    @classmethod
    def from_json(cls, text: str, source: str | os.PathLike = "meta.json") -> "TrainMeta":
        """Parse ``meta.json``; a missing field is a :class:`~mindone.errors.CheckpointError` naming it."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source}: not valid JSON ({err.msg}, line {err.lineno})") from None
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in raw]
        if missing:
            raise CheckpointError(f"{source}: missing {', '.join(missing)}")
        return cls(**{name: raw[name] for name in names if name in raw})

    def position_changes(self, **current: Any) -> list[tuple[str, Any, Any]]:
        """``(key, current value, saved value)`` for every :data:`POSITION_KEYS` entry that differs."""
        return [(key, current[key], getattr(self, key)) for key in self.POSITION_KEYS
                if key in current and current[key] != getattr(self, key)]


class CheckpointManager:
    """Saves, lists, prunes and finds training checkpoints under ``<output_dir>/checkpoints``."""

    def __init__(self, output_dir: str | os.PathLike, total_limit: int | None = None) -> None:
        if total_limit is not None and total_limit < 1:
            raise ConfigError(f"--checkpoints_total_limit {total_limit}: must be at least 1 (or unset)")
        self.root = Path(output_dir) / "checkpoints"
        self.total_limit = total_limit

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (those with a meta file), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _CKPT_DIR_RE.match(child.name)
            if match and (child / META_FILE).is_file() and (child / STATE_FILE).is_file():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def resolve(self, resume_from: str | None) -> Path | None:
        """``None`` -> None; ``latest`` -> newest complete checkpoint or None; else the given directory."""
        if not resume_from:
            return None
        if resume_from == "latest":
            return self.latest()
        path = Path(resume_from)
        if not (path / META_FILE).is_file() or not (path / STATE_FILE).is_file():
            raise CheckpointError(f"--resume_from_checkpoint {path}: not a complete checkpoint directory "
                                  f"(expected {STATE_FILE} and {META_FILE})")
        return path

    def remove_temporaries(self) -> int:
        """Delete half-written checkpoints left by a killed run; returns how many were removed."""
        if not self.root.is_dir():
            return 0
        stale = [p for p in self.root.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return len(stale)

    def save(self, params: NamedParams, meta: TrainMeta) -> Path:
        """Write ``checkpoint-<meta.global_step>`` atomically, then drop the oldest beyond ``total_limit``."""
        step = meta.global_step
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"checkpoint-{step}"
        tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", suffix=".tmp", dir=self.root))
        try:
            save_parameters(params, tmp / STATE_FILE)
            meta_text = meta.to_json()
            with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
                fh.write(meta_text)
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():  # re-saving a step (a resumed run passing it again): replace the old one
                old = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.old.", suffix=".tmp", dir=self.root))
                os.replace(final, old / final.name)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        logger.info("saved checkpoint %s", final)
        return final

    def _prune(self) -> None:
        if self.total_limit is None:
            return
        found = self.checkpoints()
        for _, path in found[: max(0, len(found) - self.total_limit)]:
            shutil.rmtree(path, ignore_errors=True)
            logger.info("removed old checkpoint %s", path)

    @staticmethod
    def load(path: str | os.PathLike, params: NamedParams) -> TrainMeta:
        """Restore ``params`` from ``path/train_state.ckpt``; returns its :class:`TrainMeta`."""
        path = Path(path)
        meta = TrainMeta.from_json((path / META_FILE).read_text(encoding="utf-8"), path / META_FILE)
        load_parameters(params, path / STATE_FILE, strict=True)
        return meta


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
