"""Cached latents: the contract between ``encode_latents.py`` (the writer) and the loader (the reader).

A latent dataset has the webdataset layout (``part_<N>_stats.csv`` with ``file_path,num_samples``, tar
shards under ``part_<N>/``), and one more file at its root, ``latents.json`` (:class:`LatentInfo`). Per
sample, a shard holds:

- ``<key>.moments.npy``: the frozen VAE's posterior moments of the image after the resize and centre crop,
  mean and log-variance concatenated on the channel axis, ``[2C, h, w]``, float16 or float32 (``.npy``
  v1, read with ``allow_pickle=False``);
- ``<key>.txt``: the caption as the image dataset had it (cleaning and tokenizing happen at load time, so
  caption dropout and the tokenizer work exactly as for images);
- ``<key>.json``: the source sample's json, when it had one (so the load-time filters still apply);
- ``<key>.text.npy`` (optional, ``encode_latents.py --cache_text``): the frozen text encoder's output for
  the cleaned caption, ``[77, width]``; the root then also holds ``empty_text.npy``, the output for the
  empty caption, which caption dropout swaps in. Used only while the text encoder stays frozen.

Members group into samples as in any shard (:mod:`mindone.data.wds_sample`), with the moments as the
payload: a group is a sample when it holds ``moments.npy`` and ``txt``, and the loader addresses those only.

Training draws the posterior sample ``mean + exp(logvar / 2) * noise`` with the same host-drawn noise as
it would from images, so N steps on the latents of a dataset and N steps on its images take the same
path. The crop is fixed at encode time (centre), and a flipped image has other moments, so
``random_flip`` and random crops have no cached counterpart: the trainer refuses the flip and ignores
the crop.
"""

from __future__ import annotations

import io
import json
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import numpy as np

from mindone.errors import ConfigError, DataError

MOMENTS_EXT = "moments.npy"
TEXT_EXT = "text.npy"
INFO_FILE = "latents.json"
EMPTY_TEXT_FILE = "empty_text.npy"
DTYPES = {"fp16": np.float16, "fp32": np.float32}


class BadLatents(ValueError):
    """A moments member that is not what the contract says; the loader counts it as ``corrupt_latents``."""


@dataclass(frozen=True)
class LatentInfo:
    """What every sample of a latent dataset shares; written once at its root as ``latents.json``."""

    resolution: int  # image side the latents were encoded at
    channels: int  # C of the latents (the moments hold 2C)
    height: int
    width: int
    dtype: str  # fp16 | fp32
    model_config: str  # the model config the VAE came from (for the record)
    pretrained_model_path: str | None
    text_width: int = 0  # width of the cached text embeddings; 0: not cached

    @property
    def channels_hw(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def write(self, root: Path) -> None:
        from mindone.utils.atomic import atomic_write_text

        atomic_write_text(Path(root) / INFO_FILE, json.dumps(asdict(self), indent=1) + "\n")

    @staticmethod
    def root_of(data_path) -> Path:
        """The folder of the dataset ``data_path`` names (itself, or the folder of its first csv)."""
        if isinstance(data_path, (list, tuple)):
            data_path = data_path[0]
        first = Path(str(data_path).split(",")[0].strip()).expanduser()
        return first if first.is_dir() else first.parent

    @classmethod
    def of_data_path(cls, data_path) -> "LatentInfo":
        """The info of the dataset ``data_path`` names."""
        return cls.read(cls.root_of(data_path))

    @classmethod
    def read(cls, root: str | Path) -> "LatentInfo":
        path = Path(root) / INFO_FILE
        try:
            data = json.loads(path.read_text())
            return cls(**{k: data[k] if f.default is MISSING else data.get(k, f.default)
                          for k, f in cls.__dataclass_fields__.items()})
        except FileNotFoundError:
            raise DataError(f"{path}: missing (not a latent dataset? write one with encode_latents.py)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a latents.json of this version ({err})") from None

    def check(self, *, resolution: int, latent_shape: tuple[int, int, int]) -> None:
        """Refuse training at another resolution or latent shape than the one encoded."""
        if (self.channels, self.height, self.width) != tuple(latent_shape) or self.resolution != resolution:
            raise ConfigError(f"latents were encoded at {self.resolution} px as {self.channels}x{self.height}x"
                              f"{self.width}; training asks {resolution} px ({'x'.join(map(str, latent_shape))}):"
                              " re-encode with --resolution or train at the encoded one")


def array_bytes(array: np.ndarray, dtype: str) -> bytes:
    """An ``.npy`` member or file (v1, no pickle) holding ``array`` in ``dtype`` (fp16 | fp32)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array).astype(DTYPES[dtype]), allow_pickle=False)
    return buf.getvalue()


def moments_bytes(mean: np.ndarray, logvar: np.ndarray, dtype: str) -> bytes:
    """One sample's ``.moments.npy`` member: ``[2C, h, w]`` in ``dtype`` (fp16 | fp32)."""
    return array_bytes(np.concatenate([mean, logvar], axis=0), dtype)


def read_array(data: bytes, shape: tuple[int, ...] | None = None, ndim: int | None = None) -> np.ndarray:
    """float32 array from ``.npy`` bytes, of exactly ``shape`` (or ``ndim`` dims) when given;
    :class:`BadLatents` when it is anything else (an object array, another dtype or shape, NaN...)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BadLatents(f"not an npy array ({err})") from None
    if array.dtype not in (np.float16, np.float32):
        raise BadLatents(f"expected float16/32, got {array.dtype}")
    if (shape is not None and array.shape != tuple(shape)) or (ndim is not None and array.ndim != ndim):
        raise BadLatents(f"expected shape {shape or f'of {ndim} dims'}, got {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise BadLatents("non-finite values")
    return array


def read_moments(data: bytes, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """float32 ``[2C, h, w]`` from a ``.moments.npy`` member (``shape`` is the latents' ``(C, h, w)``)."""
    if shape is not None:
        return read_array(data, (2 * shape[0], shape[1], shape[2]))
    array = read_array(data, ndim=3)
    if array.shape[0] % 2:
        raise BadLatents(f"expected [2C, h, w], got {array.shape}")
    return array


def cached_empty_text(data_path) -> np.ndarray:
    """The empty caption's cached embedding of the latent dataset ``data_path`` names."""
    info = LatentInfo.of_data_path(data_path)
    if not info.text_width:
        raise DataError(f"{data_path}: its latents hold no text embeddings (encode with --cache_text)")
    path = LatentInfo.root_of(data_path) / EMPTY_TEXT_FILE
    try:
        return read_array(path.read_bytes(), ndim=2)
    except (OSError, BadLatents) as err:
        raise DataError(f"{path}: unreadable ({err})") from None
