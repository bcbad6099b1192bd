"""Configuration of the TailorPO trainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from .online_config import OnlineDiffusionConfig

TIMESTEP_SELECTIONS = ("all", "random", "window")
PAIRINGS = ("best_worst", "all", "final")
STEP_REWARD_ESTIMATES = ("x0", "ode_lookahead")


@dataclass
class TailorPOConfig(OnlineDiffusionConfig):
    r"""
    Configuration class for the [`TailorPOTrainer`].

    Only TailorPO's own parameters are listed; see [`OnlineDiffusionConfig`] (sampling, rewards, `log_kl`,
    `log_samples_steps`), [`BaseDiffusionConfig`] and [`~transformers.TrainingArguments`] for the rest.
    `per_device_train_batch_size` is the number of *prompts* sampled per device and step.

    Parameters:
        > Parameters that control sampling

        num_inference_steps (`int`, *optional*, defaults to `20`):
            DDIM steps of each sampled trajectory.
        guidance_scale (`float`, *optional*, defaults to `5.0`):
            Classifier-free guidance scale, used when sampling and when computing log-probabilities.

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
        step_reward_estimate (`str`, *optional*, defaults to `"x0"`):
            What a candidate's step-wise reward scores: `"x0"`, the clean image it predicts in one denoiser call
            (TailorPO's; Tweedie's estimate), or `"ode_lookahead"`, the image a deterministic completion reaches
            (the sampler's ODE step from the candidate to the end: one denoiser call per remaining step and
            candidate). On noisy steps the one-step prediction can say little about where a candidate leads
            (`trl_rpo.shapes.step_reward_check` measures both); the lookahead costs more the earlier the step.
        tie_margin (`float`, *optional*, defaults to `0.0`):
            Pairs whose rewards differ by no more than this are ties: skipped and counted.
        max_pairs_per_step (`int`, *optional*):
            Train on at most this many pairs per device and micro-step (a random subset), bounding memory.

        > Parameters that control the loss

        beta (`float`, *optional*, defaults to `10.0`):
            Scale of the step log-ratio margin inside the log-sigmoid (SPO's value).
        clip_range (`float`, *optional*, defaults to `0.1`):
            Per-step probability ratios are clipped to `1 ± clip_range` (SPO / D3PO); `None` disables.
        reward_guidance_scale (`float`, *optional*, defaults to `0.0`):
            TailorPO-G: moves the chosen candidate along the gradient of the (differentiable) reward of its
            predicted clean image before training on the pair. 0 disables guidance.
    """

    learning_rate: float = field(default=6e-5, metadata={"help": "Initial learning rate (SPO's SD 1.5 LoRA value)."})

    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps per sampled trajectory."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Classifier-free guidance scale."})
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
    step_reward_estimate: str = field(
        default="x0",
        metadata={
            "help": "Scored image of a candidate: 'x0' (one-step prediction) or 'ode_lookahead' (deterministic "
            "completion to the end).",
            "choices": list(STEP_REWARD_ESTIMATES),
        },
    )
    tie_margin: float = field(default=0.0, metadata={"help": "Reward differences <= this are skipped as ties."})
    max_pairs_per_step: int | None = field(default=None, metadata={"help": "Cap on pairs trained per micro-step."})
    beta: float = field(default=10.0, metadata={"help": "Scale of the step log-ratio margin (SPO's 10)."})
    clip_range: float | None = field(default=0.1, metadata={"help": "Clip step ratios to 1 +- this; None disables."})
    reward_guidance_scale: float = field(
        default=0.0, metadata={"help": "TailorPO-G reward-gradient step on the chosen candidate; 0 disables."}
    )

    def __post_init__(self):
        super().__post_init__()
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
        if self.step_reward_estimate not in STEP_REWARD_ESTIMATES:
            raise ValueError(
                f"step_reward_estimate must be one of {STEP_REWARD_ESTIMATES}, got {self.step_reward_estimate!r}"
            )
        if self.step_reward_estimate != "x0" and self.pairing == "final":
            raise ValueError("step_reward_estimate ranks candidates of a shared parent; pairing='final' has none")
        if self.num_selected_timesteps < 1:
            raise ValueError(f"num_selected_timesteps must be >= 1, got {self.num_selected_timesteps}")
        if self.tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {self.tie_margin}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.clip_range is not None and not 0 < self.clip_range < 1:
            raise ValueError(f"clip_range must be in (0, 1) or None, got {self.clip_range}")
        if self.reward_guidance_scale < 0:
            raise ValueError(f"reward_guidance_scale must be >= 0, got {self.reward_guidance_scale}")
        if self.reward_guidance_scale > 0 and self.pairing == "final":
            raise ValueError(
                "reward_guidance_scale (TailorPO-G) guides candidates drawn from a shared parent; "
                "pairing='final' has none. Use pairing='best_worst' or 'all'."
            )
