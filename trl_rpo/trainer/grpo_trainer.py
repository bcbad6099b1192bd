"""GRPO for diffusion models: online RL with group-normalised rewards and clipped per-step ratios."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import Sampler

from ..data.formats import prepare_prompt_dataset
from ..diffusion import ddim_step_variance
from ..losses import group_advantages, grpo_clipped_loss
from ..pipelines import tensor_to_pil
from .base import BaseDiffusionTrainer
from .grpo_config import DiffusionGRPOConfig
from .online import OnlineDiffusionMixin, RewardFunc, collate_prompts, normalize_reward_funcs

logger = logging.getLogger(__name__)

__all__ = ["DiffusionGRPOTrainer", "GroupRepeatSampler", "Rollout", "select_train_steps"]

GRPO_CITATION = """\
@article{liu2025flowgrpo,
    title   = {{Flow-GRPO: Training Flow Matching Models via Online RL}},
    author  = {Jie Liu and Gongye Liu and Jiajun Liang and Yangguang Li and Jiaheng Liu and Xintao Wang and
               Pengfei Wan and Di Zhang and Wanli Ouyang},
    year    = 2025,
    journal = {arXiv preprint arXiv:2505.05470}
}"""


class GroupRepeatSampler(Sampler[int]):
    """Dataset indices in groups: each prompt `group_size` times in a row, each chunk of prompts `repeat_count` times.

    `chunk_size` distinct prompts (shuffled with `seed`) form one chunk: the prompts of one optimizer step on every
    process (`per_device_prompts * num_processes * gradient_accumulation_steps`). The chunk is emitted
    `repeat_count` (= `num_iterations`) times, so each process meets the same prompts in the same order for that
    many optimizer steps, and reuses its rollouts. Incomplete last chunks are dropped (TRL's `RepeatSampler`).
    """

    def __init__(self, num_rows: int, group_size: int, chunk_size: int, repeat_count: int = 1, shuffle: bool = True,
                 seed: int = 0):  # fmt: skip
        if num_rows < chunk_size:
            raise ValueError(
                f"the dataset has {num_rows} prompts, fewer than one optimizer step needs ({chunk_size} = prompts per "
                "device x processes x gradient_accumulation_steps)"
            )
        self.num_rows, self.group_size, self.chunk_size = num_rows, group_size, chunk_size
        self.repeat_count, self.shuffle = repeat_count, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        order = (
            torch.randperm(self.num_rows, generator=self.generator) if self.shuffle else torch.arange(self.num_rows)
        )
        order = order.tolist()
        for start in range(0, self.num_rows - self.chunk_size + 1, self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.group_size

    def __len__(self) -> int:
        return (self.num_rows // self.chunk_size) * self.chunk_size * self.group_size * self.repeat_count


def select_train_steps(trainable: list[int], fraction: float, generator: torch.Generator | None = None) -> list[int]:
    """`max(1, round(fraction * len(trainable)))` of the trainable step indices, drawn at random, in order.

    DDPO's `timestep_fraction`: train on part of each trajectory; all of it at `fraction = 1`.
    """
    if not trainable:
        raise ValueError("no denoising step has a log-probability (all are deterministic)")
    count = max(1, round(fraction * len(trainable)))
    if count >= len(trainable):
        return list(trainable)
    pick = torch.randperm(len(trainable), generator=generator)[:count].sort().values.tolist()
    return [trainable[i] for i in pick]


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


class DiffusionGRPOTrainer(OnlineDiffusionMixin, BaseDiffusionTrainer):
    r"""GRPO for text-to-image diffusion (DDPO / Flow-GRPO style), with TRL's `GRPOTrainer` surface.

    Each micro-step samples `num_generations` images for each of its prompts with the current policy (stochastic
    DDIM, classifier-free guidance), scores them with the reward functions, normalises the rewards within each
    prompt's group into advantages, and minimises the clipped surrogate over the trajectory's denoising steps
    (a random `timestep_fraction` of them):

    .. math::
        \mathcal L = \frac{1}{N K}\sum_{i,k} -\min\big(\rho_{ik} A_i,\ \operatorname{clip}(\rho_{ik},
        1-\epsilon, 1+\epsilon) A_i\big) + \beta\,\mathrm{KL}_{ik}

    with :math:`\rho_{ik} = \pi_\theta(x^i_{k+1}\mid x^i_k) / \pi_{old}(x^i_{k+1}\mid x^i_k)`. On a rollout's first
    iteration :math:`\pi_{old}` is the policy itself (:math:`\rho = 1` exactly, its log-probability detached);
    with `num_iterations > 1` the rollout is reused for that many optimizer steps against the log-probabilities
    its first iteration computed. The KL term (k3) to the reference (adapters disabled or a frozen copy) is only
    computed when `beta > 0`.

    Args:
        model: a pipeline object, or a Hub id / local folder of one (SD 1.5 or SDXL).
        reward_funcs: one or a list of `f(images, prompts, **kwargs) -> list[float]` callables or scorer objects
            from `trl_rpo.rewards` (e.g. a `RemoteReward`); TRL's convention.
        args: a [`DiffusionGRPOConfig`].
        train_dataset: prompts, in a `prompt` column.
        reward_weights: overrides `args.reward_weights`.
        ref_model / peft_config: as in [`DiffusionDPOTrainer`].

    Override points: `rollout` (sampling and scoring), `compute_advantages` and `step_log_probs`.
    """

    _tag_names = ["trl", "trl-rpo", "grpo", "diffusers", "text-to-image"]
    _name = "DiffusionGRPO"
    _paper = {
        "title": "Flow-GRPO: Training Flow Matching Models via Online RL",
        "id": "2505.05470",
        "citation": GRPO_CITATION,
    }
    _card_method_fields = (
        "num_generations",
        "beta",
        "epsilon",
        "num_iterations",
        "scale_rewards",
        "num_inference_steps",
        "guidance_scale",
        "eta",
        "timestep_fraction",
        "same_latent",
    )
    config_class = DiffusionGRPOConfig

    def __init__(
        self,
        model: Any,
        reward_funcs: RewardFunc | list[RewardFunc],
        args: DiffusionGRPOConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        reward_weights: list[float] | None = None,
        ref_model: torch.nn.Module | None = None,
        peft_config=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is not None and not isinstance(args, DiffusionGRPOConfig):
            raise TypeError(f"args must be a DiffusionGRPOConfig, got {type(args).__name__}")
        funcs = normalize_reward_funcs(reward_funcs)
        self.reward_funcs = funcs
        self._beta = args.beta if args is not None else DiffusionGRPOConfig.beta
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
        if eval_dataset is not None and self.args.per_device_eval_batch_size % self.args.num_generations:
            raise ValueError(
                f"per_device_eval_batch_size ({self.args.per_device_eval_batch_size}) counts images and must be a "
                f"multiple of num_generations ({self.args.num_generations})"
            )
        self._timing: dict[str, float] = {}
        self._micro_step = 0
        self._buffer: dict[int, Rollout] = {}
        self._last_sample_step = -1

    @property
    def needs_reference(self) -> bool:
        """A reference is only used for the KL term: `beta = 0` skips it (and full fine-tuning keeps no copy)."""
        return self._beta > 0

    def _papers(self) -> list[dict[str, str]]:
        return [self._paper]

    # -- data --------------------------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset, name: str):
        return prepare_prompt_dataset(dataset, name=f"{name}_dataset")

    def _default_data_collator(self):
        return collate_prompts

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
                f"a GRPO batch must hold each prompt num_generations ({g}) times in a row (the trainer's sampler does "
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
            eps = self.guided_prediction(unet, latents, timesteps, cond_all, uncond_all)
            latents, log_prob = self.step_with_logprob(eps, timesteps, latents, generator=generator)
            trajectory.append(latents)
            log_probs.append(log_prob)
        images = self.decode(latents)
        flat_prompts = [prompts[i] for i in prompt_index.tolist()]
        total, per_func = self.step_rewards(images, flat_prompts)
        total = total.to(device)
        advantages, group_std = self.compute_advantages(total)
        train_steps = select_train_steps(self.trainable_steps(), args.timestep_fraction, generator)
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

    def compute_advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group-normalised advantages (see [`group_advantages`]) and each group's reward standard deviation."""
        g = self.args.num_generations
        grouped = rewards.float().reshape(-1, g)
        return group_advantages(rewards, g, self.args.scale_rewards), grouped.std(dim=1)

    # -- the loss ------------------------------------------------------------------------------------------------

    def step_log_probs(self, unet, rollout: Rollout, cond, uncond) -> torch.Tensor:
        """Log-probabilities `[K, N]` of the rollout's trained steps under `unet`, in one batched call."""
        steps = rollout.train_steps
        n = len(rollout)
        parents = rollout.latents[:, steps].transpose(0, 1).flatten(0, 1)  # [K * N, ...], step-major
        children = rollout.latents[:, [s + 1 for s in steps]].transpose(0, 1).flatten(0, 1)
        timesteps = rollout.timesteps[steps].to(parents.device).repeat_interleave(n)
        index = rollout.prompt_index.repeat(len(steps))
        c = {k: v[index] for k, v in cond.items()}
        u = {k: v[index] for k, v in uncond.items()}
        eps = self.guided_prediction(unet, parents, timesteps, c, u)
        _, log_prob = self.step_with_logprob(eps, timesteps, parents, prev_sample=children)
        return log_prob.reshape(len(steps), n)

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
        if rollout.prompts != prompts:
            raise RuntimeError(
                f"num_iterations reuses rollouts, but this micro-step's prompts {prompts[:2]} differ from the "
                f"buffered rollout's {rollout.prompts[:2]}: the sampler's order was changed"
            )
        return rollout, False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        prompts = self._group_prompts(list(inputs["prompt"]))
        start = time.perf_counter()
        cond, uncond = self.encode_conditioning(prompts)
        rollout, fresh = self._get_rollout(prompts, cond, uncond, mode)
        self._timing["sampling"] = time.perf_counter() - start if fresh else 0.0
        if fresh:
            self._record_rollout_metrics(mode, rollout)
            if mode == "train":
                self._maybe_log_samples(rollout)

        log_prob = self.step_log_probs(model, rollout, cond, uncond)
        if fresh:
            old_log_prob = log_prob.detach()  # on-policy: the ratio is exactly 1
            if mode == "train" and self.args.num_iterations > 1:
                rollout.old_log_probs = old_log_prob
            sampled = rollout.log_probs[:, rollout.train_steps].transpose(0, 1)
            # How far the training pass's log-probabilities are from the sampler's (should be ~0: same policy).
            self._record_pooled(mode, "logps/sampling_gap", (log_prob.detach() - sampled).abs().mean())
        else:
            old_log_prob = rollout.old_log_probs
        ref_log_prob = None
        if self.args.beta > 0:
            with torch.no_grad(), self.reference_model() as reference:
                ref_log_prob = self.step_log_probs(reference, rollout, cond, uncond)
        advantages = rollout.advantages.to(log_prob.device).unsqueeze(0).expand_as(log_prob)
        losses, kl, clipped = grpo_clipped_loss(
            log_prob, old_log_prob, advantages, self.args.epsilon, ref_log_prob, self.args.beta
        )
        loss = losses.mean()

        if self.args.beta > 0:
            self._record_pooled(mode, "kl", kl)
        self._record_pooled(mode, "clip_ratio", clipped)
        self._record_pooled(mode, "logps/policy", log_prob.detach())
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    # -- metrics and samples -------------------------------------------------------------------------------------

    def _record_rollout_metrics(self, mode: str, rollout: Rollout) -> None:
        device = self.accelerator.device
        self._record_pooled(mode, "reward", rollout.rewards)
        self._record_pooled(mode, "reward_std", rollout.group_std)  # TRL: the mean of the groups' std
        for name, values in rollout.rewards_per_func.items():  # mean and std over every process's images
            self._record_pooled(mode, f"rewards/{name}", values, std=True)
        self._record_pooled(mode, "frac_reward_zero_std", (rollout.group_std == 0).float())
        self._record_metric(mode, "time/sampling_s", torch.tensor(self._timing.get("sampling", 0.0), device=device))

    def _maybe_log_samples(self, rollout: Rollout) -> None:
        """Save the rollout's images every `log_samples_steps` optimizer steps (first micro-step only)."""
        every, step = self.args.log_samples_steps, self.state.global_step + 1
        if not every or step % every or step == self._last_sample_step or not self.is_world_process_zero():
            return
        self._last_sample_step = step
        captions = []
        for i, prompt_i in enumerate(rollout.prompt_index.tolist()):
            scores = ", ".join(f"{n}={v[i].item():.4g}" for n, v in rollout.rewards_per_func.items())
            captions.append(f"{rollout.prompts[prompt_i]} | {scores}")
        self.save_and_track_images(rollout.images, captions, "samples", step=step)

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        elapsed = time.perf_counter() - start - self._timing.get("sampling", 0.0)
        self._record_metric(
            "train", "time/training_s", torch.tensor(max(elapsed, 0.0), device=self.accelerator.device)
        )
        return loss
