"""The UNet families: SD 1.5 (`"sd"`) and SDXL (`"sdxl"`), DDPM noise, CLIP text encoders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import DenoiserFamily, register_family

__all__ = ["SDFamily", "SDXLFamily"]


@dataclass(frozen=True)
class SDFamily(DenoiserFamily):
    """SD 1.5 / 2.x: `unet(x, t, encoder_hidden_states)` with one CLIP encoder's last hidden states."""

    def matches(self, pipeline: Any) -> bool:
        unet = getattr(pipeline, "unet", None)
        return unet is not None and getattr(unet.config, "addition_embed_type", None) != "text_time"

    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        embeds, _ = pipeline.encode_prompt(list(prompts), pipeline.text_encoder.device, 1, False)
        return {"prompt_embeds": embeds}

    def encode_prompts_with_negative(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None, resolution: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        embeds, neg = pipeline.encode_prompt(list(prompts), pipeline.text_encoder.device, 1, True)
        return {"prompt_embeds": embeds}, {"prompt_embeds": neg}

    def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
        return model(noisy_latents, timesteps, encoder_hidden_states=conditioning["prompt_embeds"], return_dict=False)[
            0
        ]


@dataclass(frozen=True)
class SDXLFamily(DenoiserFamily):
    """SDXL: two CLIP encoders, pooled `text_embeds` and the `time_ids` micro-conditioning (sizes and crops)."""

    def matches(self, pipeline: Any) -> bool:
        unet = getattr(pipeline, "unet", None)
        return (
            unet is not None
            and getattr(pipeline, "text_encoder_2", None) is not None
            and getattr(unet.config, "addition_embed_type", None) == "text_time"
        )

    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = pipeline.encode_prompt(
            list(prompts), device=pipeline.text_encoder.device, num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )  # fmt: skip
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def encode_prompts_with_negative(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None, resolution: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Both branches with SDXL's default micro-conditioning `[res, res, 0, 0, res, res]` (no crop)."""
        embeds, neg, pooled, neg_pooled = pipeline.encode_prompt(
            list(prompts), device=pipeline.text_encoder.device, num_images_per_prompt=1,
            do_classifier_free_guidance=True,
        )  # fmt: skip
        cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        uncond = {"prompt_embeds": neg, "pooled_prompt_embeds": neg_pooled}
        if resolution is not None:
            res = float(resolution)
            time_ids = torch.tensor([[res, res, 0.0, 0.0, res, res]], device=embeds.device).repeat(len(prompts), 1)
            cond["time_ids"], uncond["time_ids"] = time_ids, time_ids
        return cond, uncond

    def micro_conditioning(self, original_sizes, crop_top_lefts, resolution):
        from ..pipelines import sdxl_time_ids

        return {"time_ids": sdxl_time_ids(original_sizes, crop_top_lefts, resolution)}

    def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
        added = {"text_embeds": conditioning["pooled_prompt_embeds"], "time_ids": conditioning["time_ids"]}
        return model(
            noisy_latents, timesteps, encoder_hidden_states=conditioning["prompt_embeds"], added_cond_kwargs=added,
            return_dict=False,
        )[0]  # fmt: skip


SD = register_family(SDFamily("sd", "unet", False, ("text_encoder",)))
SDXL = register_family(
    SDXLFamily("sdxl", "unet", False, ("text_encoder", "text_encoder_2"), micro_conditioning_keys=("time_ids",)),
    before="sd",
)
