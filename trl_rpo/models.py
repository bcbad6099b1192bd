"""One small adapter per denoiser family: SD 1.5 and SDXL (UNet, DDPM noise) and SD3 / FLUX.1 (rectified flow).

Trainers keep one training step and ask the adapter for the family-specific parts::

    adapter = DenoiserAdapter(pipeline)                     # family chosen from the pipeline's classes
    latents = adapter.encode_images(pixel_values)           # [B, C, h, w] (FLUX packs only inside `predict`)
    cond = adapter.encode_prompts(prompts, device)          # the conditioning dict of this family
    noise, timesteps = adapter.sample_pair_noise_and_timesteps(latents, generator)
    noisy = adapter.add_noise(latents, noise, timesteps)
    error = per_sample_mse(adapter.predict(model, noisy, timesteps, cond), adapter.target(latents, noise, timesteps))

The family itself is data (:class:`DenoiserFamily`): which pipeline attribute is trained (`unet` or
`transformer`), which text encoders are frozen, whether the noise process is DDPM or rectified flow, and the
keyword its pipeline class uses to save LoRA layers. FLUX latents stay `[B, C, h, w]` in the trainer and are
packed into 2x2 patches (`[B, h/2 * w/2, 4C]`) only for the transformer call: the per-sample mean squared error
is the same in either layout, and noise, targets and precomputed caches keep one shape for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .diffusion import (
    FLOW_WEIGHTING_SCHEMES,
    diffusion_target,
    flow_noisy_latents,
    flow_velocity_target,
    sample_pair_flow_noise_and_timesteps,
    sample_pair_noise_and_timesteps,
)
from .pipelines import encode_images, encode_prompts, is_flux_pipeline, is_sd3_pipeline, is_sdxl_pipeline

__all__ = [
    "FAMILIES",
    "DenoiserAdapter",
    "DenoiserFamily",
    "detect_family",
    "flux_latent_image_ids",
    "pack_latents",
    "unpack_latents",
]


@dataclass(frozen=True)
class DenoiserFamily:
    """What differs between model families, as data.

    Attributes:
        name: `"sd"`, `"sdxl"`, `"sd3"` or `"flux"`.
        denoiser: the pipeline attribute holding the trained network (`"unet"` or `"transformer"`).
        flow_matching: rectified flow (`x = (1-s) x0 + s eps`, target `eps - x0`) instead of DDPM noising.
        text_encoders: the pipeline attributes of its (frozen) text encoders.
        guidance_distilled: guided by an embedding, not by classifier-free guidance: its pipeline runs no
            unconditional branch unless true CFG is asked for (FLUX.1's `true_cfg_scale`, 1 by default).
        uniform_sampling_sigmas: its pipeline samples on `sigmas = linspace(1, 1/N, N)` (then shifted), not on the
            scheduler's own `set_timesteps(N)` grid (FLUX.1).
    """

    name: str
    denoiser: str
    flow_matching: bool
    text_encoders: tuple[str, ...]
    guidance_distilled: bool = False
    uniform_sampling_sigmas: bool = False

    @property
    def lora_prefix(self) -> str:
        """Key prefix of the denoiser's layers in a diffusers LoRA file (`unet.` / `transformer.`)."""
        return self.denoiser

    @property
    def frozen_modules(self) -> tuple[str, ...]:
        return ("vae", *self.text_encoders)


FAMILIES: dict[str, DenoiserFamily] = {
    "sd": DenoiserFamily("sd", "unet", False, ("text_encoder",)),
    "sdxl": DenoiserFamily("sdxl", "unet", False, ("text_encoder", "text_encoder_2")),
    "sd3": DenoiserFamily("sd3", "transformer", True, ("text_encoder", "text_encoder_2", "text_encoder_3")),
    "flux": DenoiserFamily(
        "flux",
        "transformer",
        True,
        ("text_encoder", "text_encoder_2"),
        guidance_distilled=True,
        uniform_sampling_sigmas=True,
    ),  # fmt: skip
}


def detect_family(pipeline) -> DenoiserFamily:
    """The family of a diffusers pipeline, from the class of its denoiser (and SDXL's micro-conditioning)."""
    if getattr(pipeline, "transformer", None) is not None:
        if is_sd3_pipeline(pipeline):
            return FAMILIES["sd3"]
        if is_flux_pipeline(pipeline):
            return FAMILIES["flux"]
        raise TypeError(
            f"{type(pipeline).__name__} has a {type(pipeline.transformer).__name__}: supported transformers are "
            "SD3Transformer2DModel (SD3 / SD3.5) and FluxTransformer2DModel (FLUX.1)"
        )
    if getattr(pipeline, "unet", None) is not None:
        return FAMILIES["sdxl"] if is_sdxl_pipeline(pipeline) else FAMILIES["sd"]
    raise TypeError(
        f"{type(pipeline).__name__} has neither a `unet` nor a `transformer`: expected a StableDiffusionPipeline, "
        "StableDiffusionXLPipeline, StableDiffusion3Pipeline or FluxPipeline"
    )


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


class DenoiserAdapter:
    """Encode, noise, predict and target for one pipeline, whatever its family.

    Args:
        pipeline: a `StableDiffusionPipeline`, `StableDiffusionXLPipeline`, `StableDiffusion3Pipeline` or
            `FluxPipeline` (or their img2img siblings: only the denoiser, VAE and text encoders are used).
        prediction_type: UNet families only: override the scheduler's (`"epsilon"` / `"v_prediction"`).
        weighting_scheme, logit_mean, logit_std, mode_scale: flow families only: the training density of the
            noise level (:func:`~trl_rpo.diffusion.sample_flow_sigmas`).
        max_sequence_length: flow families only: T5 tokens (default: the pipeline's own).
        embedded_guidance_scale: FLUX.1-dev-style guidance embedding value (ignored when the transformer has no
            guidance embedding).
    """

    def __init__(
        self,
        pipeline,
        prediction_type: str | None = None,
        weighting_scheme: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        max_sequence_length: int | None = None,
        embedded_guidance_scale: float = 3.5,
    ):
        self.pipeline = pipeline
        self.family = detect_family(pipeline)
        if weighting_scheme not in FLOW_WEIGHTING_SCHEMES:
            raise ValueError(f"weighting_scheme must be one of {FLOW_WEIGHTING_SCHEMES}, got {weighting_scheme!r}")
        self.weighting_scheme, self.logit_mean, self.logit_std, self.mode_scale = (
            weighting_scheme,
            logit_mean,
            logit_std,
            mode_scale,
        )
        self.max_sequence_length = max_sequence_length
        self.embedded_guidance_scale = embedded_guidance_scale
        if self.family.flow_matching:
            from diffusers import FlowMatchEulerDiscreteScheduler

            if prediction_type is not None:
                raise ValueError(
                    f"prediction_type={prediction_type!r} applies to UNet models; {self.family.name} is a "
                    "rectified-flow model whose target is always the velocity eps - x0"
                )
            # A private copy: the pipeline's scheduler gets `set_timesteps` at inference, which rewrites its tables.
            self.noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
            self.prediction_type = "flow"
        else:
            from diffusers import DDPMScheduler

            # Training noises with the forward process of the pipeline's own schedule.
            self.noise_scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)
            self.prediction_type = prediction_type or self.noise_scheduler.config.prediction_type
        config = self.denoiser.config
        self.guidance_embeds = bool(getattr(config, "guidance_embeds", False))

    # -- the model -----------------------------------------------------------------------------------------------

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipeline, self.family.denoiser)

    @property
    def latent_channels(self) -> int:
        """Channels of the unpacked latents (FLUX: the transformer's `in_channels / 4`)."""
        if self.family.name == "flux":
            return self.denoiser.config.in_channels // 4
        return self.denoiser.config.in_channels

    def native_resolution(self) -> int:
        """Default image side in pixels: the denoiser's `sample_size` (FLUX: the pipeline's) x the VAE factor."""
        sample_size = getattr(self.denoiser.config, "sample_size", None)
        if sample_size is None:
            sample_size = getattr(self.pipeline, "default_sample_size", 128)
        return int(sample_size) * self.pipeline.vae_scale_factor

    @property
    def hidden_size(self) -> int:
        """The denoiser's widest feature size (DeepSpeed's bucket sizes are derived from it)."""
        config = self.denoiser.config
        if self.family.denoiser == "unet":
            return max(config.block_out_channels)
        return int(config.num_attention_heads * config.attention_head_dim)

    # -- encoding ------------------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
        """The family's text conditioning (see :func:`~trl_rpo.pipelines.encode_prompts`)."""
        return encode_prompts(self.pipeline, prompts, device, max_sequence_length=self.max_sequence_length)

    @torch.no_grad()
    def encode_prompts_with_negative(self, prompts: list[str], device=None) -> tuple[dict, dict]:
        """(conditional, unconditional) text conditioning for classifier-free guidance, as the pipeline builds it."""
        pipe, name = self.pipeline, self.family.name
        encoder_device = pipe.text_encoder.device
        t5 = {"max_sequence_length": self.max_sequence_length} if self.max_sequence_length else {}
        if name == "sd3":
            embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=encoder_device, do_classifier_free_guidance=True,
                **t5,
            )  # fmt: skip
            cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
            uncond = {"prompt_embeds": neg, "pooled_prompt_embeds": neg_pooled}
        elif name == "flux":
            cond = encode_prompts(pipe, prompts, None, self.max_sequence_length)
            uncond = encode_prompts(pipe, [""] * len(prompts), None, self.max_sequence_length)
        elif name == "sdxl":
            embeds, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompts, device=encoder_device, num_images_per_prompt=1, do_classifier_free_guidance=True
            )
            cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
            uncond = {"prompt_embeds": neg, "pooled_prompt_embeds": neg_pooled}
        else:
            embeds, neg = pipe.encode_prompt(prompts, encoder_device, 1, True)
            cond, uncond = {"prompt_embeds": embeds}, {"prompt_embeds": neg}
        to = (lambda d: {k: v.to(device) for k, v in d.items()}) if device is not None else (lambda d: d)
        return to(cond), to(uncond)

    def encode_images(self, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        """Scaled (and shifted) VAE latents `[B, C, h, w]` of images in [-1, 1]."""
        return encode_images(self.pipeline.vae, pixel_values, generator)

    # -- noise and targets ---------------------------------------------------------------------------------------

    def sample_pair_noise_and_timesteps(
        self,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
        timestep_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Same noise and timestep for both halves of `[chosen; rejected]`.

        UNet families: DDPM timesteps, uniform or drawn with `timestep_weights`
        (:func:`~trl_rpo.diffusion.sample_pair_noise_and_timesteps`). Flow families: timesteps `t = sigma * N` from
        the configured density (:func:`~trl_rpo.diffusion.sample_pair_flow_noise_and_timesteps`), as float tensors.
        """
        if not self.family.flow_matching:
            return sample_pair_noise_and_timesteps(
                latents, self.noise_scheduler.config.num_train_timesteps, generator, timestep_weights
            )
        if timestep_weights is not None:
            raise ValueError(
                f"{self.family.name} is a rectified-flow model: its noise levels follow weighting_scheme, not "
                "DDPM timestep weights"
            )
        noise, timesteps, _ = sample_pair_flow_noise_and_timesteps(
            latents,
            self.noise_scheduler,
            self.weighting_scheme,
            self.logit_mean,
            self.logit_std,
            self.mode_scale,
            generator,
        )
        return noise, timesteps

    def sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Flow noise levels `sigma = t / N` of flow timesteps."""
        return timesteps.float() / self.noise_scheduler.config.num_train_timesteps

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """DDPM: `sqrt(abar) x0 + sqrt(1 - abar) eps`; flow: `(1 - sigma) x0 + sigma eps`."""
        if self.family.flow_matching:
            return flow_noisy_latents(latents, noise, self.sigmas(timesteps))
        return self.noise_scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The regression target: epsilon / v / x0 for UNets (their `prediction_type`), `eps - x0` for flow."""
        if self.family.flow_matching:
            return flow_velocity_target(latents, noise)
        return diffusion_target(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)

    # -- the denoiser call ---------------------------------------------------------------------------------------

    def predict(
        self, model: Any, noisy_latents: torch.Tensor, timesteps: torch.Tensor, conditioning: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """One denoiser prediction `[B, C, h, w]` (the layout of `noisy_latents`).

        * SD 1.5: `unet(x, t, encoder_hidden_states)`; SDXL adds `text_embeds` (pooled) and `time_ids`.
        * SD3: `transformer(x, timestep=t, encoder_hidden_states, pooled_projections)`.
        * FLUX: packed `x`, `timestep = t / 1000`, `img_ids` / `txt_ids` (RoPE positions), `pooled_projections`,
          and the guidance embedding (`embedded_guidance_scale`) when the model has one; the output is unpacked.
        """
        name = self.family.name
        if name in ("sd", "sdxl"):
            kwargs: dict[str, Any] = {"encoder_hidden_states": conditioning["prompt_embeds"]}
            if name == "sdxl":
                kwargs["added_cond_kwargs"] = {
                    "text_embeds": conditioning["pooled_prompt_embeds"],
                    "time_ids": conditioning["time_ids"],
                }
            return model(noisy_latents, timesteps, **kwargs, return_dict=False)[0]
        if name == "sd3":
            return model(
                hidden_states=noisy_latents,
                timestep=timesteps,
                encoder_hidden_states=conditioning["prompt_embeds"],
                pooled_projections=conditioning["pooled_prompt_embeds"],
                return_dict=False,
            )[0]
        b, _, h, w = noisy_latents.shape
        embeds = conditioning["prompt_embeds"]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((b,), self.embedded_guidance_scale, device=noisy_latents.device, dtype=torch.float32)
        out = model(
            hidden_states=pack_latents(noisy_latents),
            timestep=timesteps.float() / self.noise_scheduler.config.num_train_timesteps,
            guidance=guidance,
            pooled_projections=conditioning["pooled_prompt_embeds"],
            encoder_hidden_states=embeds,
            txt_ids=torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=noisy_latents.dtype),
            img_ids=flux_latent_image_ids(h, w, noisy_latents.device, noisy_latents.dtype),
            return_dict=False,
        )[0]
        return unpack_latents(out, h, w)

    # -- saving --------------------------------------------------------------------------------------------------

    def lora_save_kwargs(self, lora_layers: dict[str, torch.Tensor], metadata: dict) -> dict[str, Any]:
        """Keywords of the pipeline class's `save_lora_weights` for the denoiser's LoRA layers and their config."""
        prefix = self.family.lora_prefix
        return {f"{prefix}_lora_layers": lora_layers, f"{prefix}_lora_adapter_metadata": metadata}
