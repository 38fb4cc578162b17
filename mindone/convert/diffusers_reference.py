"""diffusers / transformers models with the architecture of a mindone model config.

The reference side of the parity tests and of benchmarks/bench_unet.py. Needs torch, diffusers and
transformers, which are test-only dependencies, so they are imported inside the functions.
"""

from __future__ import annotations

from typing import Any, Mapping


def diffusers_unet_kwargs(unet_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """UNet2DConditionModel arguments for an ldm UNet config (SD 2.x style: linear projections)."""
    channels = [unet_cfg["model_channels"] * m for m in unet_cfg["channel_mult"]]
    attn = set(unet_cfg["attention_levels"])
    levels = range(len(channels))
    return dict(
        in_channels=unet_cfg.get("in_channels", 4), out_channels=unet_cfg.get("out_channels", 4),
        layers_per_block=unet_cfg["num_res_blocks"], block_out_channels=tuple(channels),
        down_block_types=tuple("CrossAttnDownBlock2D" if i in attn else "DownBlock2D" for i in levels),
        up_block_types=tuple("CrossAttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(levels)),
        # diffusers' "attention_head_dim" in SD 2 configs is really the head count (ldm: channels // 64)
        attention_head_dim=tuple(c // unet_cfg["num_head_channels"] for c in channels),
        transformer_layers_per_block=unet_cfg.get("transformer_depth", 1),
        cross_attention_dim=unet_cfg["context_dim"], use_linear_projection=True, norm_num_groups=32,
        flip_sin_to_cos=True, freq_shift=0)


def build_reference_models(cfg: Mapping[str, Any], seed: int = 0, perturb: float = 0.05):
    """(UNet2DConditionModel, AutoencoderKL, CLIPTextModel) in eval mode, randomly initialised.

    ``perturb`` adds Gaussian noise of that scale to every weight (norm affines included) so that no
    parameter sits at a default value that a wrong mapping could match by luck.
    """
    import diffusers
    import torch
    import transformers

    unet_cfg, vae_cfg, text_cfg = cfg["model"]["unet"], cfg["model"]["vae"], cfg["model"]["text_encoder"]
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**diffusers_unet_kwargs(unet_cfg))
    vae_channels = tuple(vae_cfg["ch"] * m for m in vae_cfg["ch_mult"])
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=vae_cfg["z_channels"], block_out_channels=vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), layers_per_block=vae_cfg["num_res_blocks"],
        norm_num_groups=vae_cfg.get("norm_num_groups", 32))
    # OpenCLIP's text tower is a CLIP text transformer with exact GELU; SD 2 runs it to the penultimate
    # block, i.e. a CLIPTextModel with that many layers whose last_hidden_state includes the final norm.
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=text_cfg["vocab_size"], hidden_size=text_cfg["width"], intermediate_size=4 * text_cfg["width"],
        num_hidden_layers=text_cfg["layers"], num_attention_heads=text_cfg["heads"],
        max_position_embeddings=text_cfg["context_length"], hidden_act="gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=0))
    if perturb:
        with torch.no_grad():
            for model in (unet, vae, text):
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * perturb)
    return unet.eval(), vae.eval(), text.eval()
