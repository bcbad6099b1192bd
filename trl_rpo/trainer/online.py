"""The online base: what TailorPO, GRPO and DiffusionNFT share.

* :class:`OnlineDiffusionMixin`: CFG conditioning, the guided denoiser, the sampler's stochastic step with its
  log-probability, decoding and reward scoring.
* :class:`OnlineDiffusionTrainer`: the trainers' common set-up (reward functions and weights, prompt datasets, timing,
  rollout images), TRL's reward metrics pooled over processes, and the per-rank random stream of the base class.

Groups of images per prompt (GRPO, NFT: the repeat sampler, the rollout, group-normalised advantages and the rollout
buffer) are in `trl_rpo.trainer.rollouts`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data.formats import prepare_prompt_dataset
from ..diffusion import (
    ddim_previous_timestep,
    ddim_step_with_logprob,
    flow_predicted_original_sample,
    flow_sde_step_with_logprob,
    predicted_original_sample,
)
from ..pipelines import tensor_to_pil
from ..rewards import combine_rewards
from .base import BaseDiffusionTrainer

logger = logging.getLogger(__name__)

__all__ = ["OnlineDiffusionMixin", "OnlineDiffusionTrainer", "RewardFunc", "collate_prompts", "normalize_reward_funcs"]

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
        return self.model_adapter.encode_prompts_with_negative(
            list(prompts), self.accelerator.device, resolution=self.resolution
        )

    def cfg_scale(self) -> float:
        """The classifier-free guidance scale the pipeline itself would apply.

        `guidance_scale` for SD 1.5 / SDXL / SD3. Guidance-distilled families (FLUX.1) guide through an embedding
        (`embedded_guidance_scale`), and their pipeline runs the unconditional branch only when asked for true CFG
        (`FluxPipeline(true_cfg_scale > 1)`): `true_cfg_scale` here, 1 (none) by default, as the pipeline.
        """
        if self.family.guidance_distilled:
            return float(getattr(self.args, "true_cfg_scale", 1.0))
        return float(self.args.guidance_scale)

    def guided_prediction(self, unet, latents, timesteps, cond, uncond) -> torch.Tensor:
        """Classifier-free guided denoiser output as the family's pipeline combines it (`uncond + s (cond - uncond)`
        by default); one denoiser call on a 2x batch when both conditionings have the same shapes, else two.

        At a scale where the pipeline runs no CFG (1 or less, in most families' convention; `cfg_scale`) only the
        conditional branch runs: half the compute (CFG-free rollouts).
        """
        scale = self.cfg_scale()
        if not self.model_adapter.guidance_active(scale):
            return self.unet_forward(unet, latents, timesteps, cond).float()
        if all(uncond[k].shape == cond[k].shape for k in cond):
            both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
            out = self.unet_forward(unet, torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), both)
            out_uncond, out_cond = out.float().chunk(2)
        else:
            out_cond = self.unet_forward(unet, latents, timesteps, cond).float()
            out_uncond = self.unet_forward(unet, latents, timesteps, uncond).float()
        return self.model_adapter.combine_guidance(out_uncond, out_cond, scale)

    def initial_latents(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`num` starting latents `x_T` for the sampling scheduler, drawn from `generator` (on the CPU)."""
        side = self.model_adapter.latent_side(self.resolution)
        channels = self.model_adapter.latent_channels
        latents = torch.randn(num, channels, side, side, generator=generator).to(self.accelerator.device)
        return latents * getattr(self.sample_scheduler, "init_noise_sigma", 1.0)  # flow schedulers: unit noise

    # -- the sampler's step: stochastic DDIM (UNet models) or the flow SDE (SD3, FLUX) ----------------------------

    def _set_sampling_timesteps(self, device) -> None:
        """`set_timesteps` on the sampler as the family's pipeline calls it (its sigmas, its dynamic shift `mu` from
        the image's token count): `DenoiserFamily.set_sampling_timesteps`."""
        self.model_adapter.set_sampling_timesteps(
            self.sample_scheduler, self.args.num_inference_steps, self.resolution, device
        )

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
        return self.step_distribution(output, timesteps, sample, prev_sample, generator)[:2]

    def step_distribution(self, output, timesteps, sample, prev_sample=None, generator=None):
        """`step_with_logprob` plus the step's Gaussian: `(prev_sample, log_prob, mean, std)` (for the KL)."""
        if self.is_flow:
            sigma, next_sigma = self._flow_sigmas(timesteps)
            return flow_sde_step_with_logprob(
                output, sigma, next_sigma, sample, self.args.sde_noise_level, prev_sample, generator,
                sigma_max=self.flow_sigma_max(),
            )  # fmt: skip
        return ddim_step_with_logprob(
            self.sample_scheduler, output, timesteps, sample, self.args.eta, prev_sample, generator
        )

    def ode_step(self, output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """One deterministic sampler step: DDIM at eta 0 (UNet models) or the flow ODE's Euler step."""
        if self.is_flow:
            sigma, next_sigma = self._flow_sigmas(timesteps)
            shape = (-1, *([1] * (sample.ndim - 1)))
            return (sample.float() + (next_sigma - sigma).reshape(shape) * output.float()).to(sample.dtype)
        # The step's mean at (almost) zero noise is DDIM's deterministic update (prev_sample given: nothing drawn).
        mean = ddim_step_with_logprob(self.sample_scheduler, output, timesteps, sample, eta=1e-12, prev_sample=sample)[
            2
        ]
        return mean.to(sample.dtype)

    def predict_x0(self, output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The clean sample a denoiser output implies (float32): DDIM's `x0_hat`, or `x - sigma v` for flow."""
        if self.is_flow:
            sigma = timesteps.float() / self.sample_scheduler.config.num_train_timesteps
            return flow_predicted_original_sample(output, sample, sigma)
        alphas = self.sample_scheduler.alphas_cumprod.to(sample.device)
        timesteps = timesteps.long()
        alpha = torch.where(timesteps >= 0, alphas[timesteps.clamp(min=0)], torch.ones_like(alphas[:1]))
        return predicted_original_sample(output, sample, alpha, self.prediction_type)[0]

    # -- rewards -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode latents to images in [0, 1], `vae_decode_batch_size` at a time (bounds peak memory)."""
        size = self.args.vae_decode_batch_size or latents.shape[0]
        return torch.cat([self.model_adapter.decode_latents(chunk) for chunk in latents.split(size)])

    def step_rewards(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and per-function rewards of decoded images (`[N, 3, H, W]` in [0, 1]).

        While a trainer only ranks images (TailorPO's step-wise rewards: `_ranking_only` is set around the call), the
        functions weighted 0 are skipped: logged on final images, they cannot change a ranking, and the total is the
        same. An override keeps this signature and may call `super().step_rewards(images, prompts)`.
        """
        pairs = list(zip(self.reward_funcs, self.reward_weights))
        if getattr(self, "_ranking_only", False):
            pairs = [(func, weight) for func, weight in pairs if weight != 0] or pairs[:1]
        return combine_rewards([f for f, _ in pairs], [w for _, w in pairs], tensor_to_pil(images), prompts)


# ---------------------------------------------------------------------------------------------------------------
# The trainers' shared base
# ---------------------------------------------------------------------------------------------------------------


class OnlineDiffusionTrainer(OnlineDiffusionMixin, BaseDiffusionTrainer):
    """The set-up, data, metrics and timing every online trainer shares (TailorPO, GRPO, DiffusionNFT).

    Subclasses set `config_class` (an [`OnlineDiffusionConfig`]) and implement `compute_loss`. Rollout images are
    saved with `_maybe_log_samples`; TRL's reward metrics are recorded with `_record_reward_metrics`.
    """

    def __init__(
        self,
        model: Any,
        reward_funcs: RewardFunc | list[RewardFunc],
        args=None,
        train_dataset=None,
        eval_dataset=None,
        reward_weights: list[float] | None = None,
        ref_model: torch.nn.Module | None = None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is not None and not isinstance(args, self.config_class):
            raise TypeError(f"args must be a {self.config_class.__name__}, got {type(args).__name__}")
        funcs = normalize_reward_funcs(reward_funcs)
        self.reward_funcs = funcs
        self._config_for_reference = args if args is not None else self.config_class
        super().__init__(
            model=model,
            args=args,
            ref_model=ref_model,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            peft_config=peft_config,
            data_collator=collate_prompts,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self._setup_online(funcs, reward_weights)
        self._timing: dict[str, float] = {}
        self._last_sample_step = -1

    def _papers(self) -> list[dict[str, str]]:
        return [self._paper]

    def _prepare_dataset(self, dataset, name: str):
        return prepare_prompt_dataset(dataset, name=f"{name}_dataset")

    def _default_data_collator(self):
        return collate_prompts

    # -- what is logged ------------------------------------------------------------------------------------------

    def _is_logging_step(self) -> bool:
        """Whether the optimizer step being computed will be logged (`logging_steps`, TRL's `logging_strategy`)."""
        steps = self.args.logging_steps
        if self.args.logging_strategy != "steps" or not steps:
            return False
        every = steps if steps >= 1 else max(1, int(steps * max(self.state.max_steps, 1)))
        return (self.state.global_step + 1) % int(every) == 0

    def _measure_kl(self, mode: str, loss_uses_reference: bool) -> bool:
        """Whether this micro-step computes the KL to the reference: always when the loss needs it; otherwise on
        logged training steps with `log_kl` (a no-grad reference pass), and never without a reference."""
        if loss_uses_reference:
            return True
        if not self.args.log_kl or (self.ref_model is None and self.peft_config is None):
            return False
        return mode == "eval" or self._is_logging_step()

    def _record_reward_metrics(
        self, mode: str, rewards: torch.Tensor, per_func: dict[str, torch.Tensor], group_std: torch.Tensor | None
    ) -> None:
        """TRL `GRPOTrainer`'s reward metrics over the images of every process.

        `reward` and `reward_std`: mean and standard deviation of the weighted rewards of the whole batch (TRL:
        `nanstd` of the gathered rewards); `rewards/NAME/mean|std` per function; `frac_reward_zero_std`: the fraction
        of groups whose rewards are all equal (`isclose` to a zero std, as TRL), when there are groups.
        """
        mean, std, count = self._pooled_moments(rewards)  # one all-reduce for both
        if count:
            self._metrics[mode]["reward"].append(mean)
            self._metrics[mode]["reward_std"].append(std)
        for name, values in per_func.items():  # mean and std over every process's images
            self._record_pooled(mode, f"rewards/{name}", values, std=True)
        if group_std is not None:
            zero = torch.isclose(group_std.float(), torch.zeros_like(group_std.float()))
            self._record_pooled(mode, "frac_reward_zero_std", zero.float())

    def _maybe_log_samples(self, images: list, captions: list[str]) -> None:
        """Save a rollout's images every `log_samples_steps` optimizer steps (first micro-step only, main process)."""
        every, step = self.args.log_samples_steps, self.state.global_step + 1  # the step being computed
        if not every or step % every or step == self._last_sample_step or not self.is_world_process_zero():
            return
        self._last_sample_step = step
        self.save_and_track_images(images, captions, "samples", step=step)

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        elapsed = time.perf_counter() - start - self._timing.get("sampling", 0.0)
        self._record_metric(
            "train", "time/training_s", torch.tensor(max(elapsed, 0.0), device=self.accelerator.device)
        )
        return loss
