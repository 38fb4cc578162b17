"""Rename tables between the diffusers / transformers layout and the original ldm layout of SD 2.x.

Every table is generated from the model config (levels, res blocks, attention levels, text layers),
so the tiny test model and the real one use the same code. A ``Rule`` produces one ldm tensor from
one or more diffusers tensors:

* ``copy``: same array under another name;
* ``conv1x1``: VAE mid-attention linear [C, C] -> ldm 1x1 conv [C, C, 1, 1];
* ``concat``: OpenCLIP packs q / k / v into ``in_proj_weight`` / ``in_proj_bias``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."


UNET_RESNET = {"in_layers.0.": "norm1.", "in_layers.2.": "conv1.", "emb_layers.1.": "time_emb_proj.",
               "out_layers.0.": "norm2.", "out_layers.3.": "conv2.", "skip_connection.": "conv_shortcut."}
VAE_RESNET = {"nin_shortcut.": "conv_shortcut."}
VAE_ATTENTION = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}
# Older diffusers files (and the reference layout lists) name the VAE attention projections differently.
VAE_ATTENTION_LEGACY = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
_VAE_PROJECTIONS = {"q.weight", "k.weight", "v.weight", "proj_out.weight"}
TEXT_BLOCK = {"ln_1.": "layer_norm1.", "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.",
              "mlp.c_proj.": "mlp.fc2.", "attn.out_proj.": "self_attn.out_proj."}


@dataclass(frozen=True)
class Rule:
    """How to build ldm tensor ``target`` from diffusers tensors ``sources`` (component-qualified names)."""

    target: str
    sources: tuple[str, ...]
    kind: str = "copy"

    def forward(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """diffusers arrays -> the ldm array."""
        arrays = [tensors[s] for s in self.sources]
        if self.kind == "concat":
            return np.concatenate(arrays, axis=0)
        if self.kind == "conv1x1":
            return arrays[0].reshape(arrays[0].shape + (1, 1)) if arrays[0].ndim == 2 else arrays[0]
        return arrays[0]

    def inverse(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """The ldm array -> diffusers arrays."""
        if self.kind == "concat":
            return dict(zip(self.sources, np.split(array, len(self.sources), axis=0)))
        if self.kind == "conv1x1" and array.ndim == 4:
            return {self.sources[0]: array.reshape(array.shape[:2])}
        return {self.sources[0]: array}


def _prefix_rule(ldm_key: str, table: list[tuple[str, str, Mapping[str, str]]], component: str) -> str | None:
    """Diffusers name of ``ldm_key`` via the longest matching (ldm prefix, diffusers prefix, inner renames)."""
    best = None
    for ldm_prefix, diff_prefix, inner in table:
        if ldm_key.startswith(ldm_prefix) and (best is None or len(ldm_prefix) > len(best[0])):
            best = (ldm_prefix, diff_prefix, inner)
    if best is None:
        return None
    ldm_prefix, diff_prefix, inner = best
    rest = ldm_key[len(ldm_prefix):]
    for old, new in inner.items():
        if rest.startswith(old):
            rest = new + rest[len(old):]
            break
    return f"{component}/{diff_prefix}{rest}"


def unet_table(cfg: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, str]]]:
    """(ldm prefix, diffusers prefix, inner renames) for every UNet module."""
    levels = len(cfg.get("channel_mult", (1, 2, 4, 4)))
    n = int(cfg.get("num_res_blocks", 2))
    attn = set(cfg.get("attention_levels", (0, 1, 2)))
    table = [("time_embed.0.", "time_embedding.linear_1.", {}), ("time_embed.2.", "time_embedding.linear_2.", {}),
             ("input_blocks.0.0.", "conv_in.", {}), ("out.0.", "conv_norm_out.", {}), ("out.2.", "conv_out.", {}),
             ("middle_block.0.", "mid_block.resnets.0.", UNET_RESNET),
             ("middle_block.1.", "mid_block.attentions.0.", {}),
             ("middle_block.2.", "mid_block.resnets.1.", UNET_RESNET)]
    for level in range(levels):
        for j in range(n):
            index = 1 + level * (n + 1) + j
            table.append((f"input_blocks.{index}.0.", f"down_blocks.{level}.resnets.{j}.", UNET_RESNET))
            if level in attn:
                table.append((f"input_blocks.{index}.1.", f"down_blocks.{level}.attentions.{j}.", {}))
        if level != levels - 1:
            table.append((f"input_blocks.{1 + level * (n + 1) + n}.0.op.", f"down_blocks.{level}.downsamplers.0.conv.",
                          {}))
    for up in range(levels):  # diffusers up_blocks.0 is the deepest level
        level = levels - 1 - up
        for j in range(n + 1):
            index = up * (n + 1) + j
            table.append((f"output_blocks.{index}.0.", f"up_blocks.{up}.resnets.{j}.", UNET_RESNET))
            if level in attn:
                table.append((f"output_blocks.{index}.1.", f"up_blocks.{up}.attentions.{j}.", {}))
        if level != 0:
            layer = 2 if level in attn else 1
            table.append((f"output_blocks.{up * (n + 1) + n}.{layer}.conv.", f"up_blocks.{up}.upsamplers.0.conv.", {}))
    return table


def vae_table(cfg: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, str]]]:
    levels = len(cfg.get("ch_mult", (1, 2, 4, 4)))
    n = int(cfg.get("num_res_blocks", 2))
    table = [("encoder.norm_out.", "encoder.conv_norm_out.", {}), ("decoder.norm_out.", "decoder.conv_norm_out.", {})]
    for part in ("encoder", "decoder"):
        table += [(f"{part}.conv_in.", f"{part}.conv_in.", {}), (f"{part}.conv_out.", f"{part}.conv_out.", {}),
                  (f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", VAE_RESNET),
                  (f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", VAE_ATTENTION),
                  (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", VAE_RESNET)]
    for level in range(levels):
        table += [(f"encoder.down.{level}.block.{j}.", f"encoder.down_blocks.{level}.resnets.{j}.", VAE_RESNET)
                  for j in range(n)]
        table.append((f"encoder.down.{level}.downsample.", f"encoder.down_blocks.{level}.downsamplers.0.", {}))
        up = levels - 1 - level  # ldm decoder.up[i] is level i; diffusers up_blocks.0 is the deepest
        table += [(f"decoder.up.{level}.block.{j}.", f"decoder.up_blocks.{up}.resnets.{j}.", VAE_RESNET)
                  for j in range(n + 1)]
        table.append((f"decoder.up.{level}.upsample.", f"decoder.up_blocks.{up}.upsamplers.0.", {}))
    table += [("quant_conv.", "quant_conv.", {}), ("post_quant_conv.", "post_quant_conv.", {})]
    return table


def _text_rule(ldm_key: str) -> Rule | None:
    rest = ldm_key[len(TEXT_PREFIX):]
    fixed = {"model.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
             "model.positional_embedding": "text_model.embeddings.position_embedding.weight",
             "model.ln_final.weight": "text_model.final_layer_norm.weight",
             "model.ln_final.bias": "text_model.final_layer_norm.bias"}
    if rest in fixed:
        return Rule(ldm_key, (f"text_encoder/{fixed[rest]}",))
    marker = "model.transformer.resblocks."
    if not rest.startswith(marker):
        return None
    index, _, inner = rest[len(marker):].partition(".")
    layer = f"text_encoder/text_model.encoder.layers.{index}."
    if inner in ("attn.in_proj_weight", "attn.in_proj_bias"):
        suffix = "weight" if inner.endswith("weight") else "bias"
        return Rule(ldm_key, tuple(f"{layer}self_attn.{p}_proj.{suffix}" for p in "qkv"), "concat")
    for old, new in TEXT_BLOCK.items():
        if inner.startswith(old):
            return Rule(ldm_key, (layer + new + inner[len(old):],))
    return None


def build_rules(ldm_keys: list[str], model_cfg: Mapping[str, Any]) -> dict[str, Rule]:
    """One Rule per expected ldm tensor name; raises KeyError for a name no table covers."""
    unet = unet_table(model_cfg.get("unet", {}))
    vae = vae_table(model_cfg.get("vae", {}))
    rules = {}
    for key in ldm_keys:
        rule = None
        if key.startswith(UNET_PREFIX):
            name = _prefix_rule(key[len(UNET_PREFIX):], unet, "unet")
            rule = Rule(key, (name,)) if name else None
        elif key.startswith(VAE_PREFIX):
            name = _prefix_rule(key[len(VAE_PREFIX):], vae, "vae")
            projection = ".mid.attn_1." in key and key.split(".mid.attn_1.")[1] in _VAE_PROJECTIONS
            rule = Rule(key, (name,), "conv1x1" if projection else "copy") if name else None
        elif key.startswith(TEXT_PREFIX):
            rule = _text_rule(key)
        if rule is None:
            raise KeyError(f"no diffusers name for {key}")
        rules[key] = rule
    return rules


def normalize_legacy_vae_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename old diffusers VAE attention names (query/key/value/proj_attn) to to_q/to_k/to_v/to_out.0."""
    out = {}
    for name, array in tensors.items():
        if name.startswith("vae/") and ".mid_block.attentions." in name:
            head, _, tail = name.partition(".mid_block.attentions.")
            index, _, inner = tail.partition(".")
            for new, old in VAE_ATTENTION_LEGACY.items():
                if inner.startswith(old):
                    name = f"{head}.mid_block.attentions.{index}.{new}{inner[len(old):]}"
                    break
        out[name] = array
    return out


def legacy_vae_name(name: str) -> str:
    """The older diffusers spelling of a (new-style) VAE attention tensor name."""
    for new, old in VAE_ATTENTION_LEGACY.items():
        marker = f".{new}"
        if name.startswith("vae/") and ".mid_block.attentions." in name and marker in name:
            return name.replace(marker, f".{old}", 1)
    return name


_TEXT_MODEL_ROOTS = ("embeddings.", "encoder.", "final_layer_norm.")


def normalize_text_encoder_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add the ``text_model.`` prefix that transformers 5 no longer writes for ``CLIPTextModel``.

    transformers 4 saves ``text_model.encoder.layers.0...``; 5 saves ``encoder.layers.0...``. A text
    encoder with any ``text_model.*`` tensor is taken as 4.x naming and left as is.
    """
    prefix = "text_encoder/"
    if any(name.startswith(prefix + "text_model.") for name in tensors):
        return tensors
    return {(f"{prefix}text_model.{name[len(prefix):]}"
             if name.startswith(prefix) and name[len(prefix):].startswith(_TEXT_MODEL_ROOTS) else name): array
            for name, array in tensors.items()}
