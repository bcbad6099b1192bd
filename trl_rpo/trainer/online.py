"""The online base: what TailorPO, GRPO and DiffusionNFT share.

* :class:`OnlineDiffusionMixin`: CFG conditioning, the guided denoiser, the sampler's stochastic step with its
  log-probability, decoding and reward scoring.
* :class:`OnlineDiffusionTrainer`: the trainers' common set-up (reward functions and weights, prompt datasets, timing,
  rollout images), TRL's reward metrics pooled over processes, and the per-rank random stream of the base class.
* :class:`GroupRolloutTrainer`: groups of `num_generations` images per prompt (GRPO, NFT): the repeat sampler, the
  rollout, group-normalised advantages, and the rollout buffer of `num_iterations`, saved in checkpoints.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ..data.formats import prepare_prompt_dataset
from ..diffusion import (
    ddim_previous_timestep,
    ddim_step_variance,
    ddim_step_with_logprob,
    flow_predicted_original_sample,
    flow_sde_step_with_logprob,
    predicted_original_sample,
)
from ..losses import group_advantages
from ..pipelines import decode_latents, tensor_to_pil
from ..rewards import combine_rewards
from .base import BaseDiffusionTrainer, pooled_mean_and_std

logger = logging.getLogger(__name__)

__all__ = [
    "GroupRepeatSampler",
    "GroupRolloutTrainer",
    "OnlineDiffusionMixin",
    "OnlineDiffusionTrainer",
    "RewardFunc",
    "Rollout",
    "collate_prompts",
    "normalize_reward_funcs",
    "select_train_steps",
]

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
        """Classifier-free guided denoiser output, `uncond + s (cond - uncond)`; one UNet call on a 2x batch.

        At a scale of 1 or less (`cfg_scale`) only the conditional branch runs: half the compute (CFG-free rollouts).
        """
        scale = self.cfg_scale()
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
            # FluxPipeline passes sigmas = linspace(1, 1/N, N) (the families that do: `uniform_sampling_sigmas`).
            sigmas = None
            if self.family.uniform_sampling_sigmas and not scheduler.config.get("use_flow_sigmas", False):
                sigmas = np.linspace(1.0, 1.0 / steps, steps)
            scheduler.set_timesteps(steps, device=device, mu=mu, sigmas=sigmas)
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
        return torch.cat([decode_latents(self.pipeline.vae, chunk) for chunk in latents.split(size)])

    def step_rewards(self, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and per-function rewards of decoded images (`[N, 3, H, W]` in [0, 1])."""
        return combine_rewards(self.reward_funcs, self.reward_weights, tensor_to_pil(images), prompts)


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

    def _pooled_moments(self, values: torch.Tensor) -> tuple[float, float, float]:
        """(mean, sample std, count) of `values` over every process (one all-reduce of sum, sum of squares, count)."""
        values = values.detach().float().reshape(-1).to(self.accelerator.device)
        moments = torch.stack(
            [values.sum(), (values**2).sum(), torch.tensor(float(values.numel()), device=values.device)]
        )
        total, total_sq, count = self.accelerator.reduce(moments, reduction="sum").tolist()
        if count == 0:
            return float("nan"), 0.0, 0.0
        mean, std = pooled_mean_and_std(total, total_sq, count)
        return mean, std, count

    def _record_reward_metrics(
        self, mode: str, rewards: torch.Tensor, per_func: dict[str, torch.Tensor], group_std: torch.Tensor | None
    ) -> None:
        """TRL `GRPOTrainer`'s reward metrics over the images of every process.

        `reward` and `reward_std`: mean and standard deviation of the weighted rewards of the whole batch (TRL:
        `nanstd` of the gathered rewards); `rewards/NAME/mean|std` per function; `frac_reward_zero_std`: the fraction
        of groups whose rewards are all equal (`isclose` to a zero std, as TRL), when there are groups.
        """
        self._record_pooled(mode, "reward", rewards)
        _, std, count = self._pooled_moments(rewards)
        if count:
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


# ---------------------------------------------------------------------------------------------------------------
# Groups of rollouts per prompt (GRPO, DiffusionNFT)
# ---------------------------------------------------------------------------------------------------------------


class GroupRepeatSampler(Sampler[int]):
    """Dataset indices in groups: each prompt `group_size` times in a row, each chunk of prompts `repeat_count` times.

    `chunk_size` distinct prompts (shuffled with `seed` + the epoch) form one chunk: the prompts of one optimizer step
    on every process (`per_device_prompts * num_processes * gradient_accumulation_steps`). The chunk is emitted
    `repeat_count` (= `num_iterations`) times, so each process meets the same prompts in the same order for that
    many optimizer steps, and reuses its rollouts. Incomplete last chunks are dropped (TRL's `RepeatSampler`).
    The order depends on the epoch only (`set_epoch`, which `Trainer` calls, as for a `DistributedSampler`), so a run
    resumed in a later epoch sees that epoch's order, not epoch 0's again.
    """

    def __init__(self, num_rows: int, group_size: int, chunk_size: int, repeat_count: int = 1, shuffle: bool = True,
                 seed: int = 0):  # fmt: skip
        if num_rows < chunk_size:
            raise ValueError(
                f"the dataset has {num_rows} prompts, fewer than one optimizer step needs ({chunk_size} = prompts per "
                "device x processes x gradient_accumulation_steps)"
            )
        self.num_rows, self.group_size, self.chunk_size = num_rows, group_size, chunk_size
        self.repeat_count, self.shuffle, self.seed = repeat_count, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_rows)
        order = order.tolist()
        for start in range(0, self.num_rows - self.chunk_size + 1, self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.group_size
        self.epoch += 1  # a sampler iterated again without set_epoch still moves on

    def __len__(self) -> int:
        return (self.num_rows // self.chunk_size) * self.chunk_size * self.group_size * self.repeat_count


def select_train_steps(
    trainable: list[int], fraction: float, generator: torch.Generator | None = None, sampling: str = "random"
) -> list[int]:
    """`max(1, round(fraction * len(trainable)))` of the trainable step indices, in order.

    DDPO's `timestep_fraction`: train on part of each trajectory, drawn at random (`sampling="random"`), or its
    first, noisiest steps (`"first"`, Flow-GRPO's); all of it at `fraction = 1`.
    """
    if not trainable:
        raise ValueError("no denoising step has a log-probability (all are deterministic)")
    count = max(1, round(fraction * len(trainable)))
    if count >= len(trainable):
        return list(trainable)
    if sampling == "first":
        return list(trainable[:count])
    pick = torch.randperm(len(trainable), generator=generator)[:count].sort().values.tolist()
    return [trainable[i] for i in pick]


# The tensors of a Rollout that a checkpoint keeps (the images are for logging only).
_ROLLOUT_TENSORS = ("prompt_index", "latents", "log_probs", "timesteps", "rewards", "advantages", "group_std",
                    "old_log_probs")  # fmt: skip


@dataclass
class Rollout:
    """Trajectories of one micro-batch sampled with the policy, scored and turned into advantages.

    Image `i` is the `i % G`-th sample of prompt `prompt_index[i]` (groups are consecutive). `latents[:, s]` is
    the sample before step `s` (`latents[:, 0]` the initial noise, `latents[:, -1]` the final latents).
    """

    prompts: list[str]
    prompt_index: torch.Tensor  # [N]
    latents: torch.Tensor  # [N, S + 1, C, h, w]
    log_probs: torch.Tensor  # [N, S], under the sampling policy (NaN at deterministic steps)
    timesteps: torch.Tensor  # [S]
    train_steps: list[int]
    rewards: torch.Tensor  # [N], weighted total
    rewards_per_func: dict[str, torch.Tensor]
    advantages: torch.Tensor  # [N]
    group_std: torch.Tensor  # [N / G]
    images: list = field(default_factory=list)
    old_log_probs: torch.Tensor | None = None  # [K, N], filled on the rollout's first iteration

    def __len__(self) -> int:
        return int(self.prompt_index.numel())

    def captions(self) -> list[str]:
        """One caption per image: its prompt and its rewards (for the saved rollout images)."""
        captions = []
        for i, prompt_i in enumerate(self.prompt_index.tolist()):
            scores = ", ".join(f"{n}={v[i].item():.4g}" for n, v in self.rewards_per_func.items())
            captions.append(f"{self.prompts[prompt_i]} | {scores}")
        return captions

    def state_dict(self) -> dict[str, Any]:
        """Tensors, prompts and step indices (no images): what `torch.load(..., weights_only=True)` reads back."""
        state = {k: getattr(self, k).cpu() for k in _ROLLOUT_TENSORS if getattr(self, k) is not None}
        state.update(prompts=list(self.prompts), train_steps=list(self.train_steps),
                     rewards_per_func={k: v.cpu() for k, v in self.rewards_per_func.items()})  # fmt: skip
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device=None) -> Rollout:
        tensors = {k: (state[k].to(device) if k in state else None) for k in _ROLLOUT_TENSORS}
        return cls(prompts=list(state["prompts"]), train_steps=list(state["train_steps"]),
                   rewards_per_func={k: v.to(device) for k, v in state["rewards_per_func"].items()},
                   **tensors)  # fmt: skip


class GroupRolloutTrainer(OnlineDiffusionTrainer):
    """Online trainers that sample `num_generations` images per prompt and normalise rewards per group (GRPO, NFT).

    Each micro-step's batch holds each prompt `num_generations` times in a row ([`GroupRepeatSampler`]). A training
    rollout is reused for `num_iterations` optimizer steps; the buffer of rollouts and the micro-step counter are
    saved with each checkpoint, so a resume between two iterations of one rollout continues it exactly.
    """

    # Sample rollouts with the stochastic sampler and its log-probabilities (GRPO); False: any deterministic solver.
    stochastic_rollouts = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.eval_dataset is not None and self.args.per_device_eval_batch_size % self.args.num_generations:
            raise ValueError(
                f"per_device_eval_batch_size ({self.args.per_device_eval_batch_size}) counts images and must be a "
                f"multiple of num_generations ({self.args.num_generations})"
            )
        self._micro_step = 0
        self._buffer: dict[int, Rollout] = {}

    # -- data --------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        prompts_per_step = (args.per_device_train_batch_size // args.num_generations) * args.world_size
        return GroupRepeatSampler(
            len(dataset),
            args.num_generations,
            chunk_size=prompts_per_step * args.gradient_accumulation_steps,
            repeat_count=args.num_iterations,
            shuffle=True,
            seed=args.seed,
        )

    def _get_eval_sampler(self, eval_dataset) -> Sampler:
        args = self.args
        prompts = (args.per_device_eval_batch_size // args.num_generations) * args.world_size
        return GroupRepeatSampler(len(eval_dataset), args.num_generations, chunk_size=min(prompts, len(eval_dataset)),
                                  shuffle=False)  # fmt: skip

    def _group_prompts(self, prompts: list[str]) -> list[str]:
        """The distinct prompts of a batch made of consecutive groups of `num_generations` copies."""
        g = self.args.num_generations
        if len(prompts) % g or any(len(set(prompts[i : i + g])) != 1 for i in range(0, len(prompts), g)):
            raise ValueError(
                f"a batch must hold each prompt num_generations ({g}) times in a row (the trainer's sampler does "
                f"this); got {len(prompts)} prompts: {prompts[: 2 * g]}"
            )
        return prompts[::g]

    # -- sampling ------------------------------------------------------------------------------------------------

    def trainable_steps(self) -> list[int]:
        """Indices of the sampling steps with a log-probability (positive DDIM variance; every flow SDE step).

        With `set_alpha_to_one=True` the last DDIM step is deterministic: it is sampled but never trained on. The
        flow SDE's last step (to sigma 0) keeps a positive variance, so all of its steps are trained.
        """
        scheduler = self.sample_scheduler
        if self.is_flow:
            return list(range(len(scheduler.timesteps)))
        variance = ddim_step_variance(scheduler, scheduler.timesteps.cpu())
        return [i for i, v in enumerate(variance.tolist()) if v > 0]

    @torch.no_grad()
    def rollout(
        self,
        prompts: list[str],
        conditioning: tuple[dict, dict] | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Sample `num_generations` trajectories for each of `prompts` with the current policy and score them.

        Starting noise, step noise and the trained steps come from `generator` (this process's `rank_generator`
        by default); with `same_latent` a group shares its starting noise.
        """
        args, device = self.args, self.accelerator.device
        generator = generator if generator is not None else self.rank_generator
        scheduler = self.sample_scheduler
        self._set_sampling_timesteps(device)
        unet = self._unwrapped_unet()
        g = args.num_generations
        cond, uncond = conditioning if conditioning is not None else self.encode_conditioning(prompts)
        prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(g)
        cond_all = {k: v[prompt_index] for k, v in cond.items()}
        uncond_all = {k: v[prompt_index] for k, v in uncond.items()}
        if args.same_latent:
            latents = self.initial_latents(len(prompts), generator).repeat_interleave(g, dim=0)
        else:
            latents = self.initial_latents(len(prompt_index), generator)
        trajectory, log_probs = [latents], []
        for t in scheduler.timesteps:
            timesteps = t.expand(len(latents)).to(device)
            output = self.guided_prediction(unet, latents, timesteps, cond_all, uncond_all)
            if self.stochastic_rollouts:
                latents, log_prob = self.step_with_logprob(output, timesteps, latents, generator=generator)
            else:
                latents = self.ode_step(output, timesteps, latents)
                log_prob = torch.full((len(latents),), float("nan"), device=device)
            trajectory.append(latents)
            log_probs.append(log_prob)
        images = self.decode(latents)
        flat_prompts = [prompts[i] for i in prompt_index.tolist()]
        total, per_func = self.step_rewards(images, flat_prompts)
        total = total.to(device)
        advantages, group_std = self.compute_advantages(total)
        train_steps = select_train_steps(
            self.trainable_steps(), args.timestep_fraction, generator, args.timestep_sampling
        )
        return Rollout(
            prompts=list(prompts),
            prompt_index=prompt_index,
            latents=torch.stack(trajectory, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            timesteps=scheduler.timesteps.clone(),
            train_steps=train_steps,
            rewards=total,
            rewards_per_func=per_func,
            advantages=advantages,
            group_std=group_std,
            images=tensor_to_pil(images),
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

    def compute_advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group-normalised advantages (see [`group_advantages`]) and each group's reward standard deviation.

        `scale_rewards="batch"` divides by the standard deviation of the rewards of every process (TRL computes it
        after gathering the whole batch), not of this process's share.
        """
        g = self.args.num_generations
        grouped = rewards.float().reshape(-1, g)
        batch_std = None
        if self.args.scale_rewards == "batch":
            batch_std = self._pooled_moments(rewards)[1]
        return group_advantages(rewards, g, self.args.scale_rewards, batch_std=batch_std), grouped.std(dim=1)

    def _get_rollout(self, prompts: list[str], cond, uncond, mode: str) -> tuple[Rollout, bool]:
        """A new rollout, or (iterations after the first of a training rollout) the buffered one for this slot."""
        if mode != "train":
            return self.rollout(prompts, (cond, uncond)), True
        args = self.args
        slot = self._micro_step % args.gradient_accumulation_steps
        first = (self._micro_step // args.gradient_accumulation_steps) % args.num_iterations == 0
        self._micro_step += 1
        if first or slot not in self._buffer:
            rollout = self.rollout(prompts, (cond, uncond))
            if args.num_iterations > 1:
                self._buffer[slot] = rollout
            return rollout, True
        rollout = self._buffer[slot]
        if self.sample_scheduler.num_inference_steps is None:  # resumed from a checkpoint: no rollout sampled yet
            self._set_sampling_timesteps(self.accelerator.device)
        if rollout.prompts != prompts:
            raise RuntimeError(
                f"num_iterations reuses rollouts, but this micro-step's prompts {prompts[:2]} differ from the "
                f"buffered rollout's {rollout.prompts[:2]}: the sampler's order was changed"
            )
        return rollout, False

    # -- checkpoints: the rollout buffer travels with the random streams -----------------------------------------

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        state = {"micro_step": self._micro_step, "buffer": {s: r.state_dict() for s, r in self._buffer.items()}}
        torch.save(state, os.path.join(output_dir, f"rollout_buffer_{self.accelerator.process_index}.pt"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, f"rollout_buffer_{self.accelerator.process_index}.pt")
        if not os.path.isfile(path):
            if self.args.num_iterations > 1:
                logger.warning(f"{path} is missing: rollouts restart at the resumed step instead of being reused")
            self._micro_step = self.state.global_step * self.args.gradient_accumulation_steps
            return
        state = torch.load(path, weights_only=True)
        self._micro_step = int(state["micro_step"])
        device = self.accelerator.device
        self._buffer = {int(s): Rollout.from_state_dict(r, device) for s, r in state["buffer"].items()}
