"""Configuration of the diffusion GRPO trainer (TRL `GRPOConfig`'s names where they apply)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_config import SCALE_REWARDS, GroupRolloutConfig

__all__ = ["SCALE_REWARDS", "DiffusionGRPOConfig"]


@dataclass
class DiffusionGRPOConfig(GroupRolloutConfig):
    r"""
    Configuration class for the [`DiffusionGRPOTrainer`].

    Only GRPO's own parameters are listed; see [`GroupRolloutConfig`] (`num_generations`, `num_iterations`,
    `scale_rewards`, `timestep_fraction`, `same_latent`), [`OnlineDiffusionConfig`] (sampling, rewards, `log_kl`,
    `log_samples_steps`), [`BaseDiffusionConfig`] and [`~transformers.TrainingArguments`] for the rest. As in TRL's
    `GRPOConfig`, `per_device_train_batch_size` counts *images* (completions), a multiple of `num_generations`.

    Parameters:
        num_inference_steps (`int`, *optional*, defaults to `10`):
            Sampler steps of each trajectory (Flow-GRPO trains with 10 sampling steps).
        guidance_scale (`float`, *optional*, defaults to `4.5`):
            Classifier-free guidance scale, used when sampling and when computing log-probabilities.
        beta (`float`, *optional*, defaults to `0.0`):
            KL coefficient towards the reference: the exact KL of each trained step between the policy's and the
            reference's Gaussians, per latent dimension ([`~trl_rpo.diffusion.gaussian_kl`], Flow-GRPO's form; its
            SD3 configs use 0.04). `0.0` (TRL's default): no KL term, no reference pass for the loss (see `log_kl`),
            and full fine-tuning keeps no reference copy.
        epsilon (`float`, *optional*, defaults to `1e-4`):
            Per-step probability ratios are clipped to `[1 - epsilon, 1 + epsilon_high]`. The log-probabilities are
            per-dimension means (DDPO / Flow-GRPO), so a ratio moves by about 1e-4 per optimizer step: DDPO's and
            Flow-GRPO's `clip_range=1e-4` clips in practice, TRL's text default 0.2 never would. Only matters with
            `num_iterations > 1` (on-policy, the ratio is exactly 1).
        epsilon_high (`float`, *optional*):
            Upper clip bound (DAPO's decoupled clip, TRL's `epsilon_high`); defaults to `epsilon`.
        sde_window_size (`int`, *optional*, defaults to `0`):
            Flow-GRPO-Fast / MixGRPO: only this many consecutive steps of each rollout are sampled with the SDE (and
            trained on); every other step takes the deterministic ODE step (DDIM at eta 0, the flow's Euler step).
            The window's first step is drawn per rollout, uniformly within `sde_window_range` (Flow-GRPO's
            `sample.sde_window_size` / `sde_window_range`). With `same_latent`, a group's images are identical until
            the window, so the steps before it run once per prompt instead of once per image. `0`: every step is an
            SDE step (Flow-GRPO). Replaces `timestep_fraction` (which must then stay 1).
        sde_window_range (`list[int]`, *optional*):
            `[first, end)` step indices the window lies in; defaults to the whole trajectory `[0,
            num_inference_steps]`. Flow-GRPO-Fast's configs use the first half.
    """

    learning_rate: float = field(default=3e-4, metadata={"help": "Initial learning rate (DDPO's SD 1.5 LoRA value)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient (Gaussian step KL); 0: no KL term."})
    epsilon: float = field(
        default=1e-4, metadata={"help": "Clip per-step ratios to [1 - epsilon, 1 + epsilon_high] (DDPO's 1e-4)."}
    )
    epsilon_high: float | None = field(default=None, metadata={"help": "Upper clip bound; defaults to epsilon."})
    sde_window_size: int = field(
        default=0,
        metadata={"help": "Consecutive SDE (trained) steps per rollout, ODE elsewhere (Flow-GRPO-Fast); 0: all SDE."},
    )
    sde_window_range: list[int] | None = field(
        default=None,
        metadata={"help": "[first, end) step indices the SDE window is drawn in; default: the whole trajectory."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            raise ValueError(f"epsilon_high must be > 0 or None, got {self.epsilon_high}")
        if self.sde_window_size < 0:
            raise ValueError(f"sde_window_size must be >= 0, got {self.sde_window_size}")
        if self.sde_window_range is not None:
            self.sde_window_range = [int(v) for v in self.sde_window_range]
        if self.sde_window_size:
            first, end = self.sde_window_range or (0, self.num_inference_steps)
            if not 0 <= first < end <= self.num_inference_steps or end - first < self.sde_window_size:
                raise ValueError(
                    f"sde_window_range {[first, end]} must lie in [0, num_inference_steps={self.num_inference_steps}] "
                    f"and hold sde_window_size={self.sde_window_size} steps"
                )
            if self.timestep_fraction != 1.0:
                raise ValueError(
                    "sde_window_size chooses the trained steps (the window's); leave timestep_fraction at 1, got "
                    f"{self.timestep_fraction}"
                )
