"""SD 2.x weights: original ldm / diffusers / MindSpore checkpoints <-> the MindSpore models.

``load_sd_weights(model, path)`` is the one call training and inference use; the command-line
converter is ``tools/model_conversion/convert_weights.py``.
"""

from mindone.convert.convert import load_sd_weights, read_as_ldm, save_ldm_safetensors, save_mindspore_checkpoint

__all__ = ["load_sd_weights", "read_as_ldm", "save_ldm_safetensors", "save_mindspore_checkpoint"]
