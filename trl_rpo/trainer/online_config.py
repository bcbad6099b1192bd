"""What the configurations of the online trainers (TailorPO, GRPO, DiffusionNFT) share: sampling, rewards, logging."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import BaseDiffusionConfig


@dataclass
class OnlineDiffusionConfig(BaseDiffusionConfig):
    r"""
    The fields every online trainer reads: how rollouts are sampled and scored, and what is logged about them.

    Parameters:
        > Parameters that control sampling

        num_inference_steps (`int`, *optional*, defaults to `10`):
            Sampler steps of each rollout.
        guidance_scale (`float`, *optional*, defaults to `4.5`):
            Classifier-free guidance scale of rollouts (and of the log-probabilities computed on them). At 1 or below
            only the conditional branch runs (CFG-free rollouts, half the denoiser calls).
        true_cfg_scale (`float`, *optional*, defaults to `1.0`):
            Guidance-distilled families only (FLUX.1): true classifier-free guidance against the empty prompt, as
            `FluxPipeline(true_cfg_scale=...)`. At its default 1 rollouts run the conditional branch only, as the
            pipeline does; their guidance embedding is `embedded_guidance_scale`. `guidance_scale` is unused there.
        eta (`float`, *optional*, defaults to `1.0`):
            DDIM stochasticity of UNet models (> 0: each step is a Gaussian with a log-probability).
        sde_noise_level (`float`, *optional*, defaults to `0.7`):
            SD3 / FLUX (rectified flow): the noise level `a` of the SDE that replaces the flow ODE when sampling,
            `g_s = a * sqrt(s / (1 - s))` (Flow-GRPO's form and default; see
            [`~trl_rpo.diffusion.flow_sde_step_with_logprob`]). Unused by UNet models, which use `eta`.
        vae_decode_batch_size (`int`, *optional*):
            Decode latents this many at a time before scoring (all at once by default): bounds the peak memory.

        > Parameters that control rewards and logging

        reward_weights (`list[float]`, *optional*):
            Weight of each reward function; defaults to 1 each.
        log_kl (`bool`, *optional*, defaults to `True`):
            Measure the KL to the reference on logged steps even when the loss has no KL term (`kl` metric), with
            one reference pass without gradients on those steps only. `False` never runs a reference pass that the
            loss does not need. Full fine-tuning without a KL term keeps no reference copy, so it logs no `kl`.
        log_samples_steps (`int`, *optional*):
            Every this many optimizer steps, the rollout's images (with their prompts and rewards) are saved under
            `output_dir/samples/step-N/` and sent to TensorBoard / W&B. `None` disables.
    """

    num_inference_steps: int = field(default=10, metadata={"help": "Sampler steps per rollout."})
    guidance_scale: float = field(default=4.5, metadata={"help": "Classifier-free guidance scale of rollouts."})
    true_cfg_scale: float = field(
        default=1.0,
        metadata={"help": "FLUX.1: true CFG against the empty prompt (FluxPipeline's true_cfg_scale; 1: none)."},
    )
    eta: float = field(default=1.0, metadata={"help": "DDIM stochasticity (must be > 0)."})
    sde_noise_level: float = field(
        default=0.7,
        metadata={"help": "SD3 / FLUX: noise level a of the flow SDE, g = a*sqrt(s/(1-s)) (Flow-GRPO's 0.7)."},
    )
    vae_decode_batch_size: int | None = field(
        default=None, metadata={"help": "Decode this many latents at a time when scoring (None: all at once)."}
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "Weight per reward function."})
    log_kl: bool = field(
        default=True,
        metadata={"help": "Log the KL to the reference on logged steps even without a KL term (no-grad pass)."},
    )
    log_samples_steps: int | None = field(
        default=None, metadata={"help": "Save and log the rollout's images every N steps; None disables."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0 (a stochastic DDIM step has a log-probability), got {self.eta}")
        if self.sde_noise_level <= 0:
            raise ValueError(f"sde_noise_level must be > 0 (a stochastic flow step), got {self.sde_noise_level}")
        if self.true_cfg_scale < 1.0:
            raise ValueError(f"true_cfg_scale must be >= 1 (1: no true CFG), got {self.true_cfg_scale}")
        if self.vae_decode_batch_size is not None and self.vae_decode_batch_size < 1:
            raise ValueError(f"vae_decode_batch_size must be >= 1 or None, got {self.vae_decode_batch_size}")
        if self.log_samples_steps is not None and self.log_samples_steps < 1:
            raise ValueError(f"log_samples_steps must be >= 1 or None, got {self.log_samples_steps}")


SCALE_REWARDS = ("group", "batch", "none")
TIMESTEP_SAMPLINGS = ("random", "first")


@dataclass
class GroupRolloutConfig(OnlineDiffusionConfig):
    r"""
    The fields of the trainers that sample groups of images per prompt and normalise rewards in each group (GRPO,
    DiffusionNFT), with TRL `GRPOConfig`'s names. As in TRL, `per_device_train_batch_size` counts *images*: each
    process samples `per_device_train_batch_size // num_generations` prompts per micro-step and `num_generations`
    images of each, so it must be a multiple of `num_generations` (a group never spans processes).

    Parameters:
        num_generations (`int`, *optional*, defaults to `4`):
            G, the number of images sampled per prompt (the group whose rewards are normalised together).
        same_latent (`bool`, *optional*, defaults to `False`):
            Start every image of a group from the same initial noise `x_T` (Flow-GRPO's option): the group's images
            then differ only by the per-step noise, so the advantages compare the policy's steps, not the seeds.
        num_iterations (`int`, *optional*, defaults to `1`):
            Optimizer steps taken on each rollout (TRL's μ). With more than one, each process reuses its rollouts for
            this many consecutive optimizer steps (the buffer is saved in checkpoints, so a resume continues it).
        scale_rewards (`str`, *optional*, defaults to `"group"`):
            Divide centred rewards by the group's standard deviation (`"group"`), the standard deviation of the whole
            batch over every process (`"batch"`, as TRL after gathering) or not at all (`"none"`, Dr. GRPO). TRL's
            boolean spellings `"true"` / `"false"` are accepted.
        timestep_fraction (`float`, *optional*, defaults to `1.0`):
            Fraction of each trajectory's steps trained on (a random subset, drawn per rollout and kept across its
            iterations; DDPO's `timestep_fraction`, Flow-GRPO "Fast" trains a few steps). At least one step.
        timestep_sampling (`str`, *optional*, defaults to `"random"`):
            Which `timestep_fraction` of the steps is trained: `"random"` (a subset drawn per rollout, DDPO) or
            `"first"` (the noisiest ones, where layout and composition are decided; Flow-GRPO's `timestep_fraction`
            trains the first steps of each trajectory).
        rollout_chunk_size (`int`, *optional*):
            Sample a micro-step's rollout this many images at a time (a multiple of `num_generations`); `None`: all at
            once. Bounds the sampling batch, and with `async_rewards` sets what is scored while the next chunk samples.
        async_rewards (`bool`, *optional*, defaults to `False`):
            Score each decoded chunk on a background thread while the next chunk samples (Flow-GRPO scores each
            sampling batch on a thread pool the same way): for remote rewards (`RemoteReward`, `trl-rpo
            serve-reward`), whose answers then arrive while the denoiser keeps sampling. Results are identical to
            scoring inline; `time/reward_wait_s` logs how long sampling still waited. Needs `rollout_chunk_size`.
        max_pending_rewards (`int`, *optional*, defaults to `2`):
            With `async_rewards`, chunks waiting to be scored at most (each holds its latents and images): a bounded
            queue, so a slow reward server slows sampling instead of filling memory.
    """

    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Images per device and micro-step: a multiple of num_generations."}
    )
    num_generations: int = field(default=4, metadata={"help": "Images per prompt (the group)."})
    same_latent: bool = field(
        default=False, metadata={"help": "Start all images of a group from the same initial noise."}
    )
    num_iterations: int = field(default=1, metadata={"help": "Optimizer steps per rollout (TRL's mu)."})
    scale_rewards: str = field(
        default="group",
        metadata={
            "help": "Advantage scaling: 'group', 'batch' (all processes) or 'none'.",
            "choices": [*SCALE_REWARDS, "true", "false"],
        },
    )
    timestep_fraction: float = field(
        default=1.0, metadata={"help": "Fraction of each trajectory's steps to train on (random subset)."}
    )
    rollout_chunk_size: int | None = field(
        default=None, metadata={"help": "Images sampled at a time per rollout (multiple of num_generations)."}
    )
    async_rewards: bool = field(
        default=False, metadata={"help": "Score each chunk on a background thread while the next one samples."}
    )
    max_pending_rewards: int = field(default=2, metadata={"help": "async_rewards: chunks queued for scoring at most."})
    timestep_sampling: str = field(
        default="random",
        metadata={
            "help": "Which timestep_fraction of the steps: 'random' (DDPO) or 'first', the noisiest (Flow-GRPO).",
            "choices": list(TIMESTEP_SAMPLINGS),
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLINGS}, got {self.timestep_sampling!r}")
        scale = str(self.scale_rewards).lower()
        self.scale_rewards = {"true": "group", "false": "none"}.get(scale, scale)
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 (a group needs two images to compare), got {self.num_generations}"
            )
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) counts images and must be a "
                f"multiple of num_generations ({self.num_generations})"
            )
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1, got {self.num_iterations}")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        chunk = self.rollout_chunk_size
        if chunk is not None and (chunk < self.num_generations or chunk % self.num_generations):
            raise ValueError(
                f"rollout_chunk_size ({chunk}) must be a positive multiple of num_generations ({self.num_generations})"
            )
        if self.async_rewards and (chunk is None or chunk >= self.per_device_train_batch_size):
            raise ValueError(
                "async_rewards overlaps scoring with the next chunk's sampling: set rollout_chunk_size below "
                f"per_device_train_batch_size ({self.per_device_train_batch_size}), got {chunk}"
            )
        if self.max_pending_rewards < 1:
            raise ValueError(f"max_pending_rewards must be >= 1, got {self.max_pending_rewards}")
