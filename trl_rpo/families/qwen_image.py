"""Qwen-Image (`"qwen_image"`): an MMDiT with a Qwen2.5-VL text encoder, 2x2-packed latents and true CFG.

What differs from FLUX.1, all here:

* prompts: the Qwen2.5-VL states of the prompt in Qwen-Image's chat template (its system prefix dropped), with a
  mask; padded here to a fixed `max_sequence_length` (512, the pipeline's default) so conditionings stack;
* the denoiser call: packed latents, `timestep = t / 1000`, `encoder_hidden_states_mask` and `img_shapes` (RoPE);
* guidance: true classifier-free guidance (`QwenImagePipeline(true_cfg_scale=s, negative_prompt="")` with `s` the
  trainers' `guidance_scale`), its combined prediction rescaled to the conditional one's norm per token;
* the VAE (`AutoencoderKLQwenImage`): video-shaped `[B, C, 1, h, w]` latents normalised by per-channel
  `latents_mean` / `latents_std` instead of one scaling factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import DenoiserFamily, register_family
from .flow import pack_latents, unpack_latents

__all__ = ["QwenImageFamily"]

DEFAULT_MAX_SEQUENCE_LENGTH = 512  # QwenImagePipeline.__call__'s default


def _latent_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, vae.config.z_dim, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, torch.float32)
    std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, torch.float32)
    return mean, std


@dataclass(frozen=True)
class QwenImageFamily(DenoiserFamily):
    """Qwen-Image (`QwenImagePipeline`, `QwenImageImg2ImgPipeline`); not the edit pipelines, whose prompts are
    encoded together with an input image (`trl_rpo.data.QwenImageEditEditor` uses those in the builder)."""

    def matches(self, pipeline: Any) -> bool:
        return super().matches(pipeline) and getattr(pipeline, "processor", None) is None

    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """`prompt_embeds` `[B, L, D]` and `prompt_embeds_mask` `[B, L]` (1: a prompt token), `L` the fixed length."""
        length = max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH
        embeds, mask = pipeline.encode_prompt(
            prompt=list(prompts), device=pipeline.text_encoder.device, num_images_per_prompt=1,
            max_sequence_length=length,
        )  # fmt: skip
        b, n, d = embeds.shape
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(b, n, dtype=torch.long, device=embeds.device)
        embeds = torch.cat([embeds, embeds.new_zeros(b, length - n, d)], dim=1)
        mask = torch.cat([mask.long(), mask.new_zeros(b, length - n).long()], dim=1)
        return {"prompt_embeds": embeds, "prompt_embeds_mask": mask}

    def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
        b, _, h, w = noisy_latents.shape
        out = model(
            hidden_states=pack_latents(noisy_latents),
            timestep=timesteps.to(noisy_latents.dtype) / num_train_timesteps,
            guidance=guidance,
            encoder_hidden_states=conditioning["prompt_embeds"],
            encoder_hidden_states_mask=conditioning["prompt_embeds_mask"].bool(),
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """`uncond + s (cond - uncond)`, rescaled per packed token to the norm of the conditional prediction."""
        _, _, h, w = cond.shape
        packed_cond = pack_latents(cond)
        combined = pack_latents(uncond + scale * (cond - uncond))
        ratio = torch.norm(packed_cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True)
        return unpack_latents(combined * ratio, h, w)

    def pipeline_call_kwargs(
        self, max_sequence_length: int | None, guidance_scale: float | None = None, num_prompts: int = 1
    ) -> dict[str, Any]:
        """`true_cfg_scale` against the empty prompt (the pipeline ignores `guidance_scale` without an embedding); at
        a scale of 1 or less `true_cfg_scale` alone, which turns CFG off even when a caller adds a negative prompt."""
        kwargs = super().pipeline_call_kwargs(max_sequence_length, None, num_prompts)
        if guidance_scale is not None:
            kwargs["true_cfg_scale"] = guidance_scale
            if guidance_scale > 1.0:
                kwargs["negative_prompt"] = [""] * num_prompts
        return kwargs

    def encode_images(self, vae: Any, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)[:, :, None]
        with torch.no_grad(), torch.autocast(device_type=pixel_values.device.type, enabled=False):
            latents = vae.encode(pixel_values).latent_dist.sample(generator=generator)[:, :, 0].float()
        mean, std = _latent_stats(vae, latents)
        return (latents - mean) / std

    def decode_latents(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        mean, std = _latent_stats(vae, latents)
        latents = (latents.float() * std + mean).to(device=vae.device, dtype=vae.dtype)[:, :, None]
        with torch.autocast(device_type=latents.device.type, enabled=False):
            images = vae.decode(latents, return_dict=False)[0][:, :, 0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


QWEN_IMAGE = register_family(
    QwenImageFamily(
        "qwen_image", "transformer", flow_matching=True, text_encoders=("text_encoder",),
        denoiser_classes=("QwenImageTransformer2DModel",), uniform_sampling_sigmas=True, packed_latents=True,
        takes_sequence_length=True,
    )
)  # fmt: skip
