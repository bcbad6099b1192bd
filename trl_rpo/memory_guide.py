"""The memory guide's models and rows: SDXL, FLUX.1-dev, SD3.5 Large, Qwen-Image, Z-Image-Turbo and FLUX.2 [klein]
4B from their real configs (the newer ones in `trl_rpo.memory_models`), and GPU cards.

The configs of the released checkpoints are embedded (nothing is downloaded) and built on the meta device; each
model lists its options (:class:`~trl_rpo.memory.TrainingSetup`) from the fewest memory measures to the most, and
:func:`memory_guide` estimates every option (:func:`~trl_rpo.memory.estimate_training_memory`) and says which fit a
24, 40 and 80 GB card. Printed by `benchmarks/memory_guide.py`; the tables are in `docs/memory.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import memory_models
from .memory import (
    ActivationProfile,
    GiB,
    MemoryEstimate,
    TrainingSetup,
    activation_profile,
    estimate_training_memory,
    lora_parameter_count,
    on_meta,
    sdxl_unet_config,
)

__all__ = [
    "CARDS_GIB",
    "CARD_HEADROOM",
    "GUIDE_MODELS",
    "GuideModel",
    "MemoryGuide",
    "clip_g_text_config",
    "clip_l_text_config",
    "fits_card",
    "flux_dev_transformer_config",
    "memory_guide",
    "sd35_large_transformer_config",
    "t5_xxl_encoder_config",
    "vae_config",
]

CARDS_GIB = (24, 40, 80)
# What a card must keep free beyond the modelled total: the CUDA context, allocator fragmentation, DeepSpeed's
# buckets and the weights ZeRO-3 gathers for the block being computed (docs/memory.md, "Not counted").
CARD_HEADROOM = 0.15


def flux_dev_transformer_config() -> dict[str, Any]:
    """`transformer/config.json` of black-forest-labs/FLUX.1-dev (FLUX.1-schnell: the same without guidance)."""
    return {
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    }


def sd35_large_transformer_config() -> dict[str, Any]:
    """`transformer/config.json` of stabilityai/stable-diffusion-3.5-large (MMDiT, no dual-attention layers)."""
    return {
        "attention_head_dim": 64,
        "caption_projection_dim": 2432,
        "dual_attention_layers": [],
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 38,
        "num_layers": 38,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "qk_norm": "rms_norm",
        "sample_size": 128,
    }


def clip_l_text_config() -> dict[str, Any]:
    """`CLIPTextConfig` of openai/clip-vit-large-patch14's text tower (SDXL, SD3 and FLUX `text_encoder`)."""
    return {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "projection_dim": 768,
    }


def clip_g_text_config() -> dict[str, Any]:
    """`CLIPTextConfig` of OpenCLIP ViT-bigG-14's text tower (SDXL and SD3 `text_encoder_2`)."""
    return {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "projection_dim": 1280,
        "hidden_act": "gelu",
    }


def t5_xxl_encoder_config() -> dict[str, Any]:
    """`T5Config` of google/t5-v1_1-xxl (SD3 `text_encoder_3`, FLUX `text_encoder_2`; only the encoder is used)."""
    return {
        "d_model": 4096,
        "d_ff": 10240,
        "d_kv": 64,
        "num_heads": 64,
        "num_layers": 24,
        "vocab_size": 32128,
        "feed_forward_proj": "gated-gelu",
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
    }


def vae_config(latent_channels: int = 4) -> dict[str, Any]:
    """The SDXL (4 latent channels) and SD3 / FLUX (16 channels, no quant convs) `AutoencoderKL` configs."""
    config: dict[str, Any] = {
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": latent_channels,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    if latent_channels == 16:
        config.update(use_quant_conv=False, use_post_quant_conv=False)
    return config


def _sdxl_denoiser():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**sdxl_unet_config())


def _flux_denoiser():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**flux_dev_transformer_config())


def _sd35_denoiser():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**sd35_large_transformer_config())


def _encoders(*names: str) -> torch.nn.ModuleList:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    build = {
        "clip_l": lambda: CLIPTextModel(CLIPTextConfig(**clip_l_text_config())),
        "clip_l_projection": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip_l_text_config())),
        "clip_g_projection": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**clip_g_text_config())),
        "t5_xxl": lambda: T5EncoderModel(T5Config(**t5_xxl_encoder_config())),
        "vae4": lambda: AutoencoderKL(**vae_config(4)),
        "vae16": lambda: AutoencoderKL(**vae_config(16)),
    }
    return torch.nn.ModuleList(build[name]() for name in names)


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def _sdxl_inputs(resolution: int, text_tokens: int) -> dict[str, Any]:
    side = resolution // 8
    return {
        "sample": _meta(2, 4, side, side),
        "timestep": torch.zeros(2, dtype=torch.long, device="meta"),
        "encoder_hidden_states": _meta(2, text_tokens, 2048),
        "added_cond_kwargs": {"text_embeds": _meta(2, 1280), "time_ids": _meta(2, 6)},
    }


def _flux_inputs(resolution: int, text_tokens: int) -> dict[str, Any]:
    tokens = (resolution // 16) ** 2  # 8x VAE, then 2x2 patches packed into 64 channels
    return {
        "hidden_states": _meta(2, tokens, 64),
        "timestep": _meta(2),
        "guidance": _meta(2),
        "pooled_projections": _meta(2, 768),
        "encoder_hidden_states": _meta(2, text_tokens, 4096),
        "txt_ids": _meta(text_tokens, 3),
        "img_ids": _meta(tokens, 3),
    }


def _sd35_inputs(resolution: int, text_tokens: int) -> dict[str, Any]:
    side = resolution // 8
    # Both CLIP encoders' 77 tokens, then T5's.
    return {
        "hidden_states": _meta(2, 16, side, side),
        "timestep": _meta(2),
        "encoder_hidden_states": _meta(2, 77 + text_tokens, 4096),
        "pooled_projections": _meta(2, 2048),
    }


def _sdxl_setups(n: int) -> list[TrainingSetup]:
    return [
        TrainingSetup("LoRA, AdamW", lora=True),
        TrainingSetup("LoRA + grad. checkpointing", lora=True, gradient_checkpointing=True),
        TrainingSetup(
            "LoRA + checkpointing + precomputed latents",
            lora=True,
            gradient_checkpointing=True,
            precompute_latents=True,
        ),  # fmt: skip
        TrainingSetup(
            f"LoRA, ZeRO-2 x{n}, checkpointing", lora=True, zero_stage=2, num_gpus=n, gradient_checkpointing=True
        ),  # fmt: skip
        TrainingSetup("full, AdamW", lora=False),
        TrainingSetup("full + checkpointing", lora=False, gradient_checkpointing=True),
        TrainingSetup(
            "full + checkpointing + 8-bit AdamW", lora=False, gradient_checkpointing=True, optimizer_bytes=2
        ),  # fmt: skip
        TrainingSetup(
            f"full, ZeRO-2 x{n}, checkpointing", lora=False, zero_stage=2, num_gpus=n, gradient_checkpointing=True
        ),  # fmt: skip
        TrainingSetup(
            f"full, ZeRO-3 x{n}, checkpointing", lora=False, zero_stage=3, num_gpus=n, gradient_checkpointing=True
        ),  # fmt: skip
        TrainingSetup(
            f"full, ZeRO-3 x{n} + CPU offload, ckpt.",
            lora=False,
            zero_stage=3,
            num_gpus=n,
            offload=True,
            gradient_checkpointing=True,
        ),  # fmt: skip
    ]


def _flux_setups(n: int) -> list[TrainingSetup]:
    ckpt = {"lora": True, "gradient_checkpointing": True}
    return [
        TrainingSetup("LoRA, AdamW", lora=True),
        TrainingSetup("LoRA + grad. checkpointing", **ckpt),
        TrainingSetup("LoRA + checkpointing + precomputed latents", **ckpt, precompute_latents=True),
        TrainingSetup(
            f"LoRA, ZeRO-3 x{n}, ckpt., precomputed", **ckpt, precompute_latents=True, zero_stage=3, num_gpus=n
        ),  # fmt: skip
        TrainingSetup(
            f"LoRA, ZeRO-3 x{n} + CPU offload, ckpt., precomputed",
            **ckpt,
            precompute_latents=True,
            zero_stage=3,
            num_gpus=n,
            offload=True,
        ),  # fmt: skip
    ]


def _sd35_setups(n: int) -> list[TrainingSetup]:
    ckpt = {"lora": False, "gradient_checkpointing": True}
    return [
        TrainingSetup("full, AdamW", lora=False),
        TrainingSetup("full + checkpointing", **ckpt),
        TrainingSetup("full + checkpointing + precomputed latents", **ckpt, precompute_latents=True),
        TrainingSetup(
            f"full, ZeRO-2 x{n}, ckpt., precomputed", **ckpt, precompute_latents=True, zero_stage=2, num_gpus=n
        ),  # fmt: skip
        TrainingSetup(
            f"full, ZeRO-3 x{n}, ckpt., precomputed", **ckpt, precompute_latents=True, zero_stage=3, num_gpus=n
        ),  # fmt: skip
        TrainingSetup(
            f"full, ZeRO-3 x{n} + CPU offload, ckpt., precomputed",
            **ckpt,
            precompute_latents=True,
            zero_stage=3,
            num_gpus=n,
            offload=True,
        ),  # fmt: skip
    ]


@dataclass(frozen=True)
class GuideModel:
    """One model of the memory guide: how to build it on the meta device and which options its table lists.

    Attributes:
        name: the released checkpoint.
        denoiser: builds the UNet / transformer from its real config (called on the meta device).
        encoders: builds the frozen text encoders and VAE (one `ModuleList`).
        inputs: `(resolution, text_tokens) -> keyword arguments` of the denoiser for Diffusion-DPO's policy batch
            (chosen + rejected: 2 latents), as meta tensors.
        text_tokens: the pipeline's default prompt length (SDXL: CLIP's 77; SD3 / FLUX: T5's default
            `max_sequence_length`, 256 / 512; the LLM-encoded families: the 512 tokens trl-rpo pads to).
        setups: `num_gpus -> rows`, ordered from the fewest memory measures to the most.
        family: its entry in the model registry (`trl_rpo.families.FAMILIES`), whose `lora_targets` LoRA adapts.
    """

    name: str
    denoiser: Callable[[], torch.nn.Module]
    encoders: Callable[[], torch.nn.Module]
    inputs: Callable[[int, int], dict[str, Any]]
    text_tokens: int
    setups: Callable[[int], list[TrainingSetup]]
    family: str = "sdxl"


GUIDE_MODELS: dict[str, GuideModel] = {
    "sdxl": GuideModel("stabilityai/stable-diffusion-xl-base-1.0", _sdxl_denoiser,
                       lambda: _encoders("clip_l", "clip_g_projection", "vae4"), _sdxl_inputs, 77, _sdxl_setups),
    "flux-dev": GuideModel("black-forest-labs/FLUX.1-dev", _flux_denoiser,
                           lambda: _encoders("clip_l", "t5_xxl", "vae16"), _flux_inputs, 512, _flux_setups, "flux"),
    "sd35-large": GuideModel("stabilityai/stable-diffusion-3.5-large", _sd35_denoiser,
                             lambda: _encoders("clip_l_projection", "clip_g_projection", "t5_xxl", "vae16"),
                             _sd35_inputs, 256, _sd35_setups, "sd3"),
    # 20 B: LoRA rows, then full fine-tuning (sharded) rows.
    "qwen-image": GuideModel("Qwen/Qwen-Image", memory_models.qwen_image_denoiser, memory_models.qwen_image_encoders,
                             memory_models.qwen_image_inputs, 512, lambda n: _flux_setups(n) + _sd35_setups(n),
                             "qwen_image"),
    "z-image-turbo": GuideModel("Tongyi-MAI/Z-Image-Turbo", memory_models.z_image_denoiser,
                                memory_models.z_image_encoders, memory_models.z_image_inputs, 512, _sdxl_setups,
                                "z_image"),
    "flux2-klein-4b": GuideModel("black-forest-labs/FLUX.2-klein-4B", memory_models.flux2_klein_denoiser,
                                 memory_models.flux2_klein_encoders, memory_models.flux2_klein_inputs, 512,
                                 _sdxl_setups, "flux2_klein"),
}  # fmt: skip


def fits_card(estimate: MemoryEstimate, card_gib: float, headroom: float = CARD_HEADROOM) -> bool:
    """Whether the modelled total plus `headroom` (a fraction of it) fits a card of `card_gib` GiB."""
    return estimate.total * (1 + headroom) <= card_gib * GiB


@dataclass
class MemoryGuide:
    """The memory table of one model (:func:`memory_guide`): counts, activations and one estimate per option."""

    model: str
    resolution: int
    text_tokens: int
    lora_r: int
    denoiser_params: int
    lora_params: int
    encoder_params: int
    activations: dict[bool, ActivationProfile]  # by `lora`: LoRA adapters on or off
    rows: list[tuple[TrainingSetup, MemoryEstimate]]

    def recommended(self, card_gib: float, lora: bool | None = None) -> TrainingSetup | None:
        """The first row (fewest memory measures) of this kind that fits a `card_gib` GiB card, or None."""
        for setup, estimate in self.rows:
            if (lora is None or setup.lora == lora) and fits_card(estimate, card_gib):
                return setup
        return None


def memory_guide(
    model: str = "sdxl",
    num_gpus: int = 8,
    resolution: int = 1024,
    lora_r: int = 16,
    text_tokens: int | None = None,
    setups: list[TrainingSetup] | None = None,
) -> MemoryGuide:
    """GPU memory per rank of Diffusion-DPO on a real model (`GUIDE_MODELS`: `sdxl`, `flux-dev`, `sd35-large`,
    `qwen-image`, `z-image-turbo`, `flux2-klein-4b`).

    Parameter counts are exact (the real configs built on the meta device); activations are counted in a meta
    forward of the policy batch in bf16 (:func:`activation_profile`), LoRA of rank `lora_r` on the family's default
    targets (`DenoiserFamily.lora_targets`: the attention projections, plus FLUX.2's fused single-stream input
    projection). Checkpointing rows count the saved block inputs plus the largest block recomputed in backward.
    """
    from .families import FAMILIES

    spec = GUIDE_MODELS[model]
    targets = list(FAMILIES[spec.family].lora_targets)
    tokens = text_tokens or spec.text_tokens
    setups = setups if setups is not None else spec.setups(num_gpus)
    denoiser = on_meta(spec.denoiser)
    encoder_params = sum(p.numel() for p in on_meta(spec.encoders).parameters())
    denoiser_params = sum(p.numel() for p in denoiser.parameters())
    lora_params = lora_parameter_count(denoiser, lora_r, targets)
    activations = {}
    for lora in sorted({setup.lora for setup in setups}):
        module = on_meta(spec.denoiser)
        if lora:
            from peft import LoraConfig

            module.requires_grad_(False)
            module.add_adapter(LoraConfig(r=lora_r, lora_alpha=lora_r, target_modules=targets))
        module.train()
        inputs = spec.inputs(resolution, tokens)
        activations[lora] = activation_profile(module, lambda m=module, i=inputs: m(**i), dtype_bytes=2)
    rows = []
    for setup in setups:
        setup = TrainingSetup(**{**setup.__dict__, "lora_fraction": lora_params / denoiser_params})
        profile = activations[setup.lora]
        estimate = estimate_training_memory(
            setup, denoiser_params, encoder_params, profile.full, profile.checkpointed_peak
        )
        rows.append((setup, estimate))
    return MemoryGuide(spec.name, resolution, tokens, lora_r, denoiser_params, lora_params, encoder_params,
                       activations, rows)  # fmt: skip
