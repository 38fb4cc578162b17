"""Model yaml configs (configs/model/*.yaml) -> LatentDiffusion."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml

from mindone.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"
_SECTIONS = ("unet", "vae", "text_encoder")
_TOP_LEVEL = {"model", "scale_factor", "parameterization", "zero_terminal_snr", "image_size"}


def load_model_config(path: str | Path) -> dict[str, Any]:
    """Read a model config: a yaml path, or a bundled name (``tiny``, ``v2-base-512-eps``, ``v2-768-v``)."""
    candidate = Path(path)
    if not candidate.is_file() and not candidate.suffix and (CONFIG_DIR / f"{path}.yaml").is_file():
        candidate = CONFIG_DIR / f"{path}.yaml"
    if not candidate.is_file():
        bundled = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"model config {path}: no such file (bundled configs: {bundled})")
    try:
        cfg = yaml.safe_load(candidate.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"model config {candidate}: invalid yaml ({str(err).splitlines()[0]})") from err
    _validate(cfg, candidate)
    return cfg


def _validate(cfg: Any, source: Path) -> None:
    from mindone.models.text_encoder import OpenCLIPTextEncoder
    from mindone.models.unet import UNetModel
    from mindone.models.vae import AutoencoderKL

    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ConfigError(f"model config {source}: expected a mapping with a 'model:' section")
    unknown = set(cfg) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"model config {source}: unknown top-level keys {sorted(unknown)}")
    for section, cls in zip(_SECTIONS, (UNetModel, AutoencoderKL, OpenCLIPTextEncoder)):
        params = cfg["model"].get(section)
        if not isinstance(params, dict):
            raise ConfigError(f"model config {source}: missing section model.{section}")
        allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
        bad = set(params) - allowed
        if bad:
            raise ConfigError(f"model config {source}: unknown keys in model.{section}: {sorted(bad)}")


def size_multiple(cfg: dict[str, Any]) -> int:
    """Image sides must divide by the VAE's and then the UNet's downsampling: 8 * 8 = 64 for SD 2.x."""
    model = cfg["model"]
    return 2 ** (len(model["vae"].get("ch_mult", [1, 2, 4, 4])) - 1) * 2 ** (len(model["unet"]["channel_mult"]) - 1)


def build_model(cfg: dict[str, Any]):
    """Build a randomly initialised LatentDiffusion from a config dict (see ``load_model_config``).

    Wrap the call in ``mindspore.nn.utils.no_init_parameters()`` to skip initialising the weights
    when a checkpoint is loaded right after (``mindone.convert.load_sd_weights`` then fills them).
    """
    from mindone.models.stable_diffusion import LatentDiffusion
    from mindone.models.text_encoder import OpenCLIPTextEncoder
    from mindone.models.unet import UNetModel
    from mindone.models.vae import AutoencoderKL

    model_cfg = cfg["model"]
    return LatentDiffusion(
        unet=UNetModel(**model_cfg["unet"]),
        vae=AutoencoderKL(**model_cfg["vae"]),
        text_encoder=OpenCLIPTextEncoder(**model_cfg["text_encoder"]),
        scale_factor=float(cfg.get("scale_factor", 0.18215)),
        parameterization=cfg.get("parameterization", "eps"),
        zero_terminal_snr=bool(cfg.get("zero_terminal_snr", False)),
    )


COMPUTE_DTYPES = ("fp32", "fp16", "bf16")


def set_compute_dtype(model, dtype: str) -> None:
    """Run ``model``'s cells in fp16 / bf16 with MindSpore AMP level O2, as training's ``--mixed_precision``
    (the attention softmax stays fp32 whatever the dtype). ``fp32`` leaves the model as it is."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype {dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
    if dtype == "fp32":
        return
    import mindspore as ms

    ms.amp.auto_mixed_precision(model, amp_level="O2", dtype=ms.float16 if dtype == "fp16" else ms.bfloat16)
