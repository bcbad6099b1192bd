"""The denoiser adapter: one training-step interface for every registered model family.

Trainers keep one training step and ask the adapter for the family-specific parts::

    adapter = DenoiserAdapter(pipeline)                     # family detected from the pipeline (the registry)
    latents = adapter.encode_images(pixel_values)           # [B, C, h, w] (packing happens only inside `predict`)
    cond = adapter.encode_prompts(prompts, device)          # the conditioning dict of this family
    noise, timesteps = adapter.sample_pair_noise_and_timesteps(latents, generator)
    noisy = adapter.add_noise(latents, noise, timesteps)
    error = per_sample_mse(adapter.predict(model, noisy, timesteps, cond), adapter.target(latents, noise, timesteps))

The families themselves live in the registry `trl_rpo.families` (:class:`DenoiserFamily`, `FAMILIES`,
`register_family`): which pipeline attribute is trained, its text encoders, its noise process (DDPM or rectified
flow), how it encodes prompts and calls its denoiser, its LoRA save keyword and the rollout sampler's schedule. The
adapter adds what is the same for every family of a noise process: training noise, timesteps and targets. Latents
stay `[B, C, h, w]` in the trainer; packed families (FLUX.1, Qwen-Image) fold them into 2x2 patches only for the
denoiser call: the per-sample mean squared error is the same in either layout, and noise, targets and precomputed
caches keep one shape for every family.
"""

from __future__ import annotations

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
from .families import FAMILIES, DenoiserFamily, detect_family, register_family
from .families.flow import flux_latent_image_ids, pack_latents, unpack_latents

__all__ = [
    "FAMILIES",
    "register_family",
    "DenoiserAdapter",
    "DenoiserFamily",
    "detect_family",
    "flux_latent_image_ids",
    "pack_latents",
    "unpack_latents",
]


class DenoiserAdapter:
    """Encode, noise, predict and target for one pipeline, whatever its family.

    Args:
        pipeline: the pipeline of a registered family (`trl_rpo.families.FAMILIES`), or its img2img sibling: only
            the denoiser, VAE and text encoders are used.
        prediction_type: UNet families only: override the scheduler's (`"epsilon"` / `"v_prediction"`).
        weighting_scheme, logit_mean, logit_std, mode_scale: flow families only: the training density of the
            noise level (:func:`~trl_rpo.diffusion.sample_flow_sigmas`).
        max_sequence_length: families with a T5 / LLM text encoder: its tokens (default: the pipeline's own).
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
        """Channels of the unpacked latents `[B, C, h, w]` (packed families: the transformer's `in_channels / 4`)."""
        return self.family.latent_channels(self.denoiser)

    def latent_side(self, resolution: int) -> int:
        """Side of the latents `[B, C, h, w]` the trainers work in, for `resolution`-pixel square images."""
        return self.family.latent_side(resolution, self.pipeline.vae_scale_factor)

    def native_resolution(self) -> int:
        """Default image side in pixels: the denoiser's `sample_size` (FLUX: the pipeline's) x the VAE factor."""
        sample_size = getattr(self.denoiser.config, "sample_size", None)
        if sample_size is None:
            sample_size = getattr(self.pipeline, "default_sample_size", 128)
        return int(sample_size) * self.pipeline.vae_scale_factor

    @property
    def hidden_size(self) -> int:
        """The denoiser's widest feature size (DeepSpeed's bucket sizes are derived from it)."""
        return self.family.hidden_size(self.denoiser)

    # -- encoding ------------------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], device=None) -> dict[str, torch.Tensor]:
        """The family's text conditioning, exactly as its pipeline computes it (`DenoiserFamily.encode_prompts`)."""
        with torch.no_grad():
            out = self.family.encode_prompts(self.pipeline, list(prompts), self.max_sequence_length)
        return _to(out, device)

    def encode_prompts_with_negative(
        self, prompts: list[str], device=None, resolution: int | None = None
    ) -> tuple[dict, dict]:
        """(conditional, unconditional) text conditioning for classifier-free guidance, as the pipeline builds it
        (`resolution`: the image side, for families with size micro-conditioning)."""
        with torch.no_grad():
            cond, uncond = self.family.encode_prompts_with_negative(
                self.pipeline, list(prompts), self.max_sequence_length, resolution
            )
        return _to(cond, device), _to(uncond, device)

    def micro_conditioning(
        self, original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor, resolution: int
    ) -> dict[str, torch.Tensor]:
        """Conditioning from image sizes and crops (SDXL's `time_ids`; empty for most families)."""
        return self.family.micro_conditioning(original_sizes, crop_top_lefts, resolution)

    def encode_images(self, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        """Scaled (and shifted) VAE latents `[B, C, h, w]` of images in [-1, 1]."""
        return self.family.encode_images(self.pipeline.vae, pixel_values, generator)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (`[B, 3, H, W]`, float32) from latents `[B, C, h, w]`; differentiable."""
        return self.family.decode_latents(self.pipeline.vae, latents)

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
        """One denoiser prediction `[B, C, h, w]` (the layout of `noisy_latents`): `DenoiserFamily.predict`, with
        the guidance embedding (`embedded_guidance_scale`) when the denoiser has one."""
        guidance = None
        if self.guidance_embeds:
            b = noisy_latents.shape[0]
            guidance = torch.full((b,), self.embedded_guidance_scale, device=noisy_latents.device, dtype=torch.float32)
        steps = int(self.noise_scheduler.config.num_train_timesteps)
        return self.family.predict(model, noisy_latents, timesteps, conditioning, steps, guidance)

    def guidance_active(self, scale: float) -> bool:
        """Whether the family's pipeline runs an unconditional branch at CFG scale `scale`."""
        return self.family.guidance_active(scale, self.pipeline)

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance of two predictions, as the family's pipeline combines them."""
        return self.family.combine_guidance(uncond, cond, scale)

    def set_sampling_timesteps(self, scheduler: Any, steps: int, resolution: int, device=None) -> None:
        """`set_timesteps` on a rollout sampler as the pipeline calls it for `resolution`-pixel square images."""
        side = self.latent_side(resolution)
        self.family.set_sampling_timesteps(scheduler, steps, side, side, device)

    def pipeline_call_kwargs(self, guidance_scale: float | None = None, num_prompts: int = 1) -> dict[str, Any]:
        """Keywords of the pipeline's `__call__` for this text length and CFG scale, in the family's convention."""
        return self.family.pipeline_call_kwargs(self.max_sequence_length, guidance_scale, num_prompts)

    # -- saving --------------------------------------------------------------------------------------------------

    def lora_save_kwargs(self, lora_layers: dict[str, torch.Tensor], metadata: dict) -> dict[str, Any]:
        """Keywords of the pipeline class's `save_lora_weights` for the denoiser's LoRA layers and their config."""
        return self.family.lora_save_kwargs(lora_layers, metadata)


def _to(conditioning: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in conditioning.items()} if device is not None else conditioning
