"""Configuration of the DiffusionNFT trainer (GRPO's TRL-style names for what the two share)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_config import GroupRolloutConfig

__all__ = ["NFT_SAMPLERS", "DiffusionNFTConfig"]

NFT_SAMPLERS = ("ode", "sde")


@dataclass
class DiffusionNFTConfig(GroupRolloutConfig):
    r"""
    Configuration class for the [`DiffusionNFTTrainer`].

    Only DiffusionNFT's own parameters are listed; see [`GroupRolloutConfig`] (`num_generations`, `num_iterations`,
    `scale_rewards`, `timestep_fraction`, `same_latent`), [`OnlineDiffusionConfig`] (sampling, rewards, `log_kl`,
    `log_samples_steps`), [`BaseDiffusionConfig`] and [`~transformers.TrainingArguments`] for the rest. As in TRL's
    `GRPOConfig`, `per_device_train_batch_size` counts *images*, a multiple of `num_generations`.

    Parameters:
        sampler (`str`, *optional*, defaults to `"ode"`):
            How rollouts are sampled: `"ode"`, the deterministic solver (DDIM at eta 0; the flow ODE's Euler steps),
            or `"sde"`, the stochastic one GRPO uses (`eta` / `sde_noise_level`). DiffusionNFT needs only clean
            images, so any solver works; the loss never evaluates a likelihood.
        guidance_scale (`float`, *optional*, defaults to `4.5`):
            Classifier-free guidance of rollouts. The loss trains the conditional prediction only (NFT is
            CFG-free in training) unless `guided_loss`; `1.0` also samples without guidance.
        guided_loss (`bool`, *optional*, defaults to `False`):
            Train the guided prediction the rollouts sample (`uncond + guidance_scale (cond - uncond)`, both branches
            with gradients; twice the denoiser compute) instead of the conditional one. NFT trains CFG-free and
            samples its trained model without guidance; a model that is sampled *with* guidance gets, CFG-free, an
            update of its conditional branch regressed on guided samples it does not itself predict. No effect at a
            scale where rollouts run no CFG.
        nft_beta (`float`, *optional*, defaults to `1.0`):
            NFT's :math:`\beta`: how far the implicit positive / negative policies sit from the sampling policy
            (`v+ = beta v + (1 - beta) v_old`); its SD3.5 configs use 1.0 and 0.1.
        adv_clip_max (`float`, *optional*, defaults to `5.0`):
            Advantages are clipped to `[-adv_clip_max, adv_clip_max]` and mapped to optimality probabilities
            `r = 1/2 + A / (2 adv_clip_max)`; also NFT's constant loss scale.
        adaptive_weighting (`bool`, *optional*, defaults to `True`):
            Divide each sample's squared x0 error by its (detached) mean absolute error, NFT's adaptive weighting.
        old_policy_decay (`float`, *optional*, defaults to `0.0`):
            The sampling ("old") policy after each rollout's `num_iterations` optimizer steps becomes
            `decay * old + (1 - decay) * current` (NFT's `decay_type` schedules hold it between 0 and 0.999). At 0 with
            `num_iterations=1` the old policy is the current one: its prediction is the policy's own, detached, and
            no second denoiser pass runs. Otherwise a copy of the trained parameters (LoRA or full) is kept, rollouts
            are sampled with it, and each step runs one more no-grad pass.
        beta (`float`, *optional*, defaults to `0.0`):
            KL coefficient: `beta * mean (v_theta - v_ref)^2` towards the reference (NFT's `train.beta`, 1e-4 in its
            SD3.5 configs). 0 runs no reference pass for the loss (see `log_kl`).
    """

    learning_rate: float = field(default=3e-4, metadata={"help": "Initial learning rate (NFT's SD3.5 LoRA value)."})
    sampler: str = field(
        default="ode",
        metadata={
            "help": "Rollout solver: 'ode' (deterministic) or 'sde' (stochastic).",
            "choices": list(NFT_SAMPLERS),
        },
    )
    nft_beta: float = field(default=1.0, metadata={"help": "NFT's beta: v+ = beta v + (1 - beta) v_old."})
    adv_clip_max: float = field(default=5.0, metadata={"help": "Advantage clip and loss scale (NFT's 5)."})
    adaptive_weighting: bool = field(
        default=True, metadata={"help": "Divide squared x0 errors by their detached mean absolute error."}
    )
    guided_loss: bool = field(
        default=False,
        metadata={"help": "Train the CFG-guided prediction rollouts sample, not the conditional one (NFT's)."},
    )
    old_policy_decay: float = field(
        default=0.0, metadata={"help": "Old (sampling) policy <- decay * old + (1 - decay) * current per rollout."}
    )
    beta: float = field(default=0.0, metadata={"help": "KL coefficient on mean (v - v_ref)^2; 0: no KL term."})

    def __post_init__(self):
        super().__post_init__()
        if self.sampler not in NFT_SAMPLERS:
            raise ValueError(f"sampler must be one of {NFT_SAMPLERS}, got {self.sampler!r}")
        if self.nft_beta <= 0:
            raise ValueError(f"nft_beta must be > 0, got {self.nft_beta}")
        if self.adv_clip_max <= 0:
            raise ValueError(f"adv_clip_max must be > 0, got {self.adv_clip_max}")
        if not 0.0 <= self.old_policy_decay < 1.0:
            raise ValueError(f"old_policy_decay must be in [0, 1), got {self.old_policy_decay}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
