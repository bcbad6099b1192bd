"""GRPO for diffusion models: online RL with group-normalised rewards and clipped per-step ratios."""

from __future__ import annotations

import logging

import torch

from ..diffusion import gaussian_kl
from ..losses import grpo_clipped_loss
from .grpo_config import DiffusionGRPOConfig
from .rollouts import GroupRepeatSampler, GroupRolloutTrainer, Rollout, select_train_steps

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


class DiffusionGRPOTrainer(GroupRolloutTrainer):
    r"""GRPO for text-to-image diffusion (DDPO / Flow-GRPO style), with TRL's `GRPOTrainer` surface.

    Each micro-step samples `num_generations` images for each of its prompts with the current policy (stochastic
    DDIM, or the flow SDE for SD3 / FLUX; classifier-free guidance), scores them with the reward functions,
    normalises the rewards within each prompt's group into advantages, and minimises the clipped surrogate over the
    trajectory's denoising steps (a random `timestep_fraction` of them):

    .. math::
        \mathcal L = \frac{1}{N K}\sum_{i,k} -\min\big(\rho_{ik} A_i,\ \operatorname{clip}(\rho_{ik},
        1-\epsilon, 1+\epsilon_{high}) A_i\big) + \beta\,\mathrm{KL}_{ik}

    with :math:`\rho_{ik} = \pi_\theta(x^i_{k+1}\mid x^i_k) / \pi_{old}(x^i_{k+1}\mid x^i_k)` and
    :math:`\mathrm{KL}_{ik}` the exact KL of the step's Gaussian to the reference's, per latent dimension
    ([`~trl_rpo.diffusion.gaussian_kl`], Flow-GRPO's). On a rollout's first iteration :math:`\pi_{old}` is the
    policy itself (:math:`\rho = 1` exactly, its log-probability detached); with `num_iterations > 1` the rollout is
    reused for that many optimizer steps against the log-probabilities its first iteration computed.

    Args:
        model: a pipeline object, or a Hub id / local folder of one, of a registered family (SD 1.5, SDXL,
            SD3 / SD3.5, FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]).
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
        "epsilon_high",
        "num_iterations",
        "scale_rewards",
        "num_inference_steps",
        "guidance_scale",
        "eta",
        "timestep_fraction",
        "same_latent",
        "sde_window_size",
    )
    config_class = DiffusionGRPOConfig

    # -- the loss ------------------------------------------------------------------------------------------------

    def step_distributions(
        self, unet, rollout: Rollout, cond, uncond
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-probabilities `[K, N]` of the rollout's trained steps under `unet` (one batched call), with the
        steps' Gaussian means `[K * N, ...]` and standard deviations (step-major)."""
        steps = rollout.train_steps
        n = len(rollout)
        parents = rollout.latents[:, steps].transpose(0, 1).flatten(0, 1)  # [K * N, ...], step-major
        children = rollout.latents[:, [s + 1 for s in steps]].transpose(0, 1).flatten(0, 1)
        timesteps = rollout.timesteps[steps].to(parents.device).repeat_interleave(n)
        index = rollout.prompt_index.repeat(len(steps))
        c = {k: v[index] for k, v in cond.items()}
        u = {k: v[index] for k, v in uncond.items()}
        output = self.guided_prediction(unet, parents, timesteps, c, u)
        _, log_prob, mean, std = self.step_distribution(output, timesteps, parents, prev_sample=children)
        return log_prob.reshape(len(steps), n), mean, std

    def step_log_probs(self, unet, rollout: Rollout, cond, uncond) -> torch.Tensor:
        """Log-probabilities `[K, N]` of the rollout's trained steps under `unet`, in one batched call."""
        return self.step_distributions(unet, rollout, cond, uncond)[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        args = self.args
        cond, uncond, rollout, fresh = self._step_rollout(inputs, mode)

        log_prob, mean, std = self.step_distributions(model, rollout, cond, uncond)
        if fresh:
            old_log_prob = log_prob.detach()  # on-policy: the ratio is exactly 1
            if mode == "train" and args.num_iterations > 1:
                rollout.old_log_probs = old_log_prob
            sampled = rollout.log_probs[:, rollout.train_steps].transpose(0, 1)
            # How far the training pass's log-probabilities are from the sampler's (should be ~0: same policy).
            self._record_pooled(mode, "logps/sampling_gap", (log_prob.detach() - sampled).abs().mean())
        else:
            old_log_prob = rollout.old_log_probs
        kl = None
        if self._measure_kl(mode, args.beta > 0):
            with torch.no_grad(), self.reference_model() as reference:
                ref_mean = self.step_distributions(reference, rollout, cond, uncond)[1]
            kl = gaussian_kl(mean if args.beta > 0 else mean.detach(), ref_mean, std).reshape_as(log_prob)
            self._record_pooled(mode, "kl", kl.detach())
        advantages = rollout.advantages.to(log_prob.device).unsqueeze(0).expand_as(log_prob)
        losses, low, high = grpo_clipped_loss(
            log_prob, old_log_prob, advantages, args.epsilon, args.epsilon_high, kl, args.beta
        )
        loss = losses.mean()

        self._record_pooled(mode, "clip_ratio/low_mean", low)
        self._record_pooled(mode, "clip_ratio/high_mean", high)
        self._record_pooled(mode, "clip_ratio/region_mean", torch.maximum(low, high))
        self._record_pooled(mode, "logps/policy", log_prob.detach())
        return (loss, {"losses": losses.detach()}) if return_outputs else loss
