"""Small, pure functions on diffusers pipelines, shared by the trainers, the data builder and evaluation.

Loading (ZeRO-3 safe), prompt encoding exactly as the pipeline does it at inference, VAE encoding and decoding
with the VAE's own scaling and shift, and SDXL's micro-conditioning ids. Nothing here depends on a trainer.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch

__all__ = [
    "cast_model",
    "decode_latents",
    "encode_images",
    "encode_prompts",
    "denoiser_of",
    "is_sdxl_pipeline",
    "load_denoiser_state_dict",
    "load_pipeline",
    "sdxl_time_ids",
    "tensor_to_pil",
    "zero3_init_disabled",
]


def is_sdxl_pipeline(pipeline) -> bool:
    """True for SDXL-style pipelines: two text encoders and a UNet with `text_time` micro-conditioning."""
    unet = getattr(pipeline, "unet", None)
    return (
        unet is not None
        and getattr(pipeline, "text_encoder_2", None) is not None
        and (getattr(unet.config, "addition_embed_type", None) == "text_time")
    )


def denoiser_of(pipeline) -> torch.nn.Module:
    """The pipeline's denoising network: its `unet` (SD 1.5, SDXL) or its `transformer` (SD3, FLUX)."""
    for name in ("unet", "transformer"):
        module = getattr(pipeline, name, None)
        if module is not None:
            return module
    raise TypeError(
        f"{type(pipeline).__name__} has neither a `unet` nor a `transformer`: expected a StableDiffusionPipeline, "
        "StableDiffusionXLPipeline, StableDiffusion3Pipeline or FluxPipeline (or a model id / path of one)"
    )


def cast_model(model: torch.nn.Module, dtype: torch.dtype, device: Any = None) -> torch.nn.Module:
    """`model.to(device, dtype)` that keeps a diffusers model's `_keep_in_fp32_modules` in float32, as
    `from_pretrained(torch_dtype=...)` does.

    diffusers' own `ModelMixin.to(dtype)` casts those modules as well, and says so on every call, even for the models
    that keep none ("There are modules in UNet2DConditionModel that should be kept in float32: []"); this is the cast
    it asks for instead.
    """
    torch.nn.Module.to(model, device=device, dtype=dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    if keep and dtype in (torch.float16, torch.bfloat16):
        for name, param in model.named_parameters():
            if any(part in keep for part in name.split(".")):  # diffusers' own matching rule when loading
                param.data = param.data.float()
    return model


@contextlib.contextmanager
def zero3_init_disabled():
    """Load models whole even when DeepSpeed ZeRO-3 is configured.

    With ZeRO-3, transformers' `from_pretrained` partitions every model it creates (`deepspeed.zero.Init`). Only
    the trained UNet goes through the DeepSpeed engine; the frozen VAE and text encoders must stay whole on each
    rank (as in the diffusers training scripts), so their loading runs with transformers' ZeRO-3 hook unset.
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers always has it
        yield
        return
    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = reference() if reference is not None else None
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def load_pipeline(model: Any, model_init_kwargs: dict | None = None, vae_model_name_or_path: str | None = None):
    """A diffusers pipeline from an object, a Hub id or a local folder (`DiffusionPipeline.from_pretrained`)."""
    from diffusers import AutoencoderKL, DiffusionPipeline

    if isinstance(model, (str, os.PathLike)):
        kwargs = dict(model_init_kwargs or {})
        if isinstance(kwargs.get("torch_dtype"), str) and kwargs["torch_dtype"] != "auto":
            kwargs["torch_dtype"] = getattr(torch, kwargs["torch_dtype"])
        try:
            with zero3_init_disabled():
                pipeline = DiffusionPipeline.from_pretrained(os.fspath(model), **kwargs)
        except (OSError, ValueError) as err:
            raise OSError(
                f"could not load the pipeline {os.fspath(model)!r}: {err}. Pass a local folder written by "
                "`pipeline.save_pretrained`, a pipeline object, or a Hub id reachable from this machine."
            ) from err
    else:
        pipeline = model
    denoiser_of(pipeline)
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipeline, part, None) is None:
            raise TypeError(
                f"{type(pipeline).__name__} has no `{part}`: expected a StableDiffusionPipeline, "
                "StableDiffusionXLPipeline, StableDiffusion3Pipeline or FluxPipeline (or a model id / path of one)"
            )
    if vae_model_name_or_path is not None:
        pipeline.vae = AutoencoderKL.from_pretrained(vae_model_name_or_path)
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def encode_prompts(
    pipeline,
    prompts: list[str],
    device: torch.device | str | None = None,
    max_sequence_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Text conditioning exactly as the pipeline computes it at inference: its registered family's
    `encode_prompts` (`trl_rpo.families`).

    SD 1.5: `{"prompt_embeds"}` from its CLIP encoder. SDXL: `prompt_embeds` is the concatenation of both
    encoders' penultimate hidden states and `pooled_prompt_embeds` the second encoder's projection.
    SD3: `prompt_embeds` = both CLIP encoders' penultimate states (padded to T5's width) followed by T5's tokens,
    `pooled_prompt_embeds` = both CLIP projections concatenated. FLUX: `prompt_embeds` = T5's tokens,
    `pooled_prompt_embeds` = CLIP's pooled output. Qwen-Image: the Qwen2.5-VL states of the prompt and their
    `prompt_embeds_mask`. `max_sequence_length` caps the T5 / LLM tokens (default: the pipeline's own).
    """
    from .families import detect_family

    out = detect_family(pipeline).encode_prompts(pipeline, list(prompts), max_sequence_length)
    return {k: v.to(device) if device is not None else v for k, v in out.items()}


@torch.no_grad()
def encode_images(
    vae, pixel_values: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None = None
) -> torch.Tensor:
    """VAE latents of images in [-1, 1], scaled (and shifted, where the VAE has a shift) as the UNet expects.

    Latents are a sample of the VAE posterior (as in the diffusers training scripts); pass `generator` for a
    reproducible draw (a list: one generator per image). Autocast is switched off so the VAE really runs in its
    own dtype: SDXL's VAE is kept in float32 because it overflows in fp16, which an enclosing fp16 autocast would
    silently undo.
    """
    pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
    with torch.autocast(device_type=pixel_values.device.type, enabled=False):
        latents = vae.encode(pixel_values).latent_dist.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents.float() - shift) * vae.config.scaling_factor


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (`[B, 3, H, W]`, float32) from UNet-space latents; differentiable, outside autocast."""
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor + shift
    with torch.autocast(device_type=latents.device.type, enabled=False):
        images = vae.decode(latents, return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def tensor_to_pil(images: torch.Tensor) -> list:
    """`[B, 3, H, W]` in [0, 1] -> RGB PIL images."""
    from PIL import Image

    array = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def sdxl_time_ids(original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor, target_size: int) -> torch.Tensor:
    """SDXL micro-conditioning `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]` per image.

    Uses each image's real original size and crop offset (as the diffusers SDXL scripts do), not the
    constant `[res, res, 0, 0, res, res]` of the Diffusion-DPO reference code.
    """
    target = torch.full_like(original_sizes, float(target_size))
    return torch.cat([original_sizes.float(), crop_top_lefts.float(), target.float()], dim=-1)


def load_denoiser_state_dict(folder: str) -> dict[str, torch.Tensor]:
    """State dict of a diffusers UNet folder (single or sharded safetensors), loaded without pickle."""
    single = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    index = os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json")
    import safetensors.torch

    if os.path.isfile(single):
        return safetensors.torch.load_file(single)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(safetensors.torch.load_file(os.path.join(folder, shard)))
        return state
    raise FileNotFoundError(f"cannot resume: no diffusers UNet weights (safetensors) in {folder!r}")
