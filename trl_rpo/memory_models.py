"""Architecture configs of the memory guide's newer families: Qwen-Image, Z-Image and FLUX.2 [klein] 4B.

The `config.json` values of the released checkpoints (`Qwen/Qwen-Image`, `Tongyi-MAI/Z-Image-Turbo`,
`black-forest-labs/FLUX.2-klein-4B`) and of their text encoders (Qwen2.5-VL 7B, Qwen3 4B), embedded because nothing
is downloaded. `tests/test_memory.py` checks that they build the published model sizes (20 B, 6 B, 4 B). Each
family has a denoiser builder, a builder of its frozen encoders and VAE, and the denoiser's keyword arguments for
Diffusion-DPO's policy batch (2 latents) as meta tensors, which `trl_rpo.memory_guide` registers as guide models.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "flux2_klein_4b_transformer_config",
    "flux2_vae_config",
    "qwen25_vl_7b_config",
    "qwen3_4b_config",
    "qwen_image_transformer_config",
    "qwen_image_vae_config",
    "z_image_transformer_config",
]


def qwen_image_transformer_config() -> dict[str, Any]:
    """`transformer/config.json` of Qwen/Qwen-Image (an MMDiT of 60 blocks, 24 heads of 128)."""
    return {
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": False,
        "in_channels": 64,
        "joint_attention_dim": 3584,
        "num_attention_heads": 24,
        "num_layers": 60,
        "out_channels": 16,
        "patch_size": 2,
    }


def qwen_image_vae_config() -> dict[str, Any]:
    """`vae/config.json` of Qwen/Qwen-Image (`AutoencoderKLQwenImage`, the Wan 2.1 VAE layout, 16 channels)."""
    return {
        "attn_scales": [],
        "base_dim": 96,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "temperal_downsample": [False, True, True],
        "z_dim": 16,
    }


def qwen25_vl_7b_config() -> dict[str, Any]:
    """`Qwen2_5_VLConfig` of Qwen2.5-VL-7B-Instruct (Qwen-Image's `text_encoder`, its vision tower included)."""
    return {
        "text_config": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "tie_word_embeddings": False,
        },
        "vision_config": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    }


def z_image_transformer_config() -> dict[str, Any]:
    """`transformer/config.json` of Tongyi-MAI/Z-Image-Turbo (a single-stream DiT, 30 layers of width 3840)."""
    return {
        "all_f_patch_size": [1],
        "all_patch_size": [2],
        "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],
        "cap_feat_dim": 2560,
        "dim": 3840,
        "in_channels": 16,
        "n_heads": 30,
        "n_kv_heads": 30,
        "n_layers": 30,
        "n_refiner_layers": 2,
        "qk_norm": True,
        "rope_theta": 256.0,
        "t_scale": 1000.0,
    }


def qwen3_4b_config() -> dict[str, Any]:
    """`Qwen3Config` of Qwen3-4B (Z-Image's and FLUX.2 [klein] 4B's `text_encoder`)."""
    return {
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    }


def flux2_klein_4b_transformer_config() -> dict[str, Any]:
    """`transformer/config.json` of black-forest-labs/FLUX.2-klein-4B (5 double- and 20 single-stream blocks)."""
    return {
        "attention_head_dim": 128,
        "axes_dims_rope": [32, 32, 32, 32],
        "guidance_embeds": False,
        "in_channels": 128,
        "joint_attention_dim": 7680,
        "mlp_ratio": 3.0,
        "num_attention_heads": 24,
        "num_layers": 5,
        "num_single_layers": 20,
        "patch_size": 1,
        "rope_theta": 2000,
        "timestep_guidance_channels": 256,
    }


def flux2_vae_config() -> dict[str, Any]:
    """`vae/config.json` of FLUX.2 (`AutoencoderKLFlux2`: 32 latent channels, batch-norm statistics of 128)."""
    return {"block_out_channels": [128, 256, 512, 512], "latent_channels": 32, "layers_per_block": 2}


# -- builders (called on the meta device) -----------------------------------------------------------------------------


def qwen_image_denoiser() -> torch.nn.Module:
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(**qwen_image_transformer_config())


def z_image_denoiser() -> torch.nn.Module:
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel(**z_image_transformer_config())


def flux2_klein_denoiser() -> torch.nn.Module:
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(**flux2_klein_4b_transformer_config())


def qwen_image_encoders() -> torch.nn.ModuleList:
    from diffusers import AutoencoderKLQwenImage
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen25_vl_7b_config()))
    return torch.nn.ModuleList([text, AutoencoderKLQwenImage(**qwen_image_vae_config())])


def _qwen3_4b() -> torch.nn.Module:
    from transformers import Qwen3Config, Qwen3Model

    return Qwen3Model(Qwen3Config(**qwen3_4b_config()))


def z_image_encoders() -> torch.nn.ModuleList:
    from diffusers import AutoencoderKL

    from .memory_guide import vae_config

    return torch.nn.ModuleList([_qwen3_4b(), AutoencoderKL(**vae_config(16))])


def flux2_klein_encoders() -> torch.nn.ModuleList:
    from diffusers import AutoencoderKLFlux2

    return torch.nn.ModuleList([_qwen3_4b(), AutoencoderKLFlux2(**flux2_vae_config())])


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def qwen_image_inputs(resolution: int, text_tokens: int) -> dict[str, Any]:
    side = resolution // 16  # 8x VAE, then 2x2 patches packed into 64 channels
    return {
        "hidden_states": _meta(2, side * side, 64),
        "timestep": _meta(2),
        "encoder_hidden_states": _meta(2, text_tokens, 3584),
        "encoder_hidden_states_mask": torch.ones(2, text_tokens, dtype=torch.bool, device="meta"),
        "img_shapes": [[(1, side, side)]] * 2,
    }


def z_image_inputs(resolution: int, text_tokens: int) -> dict[str, Any]:
    side = resolution // 8
    return {
        "x": [_meta(16, 1, side, side) for _ in range(2)],
        "t": _meta(2),
        "cap_feats": [_meta(text_tokens, 2560) for _ in range(2)],
    }


def flux2_klein_inputs(resolution: int, text_tokens: int) -> dict[str, Any]:
    side = resolution // 16  # 8x VAE, then 2x2 patches folded into 128 channels
    return {
        "hidden_states": _meta(2, side * side, 128),
        "encoder_hidden_states": _meta(2, text_tokens, 7680),
        "timestep": _meta(2),
        "img_ids": _meta(2, side * side, 4),
        "txt_ids": _meta(2, text_tokens, 4),
    }
