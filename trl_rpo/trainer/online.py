"""What the online trainers (TailorPO, GRPO) share: rewards, CFG conditioning, the guided denoiser, decoding."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..diffusion import ddim_previous_timestep, ddim_step_with_logprob, flow_sde_step_with_logprob
from ..pipelines import decode_latents, tensor_to_pil
from ..rewards import combine_rewards

__all__ = ["OnlineDiffusionMixin", "RewardFunc", "collate_prompts", "normalize_reward_funcs"]

RewardFunc = Callable[..., Sequence[float]]


def collate_prompts(examples: list[dict[str, Any]]) -> dict[str, list[str]]:
    """A batch of prompt rows as `{"prompt": [...]}`."""
    return {"prompt": [ex["prompt"] for ex in examples]}


def normalize_reward_funcs(reward_funcs: RewardFunc | Sequence[RewardFunc]) -> list[RewardFunc]:
    """`reward_funcs` as a non-empty list of callables (one callable is accepted as is)."""
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if not funcs or not all(callable(f) for f in funcs):
        raise TypeError("reward_funcs must be a callable or a non-empty list of callables")
    return funcs


class OnlineDiffusionMixin:
    """Rollout helpers for trainers that sample images with the policy and score them with reward functions.

    Mixed into a [`BaseDiffusionTrainer`] subclass whose config has `guidance_scale`, `eta`, `sde_noise_level`,
    `num_inference_steps`, `reward_weights` and `vae_decode_batch_size`. Call `_setup_online(funcs, weights)`
    after `BaseDiffusionTrainer.__init__`.
    """

    reward_funcs: list[RewardFunc]
    reward_weights: list[float]

    def _setup_online(self, funcs: list[RewardFunc], reward_weights: Sequence[float] | None) -> None:
        """Reward weights (argument, else config, else ones), scorers on the device, the sampling scheduler.

        UNet models sample with DDIM; SD3 / FLUX with their flow-matching Euler scheduler, whose ODE the trainers
        turn into Flow-GRPO's SDE (same marginals, Gaussian steps).
        """
        weights = reward_weights if reward_weights is not None else self.args.reward_weights
        if weights is not None and len(weights) != len(funcs):
            raise ValueError(f"got {len(weights)} reward_weights for {len(funcs)} reward functions")
        self.reward_weights = [float(w) for w in weights] if weights is not None else [1.0] * len(funcs)
        for func in funcs:
            if hasattr(func, "to") and callable(func.to):
                func.to(self.accelerator.device)
        if self.is_flow:
            from diffusers import FlowMatchEulerDiscreteScheduler

            self.sample_scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.pipeline.scheduler.config)
        else:
            from diffusers import DDIMScheduler

            self.sample_scheduler = DDIMScheduler.from_config(
                self.pipeline.scheduler.config, prediction_type=self.prediction_type
            )

    # -- conditioning and the guided denoiser ----------------------------------------------------------------

    @torch.no_grad()
    def encode_conditioning(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(conditional, unconditional) denoiser inputs per prompt, as the pipeline itself builds them for CFG."""
        device = self.accelerator.device
        if self.is_flow:  # SD3: its own negative embeddings; FLUX: the empty prompt's
            return self.model_adapter.encode_prompts_with_negative(list(prompts), device)
        encoder_device = self.pipeline.text_encoder.device
        if self.is_sdxl:
            embeds, neg, pooled, neg_pooled = self.pipeline.encode_prompt(
                prompts, device=encoder_device, num_images_per_prompt=1, do_classifier_free_guidance=True
            )
            res = float(self.resolution)
            time_ids = torch.tensor([[res, res, 0.0, 0.0, res, res]], device=device).repeat(len(prompts), 1)
            cond = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "time_ids": time_ids}
            uncond = {"prompt_embeds": neg, "pooled_prompt_embeds": neg_pooled, "time_ids": time_ids}
        else:
            embeds, neg = self.pipeline.encode_prompt(prompts, encoder_device, 1, True)
            cond, uncond = {"prompt_embeds": embeds}, {"prompt_embeds": neg}
        return {k: v.to(device) for k, v in cond.items()}, {k: v.to(device) for k, v in uncond.items()}

    def guided_prediction(self, unet, latents, timesteps, cond, uncond) -> torch.Tensor:
        """Classifier-free guided denoiser output, `uncond + s (cond - uncond)`; one UNet call on a 2x batch."""
        scale = self.args.guidance_scale
        if scale <= 1.0:
            return self.unet_forward(unet, latents, timesteps, cond).float()
        both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        out = self.unet_forward(unet, torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), both)
        out_uncond, out_cond = out.float().chunk(2)
        return out_uncond + scale * (out_cond - out_uncond)

    def initial_latents(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`num` starting latents `x_T` for the sampling scheduler, drawn from `generator` (on the CPU)."""
        side = self.resolution // self.pipeline.vae_scale_factor
        channels = self.model_adapter.latent_channels if self.is_flow else self.pipeline.unet.config.in_channels
        latents = torch.randn(num, channels, side, side, generator=generator).to(self.accelerator.device)
        return latents * getattr(self.sample_scheduler, "init_noise_sigma", 1.0)  # flow schedulers: unit noise

    # -- the sampler's step: stochastic DDIM (UNet models) or the flow SDE (SD3, FLUX) ----------------------------

    def _set_sampling_timesteps(self, device) -> None:
        """`set_timesteps` on the sampler; FLUX's dynamic shift gets `mu` from the image's token count."""
        scheduler, steps = self.sample_scheduler, self.args.num_inference_steps
        if self.is_flow and scheduler.config.get("use_dynamic_shifting", False):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            side = self.resolution // self.pipeline.vae_scale_factor
            c = scheduler.config
            mu = calculate_shift(
                (side // 2) ** 2, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift
            )
            scheduler.set_timesteps(steps, device=device, mu=mu)
        else:
            scheduler.set_timesteps(steps, device=device)

    def _flow_sigmas(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma, next sigma) of flow-sampler timesteps, looked up in the sampler's schedule."""
        scheduler = self.sample_scheduler
        table = scheduler.timesteps.to(timesteps.device, torch.float32)
        index = (timesteps.float().reshape(-1, 1) - table.reshape(1, -1)).abs().argmin(dim=1)
        sigmas = scheduler.sigmas.to(timesteps.device, torch.float32)
        return sigmas[index], sigmas[index + 1]

    def flow_sigma_max(self) -> float:
        """Where the flow SDE's noise scale `g = a sqrt(s / (1 - s))` is capped: the schedule's second sigma, so the
        first step (s = 1, infinite g) uses the second's scale, as Flow-GRPO does (0.999 with a one-step schedule)."""
        second = float(self.sample_scheduler.sigmas[1])
        return second if 0.0 < second < 1.0 else 0.999

    def next_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timesteps one sampler step later (DDIM: negative after the last; flow: 0 after the last)."""
        if not self.is_flow:
            return ddim_previous_timestep(self.sample_scheduler, timesteps)
        return self._flow_sigmas(timesteps)[1] * self.sample_scheduler.config.num_train_timesteps

    def _is_final(self, next_timesteps: torch.Tensor) -> bool:
        return bool(next_timesteps[0] <= 0) if self.is_flow else int(next_timesteps[0]) < 0

    def step_with_logprob(self, output, timesteps, sample, prev_sample=None, generator=None):
        """One stochastic sampler step and its per-sample log-probability: `(prev_sample, log_prob)`.

        UNet models: DDIM at `eta` (:func:`~trl_rpo.diffusion.ddim_step_with_logprob`); SD3 / FLUX: the flow SDE at
        `sde_noise_level` (:func:`~trl_rpo.diffusion.flow_sde_step_with_logprob`, Flow-GRPO's step).
        """
        if self.is_flow:
            sigma, next_sigma = self._flow_sigmas(timesteps)
            prev, log_prob, _, _ = flow_sde_step_with_logprob(
                output, sigma, next_sigma, sample, self.args.sde_noise_level, prev_sample, generator,
                sigma_max=self.flow_sigma_max(),
            )  # fmt: skip
            return prev, log_prob
        prev, log_prob, _, _ = ddim_step_with_logprob(
            self.sample_scheduler, output, timesteps, sample, self.args.eta, prev_sample, generator
        )
        return prev, log_prob

    # -- rewards -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode latents to images in [0, 1], `vae_decode_batch_size` at a time (bounds peak memory)."""
        size = self.args.vae_decode_batch_size or latents.shape[0]
        return torch.cat([decode_latents(self.pipeline.vae, chunk) for chunk in latents.split(size)])

    def step_rewards(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and per-function rewards of decoded images (`[N, 3, H, W]` in [0, 1])."""
        return combine_rewards(self.reward_funcs, self.reward_weights, tensor_to_pil(images), prompts)
