"""DiffusionNFT: online RL on the forward process (no likelihoods, any solver, CFG-free training)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from ..citations import DIFFUSION_NFT_CITATION
from ..losses import diffusion_nft_loss
from .nft_config import DiffusionNFTConfig
from .rollouts import GroupRolloutTrainer, Rollout

logger = logging.getLogger(__name__)

__all__ = ["DiffusionNFTTrainer"]


class _OldPolicyUpdate(TrainerCallback):
    """After each rollout's `num_iterations` optimizer steps, move the old (sampling) policy towards the current."""

    def __init__(self, trainer: DiffusionNFTTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.trainer.args.num_iterations == 0:
            self.trainer.update_old_policy()


class DiffusionNFTTrainer(GroupRolloutTrainer):
    r"""DiffusionNFT (Zheng et al., ICLR 2026, arXiv 2509.16117), with TRL `GRPOTrainer`'s surface.

    Each micro-step samples `num_generations` images per prompt with the sampling ("old") policy, with any solver
    (`sampler="ode"` by default: no stochastic step, no log-probability), scores them, and normalises the rewards
    per group into advantages and then optimality probabilities :math:`r \in [0, 1]`. Training happens on the
    *forward* process: each clean sample is noised afresh at the rollout's timesteps (a random `timestep_fraction`
    of them), and the policy's conditional prediction is combined with the old policy's into an implicit positive
    and negative policy (see [`~trl_rpo.losses.diffusion_nft_loss`]):

    .. math::
        \mathcal L = \frac{c}{\beta}\,\mathbb E_{t,\epsilon}\Big[r\,\lVert \hat x_0^+ - x_0\rVert^2_w
        + (1-r)\,\lVert \hat x_0^- - x_0\rVert^2_w\Big] + \beta_{KL}\,\lVert v_\theta - v_{ref}\rVert^2

    UNet models (epsilon or v prediction) and flow models (velocity) go through the same clean-sample prediction.

    Args:
        model: a pipeline object, or a Hub id / local folder of one, of a registered family (SD 1.5, SDXL,
            SD3 / SD3.5, FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]).
        reward_funcs: one or a list of `f(images, prompts, **kwargs) -> list[float]` callables or scorer objects
            from `trl_rpo.rewards`; TRL's convention.
        args: a [`DiffusionNFTConfig`].
        train_dataset: prompts, in a `prompt` column.
        reward_weights: overrides `args.reward_weights`.
        ref_model / peft_config: as in [`DiffusionDPOTrainer`].

    Override points: `rollout`, `compute_advantages` and `forward_process` (which clean samples, noises and
    timesteps are trained on).
    """

    _tag_names = ["trl", "trl-rpo", "diffusion-nft", "diffusers", "text-to-image"]
    _name = "DiffusionNFT"
    _paper = {
        "title": "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
        "id": "2509.16117",
        "citation": DIFFUSION_NFT_CITATION,
    }
    _card_method_fields = (
        "num_generations",
        "sampler",
        "nft_beta",
        "adv_clip_max",
        "adaptive_weighting",
        "old_policy_decay",
        "beta",
        "num_iterations",
        "scale_rewards",
        "num_inference_steps",
        "guidance_scale",
        "timestep_fraction",
    )
    config_class = DiffusionNFTConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stochastic_rollouts = self.args.sampler == "sde"
        self._old_params: list[torch.Tensor] | None = None
        if self.args.old_policy_decay > 0 or self.args.num_iterations > 1:
            if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
                raise ValueError(
                    "old_policy_decay > 0 or num_iterations > 1 keeps a copy of the trained parameters, which ZeRO-3 "
                    "partitions; use ZeRO-2, or old_policy_decay=0 with num_iterations=1"
                )
            self._old_params = [p.detach().clone() for p in self._trainable_parameters]
            self.add_callback(_OldPolicyUpdate(self))

    def trainable_steps(self) -> list[int]:
        """Every sampler timestep: NFT noises clean samples itself, so no step needs a density."""
        return list(range(len(self.sample_scheduler.timesteps)))

    # -- the old (sampling) policy -------------------------------------------------------------------------------

    @contextmanager
    def old_policy(self) -> Iterator[torch.nn.Module]:
        """The denoiser with the old policy's trained parameters swapped in (no copy of the frozen weights)."""
        unet = self._unwrapped_unet()
        if self._old_params is None:
            yield unet
            return
        params = self._trainable_parameters
        current = [p.data for p in params]
        with torch.no_grad():
            for p, old in zip(params, self._old_params):
                p.data = old
        try:
            yield unet
        finally:
            with torch.no_grad():
                for p, data in zip(params, current):
                    p.data = data

    @torch.no_grad()
    def update_old_policy(self) -> None:
        """`old <- decay * old + (1 - decay) * current` (NFT's update after each rollout's optimizer steps)."""
        if self._old_params is None:
            return
        decay = self.args.old_policy_decay
        for old, p in zip(self._old_params, self._trainable_parameters):
            old.mul_(decay).add_(p.detach().to(old.dtype), alpha=1.0 - decay)

    def rollout(self, prompts, conditioning=None, generator=None) -> Rollout:
        """Rollouts sampled with the old policy (the current one unless `old_policy_decay` or `num_iterations`)."""
        with self.old_policy():
            return super().rollout(prompts, conditioning, generator)

    # -- the loss ------------------------------------------------------------------------------------------------

    def forward_process(self, rollout: Rollout, generator: torch.Generator | None = None):
        """Clean samples noised afresh at the rollout's trained timesteps: `(x0, noisy, timesteps, prompt_index)`,
        step-major (`[K * N, ...]`), the noise from this process's stream."""
        generator = generator if generator is not None else self.rank_generator
        steps = rollout.train_steps
        x0 = rollout.latents[:, -1].float()
        n = x0.shape[0]
        x0 = x0.repeat(len(steps), *([1] * (x0.ndim - 1)))
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        timesteps = rollout.timesteps[steps].to(x0.device).repeat_interleave(n)
        noisy = self.model_adapter.add_noise(x0, noise, timesteps)
        return x0, noisy, timesteps, rollout.prompt_index.repeat(len(steps))

    def trained_prediction(self, unet, noisy, timesteps, cond, uncond=None) -> torch.Tensor:
        """The prediction the loss trains: the conditional one (NFT's CFG-free training), or with `uncond` (under
        `guided_loss`) the classifier-free guided one that rollouts sample."""
        if uncond is None:
            return self.unet_forward(unet, noisy, timesteps, cond).float()
        return self.guided_prediction(unet, noisy, timesteps, cond, uncond)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        args = self.args
        cond, uncond, rollout, fresh = self._step_rollout(inputs, mode)

        x0, noisy, timesteps, index = self.forward_process(rollout)
        c = {k: v[index] for k, v in cond.items()}
        u = {k: v[index] for k, v in uncond.items()} if args.guided_loss else None
        old_output = None
        if self._old_params is not None:  # before the policy's pass: its graph keeps the current weights
            with torch.no_grad(), self.old_policy() as old:
                old_output = self.trained_prediction(old, noisy, timesteps, c, u)
        output = self.trained_prediction(model, noisy, timesteps, c, u)
        if old_output is None:  # the old policy is the current one
            old_output = output.detach()
        policy_x0 = self.predict_x0(output, noisy, timesteps)
        old_x0 = self.predict_x0(old_output, noisy, timesteps)
        advantages = rollout.advantages.to(x0.device).repeat(len(rollout.train_steps))
        losses, positive, negative = diffusion_nft_loss(
            policy_x0, old_x0, x0, advantages, args.nft_beta, args.adv_clip_max, args.adaptive_weighting
        )
        loss = losses.mean()
        dims = tuple(range(1, output.ndim))
        if self._measure_kl(mode, args.beta > 0):
            with torch.no_grad(), self.reference_model() as reference:
                ref_output = self.trained_prediction(reference, noisy, timesteps, c, u)
            kl = ((output if args.beta > 0 else output.detach()) - ref_output).pow(2).mean(dim=dims)
            if args.beta > 0:
                loss = loss + args.beta * kl.mean()
            self._record_pooled(mode, "kl", kl.detach())
        self._record_pooled(mode, "nft/positive_loss", positive)
        self._record_pooled(mode, "nft/negative_loss", negative)
        self._record_pooled(mode, "nft/old_deviation", (output.detach() - old_output).pow(2).mean(dim=dims))
        return (loss, {"losses": losses.detach()}) if return_outputs else loss
