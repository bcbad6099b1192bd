"""FLUX.2 [klein] (`"flux2_klein"`): the small FLUX.2 models (4B / 9B) with a Qwen3 text encoder.

What differs from FLUX.1, all here:

* latents: the FLUX.2 VAE's latents patchified 2x2 into channels and normalised by the VAE's batch-norm statistics
  (`vae.bn`); the trainers work in that space, `[B, 4C, h/2, w/2]`, which is also what `Flux2KleinPipeline` takes as
  `latents` (so `packed_latents` is off: the denoiser's tokens are the pixels of this grid);
* prompts: Qwen3's hidden states 9, 18 and 27 of the chat-formatted prompt, stacked along the feature axis, padded
  to `max_sequence_length` (512 by default) by the tokenizer, no mask;
* the denoiser call: 4-axis RoPE positions `(t, h, w, l)` for image and text tokens, `timestep = t / 1000`;
* guidance: true CFG against the empty prompt for `guidance_scale > 1`, none for step-distilled checkpoints
  (`is_distilled` in the pipeline's config);
* the rollout schedule: `linspace(1, 1/N, N)` sigmas shifted by an empirical `mu` of the token and step counts;
* img2img: diffusers has no klein img2img pipeline, so :meth:`Flux2KleinFamily.img2img` does SDEdit on the
  text-to-image pipeline itself (its `latents=` and `sigmas=`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from .base import DEFAULT_LORA_TARGETS, DenoiserFamily, register_family, sdedit_start

__all__ = ["Flux2KleinFamily"]

DEFAULT_MAX_SEQUENCE_LENGTH = 512  # Flux2KleinPipeline.__call__'s default


def _bn_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, torch.float32)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, torch.float32)
    return mean, std


def _patchify(latents: torch.Tensor) -> torch.Tensor:
    """`Flux2KleinPipeline._patchify_latents`: `[B, C, h, w]` -> `[B, 4C, h/2, w/2]`."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def _unpatchify(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_patchify`."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


def _positions(batch: int, t: int, h: int, w: int, length: int, device) -> torch.Tensor:
    """4-axis RoPE ids `(t, h, w, l)` in raster order, as `Flux2KleinPipeline._prepare_latent_ids` / `_text_ids`."""
    grid = torch.cartesian_prod(torch.arange(t), torch.arange(h), torch.arange(w), torch.arange(length))
    return grid.unsqueeze(0).expand(batch, -1, -1).to(device)


@dataclass(frozen=True)
class Flux2KleinFamily(DenoiserFamily):
    """FLUX.2 [klein] (`Flux2KleinPipeline`): a `Flux2Transformer2DModel` with a Qwen3 text encoder (FLUX.2 [dev]
    has a Mistral encoder and another prompt format, and is not this family)."""

    def matches(self, pipeline: Any) -> bool:
        encoder = type(getattr(pipeline, "text_encoder", None)).__name__
        return super().matches(pipeline) and encoder.startswith("Qwen3")

    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        embeds, _ = pipeline.encode_prompt(
            prompt=list(prompts), device=pipeline.text_encoder.device, num_images_per_prompt=1,
            max_sequence_length=max_sequence_length or DEFAULT_MAX_SEQUENCE_LENGTH,
        )  # fmt: skip
        return {"prompt_embeds": embeds}

    def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
        b, c, h, w = noisy_latents.shape
        embeds = conditioning["prompt_embeds"]
        out = model(
            hidden_states=noisy_latents.reshape(b, c, h * w).permute(0, 2, 1),
            encoder_hidden_states=embeds,
            timestep=timesteps.to(noisy_latents.dtype) / num_train_timesteps,
            img_ids=_positions(b, 1, h, w, 1, noisy_latents.device),
            txt_ids=_positions(b, 1, 1, 1, embeds.shape[1], embeds.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1).reshape(b, c, h, w)

    def guidance_active(self, scale: float, pipeline: Any = None) -> bool:
        """CFG above 1, except for step-distilled checkpoints (the pipeline's `is_distilled`)."""
        distilled = bool(getattr(getattr(pipeline, "config", None), "is_distilled", False))
        return scale > 1.0 and not distilled

    def latent_side(self, pixels: int, vae_scale_factor: int) -> int:
        return pixels // (2 * vae_scale_factor)  # the VAE's latents, patchified 2x2

    def image_seq_len(self, latent_height: int, latent_width: int) -> int:
        return latent_height * latent_width  # the latents are already patchified 2x2

    def set_sampling_timesteps(
        self, scheduler: Any, steps: int, latent_height: int, latent_width: int, device: Any = None
    ) -> None:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        sigmas = None if scheduler.config.get("use_flow_sigmas", False) else self.sampling_sigmas(steps)
        mu = compute_empirical_mu(self.image_seq_len(latent_height, latent_width), steps)
        scheduler.set_timesteps(steps, device=device, sigmas=sigmas, mu=mu)

    def encode_images(self, vae: Any, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        pixel_values = pixel_values.to(device=vae.device, dtype=vae.dtype)
        with torch.no_grad(), torch.autocast(device_type=pixel_values.device.type, enabled=False):
            latents = _patchify(vae.encode(pixel_values).latent_dist.sample(generator=generator).float())
        mean, std = _bn_stats(vae, latents)
        return (latents - mean) / std

    def decode_latents(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        mean, std = _bn_stats(vae, latents)
        latents = _unpatchify(latents.float() * std + mean).to(device=vae.device, dtype=vae.dtype)
        with torch.autocast(device_type=latents.device.type, enabled=False):
            images = vae.decode(latents, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def img2img(self, pipeline: Any):
        """SDEdit on a `Flux2KleinPipeline` as diffusers' flow img2img pipelines do it (`FluxImg2ImgPipeline`).

        The images are encoded as the trainers encode them (a VAE sample from each image's generator, patchified,
        batch-norm normalised: the space of the pipeline's `latents`); of the pipeline's own `num_inference_steps`
        schedule (`linspace(1, 1/N, N)` shifted by `mu(tokens, N)`) the steps from `sdedit_start(N, strength)` on
        are kept (as many as diffusers' `get_timesteps` keeps: `N * strength` rounded up); the latents are noised to
        the first kept sigma, `(1 - sigma) x0 + sigma noise` (noise drawn from the same generators after the
        encoding); the pipeline then denoises them on exactly the kept sigmas. The input enters as these latents,
        not as the pipeline's own `image` (reference images for editing), which stays unset.
        """
        return functools.partial(self._sdedit, pipeline)

    @torch.no_grad()
    def _sdedit(self, pipeline, *, image, strength, num_inference_steps, generator=None, height=None, width=None,
                **kwargs):  # fmt: skip
        from diffusers.utils.torch_utils import randn_tensor

        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not (height and width):
            width, height = images[0].size
        x0 = self.encode_images(pipeline.vae, pipeline.image_processor.preprocess(images, height, width), generator)
        start = sdedit_start(num_inference_steps, strength)
        self.set_sampling_timesteps(pipeline.scheduler, num_inference_steps, *x0.shape[2:], device=x0.device)
        kept = pipeline.scheduler.sigmas[start:-1].detach().cpu().clone()
        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        sigma = kept[0].to(x0)
        latents = (1 - sigma) * x0 + sigma * noise
        # The pipeline shifts the sigmas it is given by its mu(tokens, num_inference_steps), elementwise: the tail
        # of the unshifted grid with the full step count samples exactly the tail of its own N-step schedule.
        sigmas = self.sampling_sigmas(num_inference_steps)[start:].tolist()
        output = pipeline(latents=latents, sigmas=sigmas, num_inference_steps=num_inference_steps, height=height,
                          width=width, generator=generator, **kwargs)  # fmt: skip
        used = pipeline.scheduler.sigmas[:-1].detach().cpu()
        if used.shape != kept.shape or not torch.allclose(used, kept, atol=1e-6):
            raise RuntimeError(
                f"{type(pipeline.scheduler).__name__} did not sample the kept tail of its own schedule (ran sigmas "
                f"{used.tolist()}, expected {kept.tolist()}): SDEdit needs a scheduler that takes the pipeline's "
                "`sigmas` and shifts them elementwise (no flow / Karras / exponential / beta sigmas)"
            )
        return output


FLUX2_KLEIN = register_family(
    Flux2KleinFamily(
        "flux2_klein", "transformer", flow_matching=True, text_encoders=("text_encoder",),
        denoiser_classes=("Flux2Transformer2DModel",), uniform_sampling_sigmas=True, takes_sequence_length=True,
        # the fused QKV + MLP input projection of the single-stream blocks, where most of the parameters are
        lora_targets=(*DEFAULT_LORA_TARGETS, "to_qkv_mlp_proj"),
    )
)  # fmt: skip
