"""Configuration of the TailorPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import BaseDiffusionConfig

TIMESTEP_SELECTIONS = ("all", "random", "window")
PAIRINGS = ("best_worst", "all", "final")


@dataclass
class TailorPOConfig(BaseDiffusionConfig):
    r"""
    Configuration class for the [`TailorPOTrainer`].

    Only TailorPO's own parameters are listed; see [`BaseDiffusionConfig`] and [`~transformers.TrainingArguments`]
    for the rest. `per_device_train_batch_size` is the number of *prompts* sampled per device and step.

    Parameters:
        > Parameters that control sampling

        num_inference_steps (`int`, *optional*, defaults to `20`):
            DDIM steps of each sampled trajectory.
        guidance_scale (`float`, *optional*, defaults to `5.0`):
            Classifier-free guidance scale, used when sampling and when computing log-probabilities.
        eta (`float`, *optional*, defaults to `1.0`):
            DDIM stochasticity (> 0: each step is a Gaussian with a log-probability).
        sde_noise_level (`float`, *optional*, defaults to `0.7`):
            SD3 / FLUX (rectified flow): the noise level `a` of the SDE that replaces the flow ODE when sampling,
            `g_s = a * sqrt(s / (1 - s))` (Flow-GRPO's form and default; see
            [`~trl_rpo.diffusion.flow_sde_step_with_logprob`]). Unused by UNet models, which use `eta`.

        > Parameters that control pairs

        num_candidates (`int`, *optional*, defaults to `2`):
            K, the number of next-step candidates drawn from the same noisy parent at each selected step.
        pairing (`str`, *optional*, defaults to `"best_worst"`):
            `"best_worst"`: one pair (highest, lowest step-wise reward) per parent; `"all"`: every ranked pair of
            candidates; `"final"`: the D3PO/SPO-style baseline that ranks two whole trajectories by the reward of
            their final images and applies that label to every selected step (parents differ).
        timestep_selection (`str`, *optional*, defaults to `"random"`):
            Which denoising steps produce pairs: `"all"`, `"random"` (`num_selected_timesteps` of them, drawn anew
            for each rollout and shared by the prompts of a micro-batch) or `"window"` (the steps between
            `timestep_window_start` and `timestep_window_end`, fractions of the trajectory, 0 = first/noisiest step).
        num_selected_timesteps (`int`, *optional*, defaults to `5`):
            Steps per trajectory with `timestep_selection="random"`.
        timestep_window_start (`float`, *optional*, defaults to `0.0`):
            Start of the window (fraction of the trajectory).
        timestep_window_end (`float`, *optional*, defaults to `1.0`):
            End of the window (fraction of the trajectory, exclusive).
        tie_margin (`float`, *optional*, defaults to `0.0`):
            Pairs whose rewards differ by no more than this are ties: skipped and counted.
        vae_decode_batch_size (`int`, *optional*):
            Decode candidate and final latents this many at a time (all at once by default): at each selected step
            K x batch candidates are decoded and scored, which can set the peak memory at SDXL resolutions.
        max_pairs_per_step (`int`, *optional*):
            Train on at most this many pairs per device and micro-step (a random subset), bounding memory.

        > Parameters that control the loss

        beta (`float`, *optional*, defaults to `10.0`):
            Scale of the step log-ratio margin inside the log-sigmoid (SPO's value).
        clip_range (`float`, *optional*, defaults to `0.1`):
            Per-step probability ratios are clipped to `1 ± clip_range` (SPO / D3PO); `None` disables.
        reward_weights (`list[float]`, *optional*):
            Weight of each reward function; defaults to 1 each.
        reward_guidance_scale (`float`, *optional*, defaults to `0.0`):
            TailorPO-G: moves the chosen candidate along the gradient of the (differentiable) reward of its
            predicted clean image before training on the pair. 0 disables guidance.

        > Parameters that control logging

        log_samples_steps (`int`, *optional*):
            Every this many optimizer steps, the final images of the step's rollout (with their prompts and rewards)
            are saved under `output_dir/samples/step-N/` and sent to TensorBoard / W&B. `None` disables.
    """

    learning_rate: float = field(default=6e-5, metadata={"help": "Initial learning rate (SPO's SD 1.5 LoRA value)."})

    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps per sampled trajectory."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Classifier-free guidance scale."})
    eta: float = field(default=1.0, metadata={"help": "DDIM stochasticity (must be > 0)."})
    sde_noise_level: float = field(
        default=0.7,
        metadata={"help": "SD3 / FLUX: noise level a of the flow SDE, g = a*sqrt(s/(1-s)) (Flow-GRPO's 0.7)."},
    )
    num_candidates: int = field(default=2, metadata={"help": "Candidates drawn from each selected noisy parent."})
    pairing: str = field(
        default="best_worst",
        metadata={
            "help": "'best_worst', 'all' ranked pairs, or 'final' (D3PO/SPO baseline).",
            "choices": list(PAIRINGS),
        },
    )
    timestep_selection: str = field(
        default="random",
        metadata={
            "help": "Steps that produce pairs: 'all', 'random' or 'window'.",
            "choices": list(TIMESTEP_SELECTIONS),
        },
    )
    num_selected_timesteps: int = field(default=5, metadata={"help": "Steps per trajectory for 'random'."})
    timestep_window_start: float = field(default=0.0, metadata={"help": "Window start (fraction of trajectory)."})
    timestep_window_end: float = field(default=1.0, metadata={"help": "Window end (fraction, exclusive)."})
    tie_margin: float = field(default=0.0, metadata={"help": "Reward differences <= this are skipped as ties."})
    vae_decode_batch_size: int | None = field(
        default=None, metadata={"help": "Decode this many latents at a time when scoring (None: all at once)."}
    )
    max_pairs_per_step: int | None = field(default=None, metadata={"help": "Cap on pairs trained per micro-step."})
    beta: float = field(default=10.0, metadata={"help": "Scale of the step log-ratio margin (SPO's 10)."})
    clip_range: float | None = field(default=0.1, metadata={"help": "Clip step ratios to 1 +- this; None disables."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": "Weight per reward function."})
    reward_guidance_scale: float = field(
        default=0.0, metadata={"help": "TailorPO-G reward-gradient step on the chosen candidate; 0 disables."}
    )

    log_samples_steps: int | None = field(
        default=None, metadata={"help": "Save and log the rollout's images every N steps; None disables."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.sde_noise_level <= 0:
            raise ValueError(f"sde_noise_level must be > 0 (a stochastic flow step), got {self.sde_noise_level}")
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0 (a stochastic DDIM step has a log-probability), got {self.eta}")
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2, got {self.num_candidates}")
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {PAIRINGS}, got {self.pairing!r}")
        if self.timestep_selection not in TIMESTEP_SELECTIONS:
            raise ValueError(
                f"timestep_selection must be one of {TIMESTEP_SELECTIONS}, got {self.timestep_selection!r}"
            )
        if not 0.0 <= self.timestep_window_start < self.timestep_window_end <= 1.0:
            raise ValueError(
                "need 0 <= timestep_window_start < timestep_window_end <= 1, got "
                f"{self.timestep_window_start}, {self.timestep_window_end}"
            )
        if self.num_selected_timesteps < 1:
            raise ValueError(f"num_selected_timesteps must be >= 1, got {self.num_selected_timesteps}")
        if self.tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {self.tie_margin}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.clip_range is not None and not 0 < self.clip_range < 1:
            raise ValueError(f"clip_range must be in (0, 1) or None, got {self.clip_range}")
        if self.vae_decode_batch_size is not None and self.vae_decode_batch_size < 1:
            raise ValueError(f"vae_decode_batch_size must be >= 1 or None, got {self.vae_decode_batch_size}")
        if self.log_samples_steps is not None and self.log_samples_steps < 1:
            raise ValueError(f"log_samples_steps must be >= 1 or None, got {self.log_samples_steps}")
        if self.reward_guidance_scale < 0:
            raise ValueError(f"reward_guidance_scale must be >= 0, got {self.reward_guidance_scale}")
        if self.reward_guidance_scale > 0 and self.pairing == "final":
            raise ValueError(
                "reward_guidance_scale (TailorPO-G) guides candidates drawn from a shared parent; "
                "pairing='final' has none. Use pairing='best_worst' or 'all'."
            )
