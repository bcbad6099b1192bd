"""The rectified-flow MMDiT families of Stability and Black Forest Labs: SD3 / SD3.5 (`"sd3"`) and FLUX.1 (`"flux"`).

Also the 2x2 latent packing and RoPE positions that FLUX.1 and its descendants (Qwen-Image) share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .base import DenoiserFamily, register_family

__all__ = ["FluxFamily", "SD3Family", "flux_latent_image_ids", "pack_latents", "unpack_latents"]


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's 2x2 patch packing: `[B, C, h, w]` -> `[B, (h/2)(w/2), 4C]` (as `FluxPipeline._pack_latents`)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: latent height and width must be even, got {h}x{w}")
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: `[B, (h/2)(w/2), 4C]` -> `[B, C, h, w]` for latent size `h x w`."""
    b, _, channels = packed.shape
    x = packed.view(b, height // 2, width // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, height, width)


def flux_latent_image_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX's RoPE positions of the packed image tokens, `[(h/2)(w/2), 3]` = `(0, row, column)` for latent `h x w`."""
    rows, cols = height // 2, width // 2
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)


def _t5_length(max_sequence_length: int | None) -> dict[str, int]:
    return {"max_sequence_length": max_sequence_length} if max_sequence_length is not None else {}


@dataclass(frozen=True)
class SD3Family(DenoiserFamily):
    """SD3 / SD3.5: two CLIP encoders and T5; `prompt_embeds` = CLIP states (padded to T5's width) then T5's tokens,
    `pooled_prompt_embeds` = both CLIP projections; `transformer(x, timestep=t, ...)` with `t` in `[0, 1000]`."""

    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=pipeline.text_encoder.device,
            num_images_per_prompt=1, do_classifier_free_guidance=False, **_t5_length(max_sequence_length),
        )  # fmt: skip
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def encode_prompts_with_negative(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None, resolution: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        embeds, neg, pooled, neg_pooled = pipeline.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=pipeline.text_encoder.device,
            do_classifier_free_guidance=True, **_t5_length(max_sequence_length),
        )  # fmt: skip
        return (
            {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled},
            {"prompt_embeds": neg, "pooled_prompt_embeds": neg_pooled},
        )

    def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
        return model(
            hidden_states=noisy_latents,
            timestep=timesteps,
            encoder_hidden_states=conditioning["prompt_embeds"],
            pooled_projections=conditioning["pooled_prompt_embeds"],
            return_dict=False,
        )[0]


@dataclass(frozen=True)
class FluxFamily(DenoiserFamily):
    """FLUX.1: CLIP (pooled) and T5 (tokens); packed 2x2 latents, `timestep = t / 1000`, `img_ids` / `txt_ids`
    RoPE positions and the guidance embedding (FLUX.1-dev) when the transformer has one."""

    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = pipeline.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=pipeline.text_encoder.device, num_images_per_prompt=1,
            **_t5_length(max_sequence_length),
        )  # fmt: skip
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
        _, _, h, w = noisy_latents.shape
        embeds = conditioning["prompt_embeds"]
        out = model(
            hidden_states=pack_latents(noisy_latents),
            timestep=timesteps.float() / num_train_timesteps,
            guidance=guidance,
            pooled_projections=conditioning["pooled_prompt_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=noisy_latents.dtype),
            img_ids=flux_latent_image_ids(h, w, noisy_latents.device, noisy_latents.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)


_T5_FAMILY = {"flow_matching": True, "takes_sequence_length": True}
SD3 = register_family(
    SD3Family(
        "sd3", "transformer", text_encoders=("text_encoder", "text_encoder_2", "text_encoder_3"),
        denoiser_classes=("SD3Transformer2DModel",), **_T5_FAMILY,
    )
)  # fmt: skip
FLUX = register_family(
    FluxFamily(
        "flux", "transformer", text_encoders=("text_encoder", "text_encoder_2"),
        denoiser_classes=("FluxTransformer2DModel",), guidance_distilled=True, uniform_sampling_sigmas=True,
        packed_latents=True, **_T5_FAMILY,
    )
)  # fmt: skip
