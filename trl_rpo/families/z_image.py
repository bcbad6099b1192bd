"""Z-Image and Z-Image-Turbo (`"z_image"`): a single-stream DiT over text and image tokens, a Qwen3 text encoder.

What differs from the MMDiT families, all here:

* prompts: Qwen3's second-to-last hidden states of the prompt in its chat template, one variable-length tensor
  per prompt in the pipeline; padded here to a fixed `max_sequence_length` (512, the pipeline's default) with a
  mask, and unpadded again for the denoiser call;
* the denoiser call: lists of `[C, 1, h, w]` latents and `[L_i, D]` caption features, the timestep as `1 - sigma`
  and the output as the negative velocity (`ZImagePipeline` steps with `-output`);
* guidance: `ZImagePipeline(guidance_scale=g)` runs CFG when `g > 0` and predicts `cond + g (cond - uncond)`, so
  the trainers' `guidance_scale` is Z-Image's `g` (Z-Image-Turbo: 0, no unconditional branch);
* the rollout schedule: `sigmas = linspace(1, 1/N, N)` then the scheduler's shift (3 for Turbo).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import DenoiserFamily, register_family

__all__ = ["ZImageFamily"]

DEFAULT_MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline.__call__'s default


@dataclass(frozen=True)
class ZImageFamily(DenoiserFamily):
    """Z-Image / Z-Image-Turbo (`ZImagePipeline`, `ZImageImg2ImgPipeline`)."""

    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """`prompt_embeds` `[B, L, D]` and `prompt_embeds_mask` `[B, L]` (1: a prompt token), `L` the fixed length."""
        length = max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH
        embeds, _ = pipeline.encode_prompt(
            prompt=list(prompts), device=pipeline.text_encoder.device, do_classifier_free_guidance=False,
            max_sequence_length=length,
        )  # fmt: skip
        padded = embeds[0].new_zeros(len(embeds), length, embeds[0].shape[-1])
        mask = torch.zeros(len(embeds), length, dtype=torch.long, device=padded.device)
        for i, e in enumerate(embeds):
            padded[i, : len(e)] = e
            mask[i, : len(e)] = 1
        return {"prompt_embeds": padded, "prompt_embeds_mask": mask}

    def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
        captions = [e[m.bool()] for e, m in zip(conditioning["prompt_embeds"], conditioning["prompt_embeds_mask"])]
        out = model(
            list(noisy_latents.unsqueeze(2).unbind(0)),
            (num_train_timesteps - timesteps.float()) / num_train_timesteps,
            captions,
            return_dict=False,
        )[0]
        return -torch.stack(out).squeeze(2)

    def guidance_active(self, scale: float, pipeline: Any = None) -> bool:
        """`ZImagePipeline` runs its unconditional branch for any `guidance_scale > 0`."""
        return scale > 0.0

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """Z-Image's convention: `cond + g (cond - uncond)` (the usual `uncond + s (cond - uncond)` at `s = g + 1`)."""
        return cond + scale * (cond - uncond)


Z_IMAGE = register_family(
    ZImageFamily(
        "z_image", "transformer", flow_matching=True, text_encoders=("text_encoder",),
        denoiser_classes=("ZImageTransformer2DModel",), uniform_sampling_sigmas=True, takes_sequence_length=True,
    )
)  # fmt: skip
