"""Configuration of the Diffusion-DPO trainer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..diffusion import FLOW_WEIGHTING_SCHEMES, TIMESTEP_BIAS_STRATEGIES
from ..losses import DIFFUSION_DPO_LOSS_TYPES
from .base_config import BaseDiffusionConfig


@dataclass
class DiffusionDPOConfig(BaseDiffusionConfig):
    r"""
    Configuration class for the [`DiffusionDPOTrainer`].

    Only the parameters specific to Diffusion-DPO are listed here; see [`BaseDiffusionConfig`] for the model,
    resolution and validation-image fields and [`~transformers.TrainingArguments`] for everything else
    (`learning_rate`, `per_device_train_batch_size`, `gradient_accumulation_steps`, `bf16`, `optim`, ...).
    Using [`~transformers.HfArgumentParser`] (or TRL's `TrlParser`) this class turns into command-line arguments.

    Parameters:
        > Parameters that control the loss

        beta (`float`, *optional*, defaults to `5000.0`):
            Strength of the KL regularisation towards the reference model. In this convention
            (`chosen_rewards = -0.5 * beta * (policy_err - ref_err)`), 5000 is the Diffusion-DPO paper's value for
            SD 1.5 and SDXL (the diffusers script writes it as `beta_dpo = 2500` without the 1/2).
        loss_type (`list[str]`, *optional*, defaults to `["sigmoid"]`):
            `"sigmoid"` (Diffusion-DPO), `"hinge"` (SLiC), `"ipo"` (IPO), `"sft"` (denoising loss on the chosen
            image only, the paper's SFT baseline) or `"mapo"` (MaPO, reference-free: no reference pass and no
            reference weights). See [`diffusion_dpo_loss`] and [`mapo_loss`] for the equations. As in TRL's
            `DPOConfig`, a single string is accepted, and several types are summed with `loss_weights` (e.g.
            `["sigmoid", "sft"]`: Diffusion-DPO plus the denoising loss on the chosen image).
        loss_weights (`list[float]`, *optional*):
            One weight per entry of `loss_type` (default: 1.0 each); see [`combined_diffusion_dpo_loss`].
        mapo_beta (`float`, *optional*, defaults to `0.1`):
            MaPO's β, the weight of its margin term (`loss_type="mapo"` only; `beta` is not used there).
        mapo_snr_value (`float`, *optional*, defaults to `0.5`):
            MaPO's γ in `s(e) = γe / (exp(γe) - 1)`, its likelihood surrogate of a denoising error.

        > Parameters that control edit masks (datasets with a `mask` column, as the builder writes)

        mask_weight_outside (`float`, *optional*, defaults to `0.0`):
            Weight in [0, 1] of the denoising error outside a pair's (dilated) edit mask, for policy and reference
            alike; inside it is 1. `1.0` turns masking off (the plain loss); `0.0` ignores everything the edit did not
            touch. Pairs whose mask is None keep the plain loss.
        mask_dilation (`int`, *optional*, defaults to `1`):
            Latent cells by which the edit mask grows in every direction after pooling to latent resolution.

        > Parameters of the training timesteps of UNet models (SD 1.5, SDXL)

        timestep_bias_strategy (`str`, *optional*, defaults to `"none"`):
            Bias of the DDPM timestep shared by a pair's two images, as in diffusers' SDXL fine-tuning script:
            `"none"` (uniform, Diffusion-DPO's), `"earlier"` / `"later"` (the first / last `timestep_bias_portion`
            of the timesteps: the least / most noisy) or `"range"` (`timestep_bias_begin <= t <
            timestep_bias_end`). See [`timestep_bias_weights`]. Rectified-flow models use `weighting_scheme`.
        timestep_bias_multiplier (`float`, *optional*, defaults to `1.0`):
            Weight of the biased timesteps relative to the others: above 1 favours them, 0 never draws them.
        timestep_bias_portion (`float`, *optional*, defaults to `0.25`):
            Fraction of the timesteps that `"earlier"` and `"later"` bias.
        timestep_bias_begin (`int`, *optional*, defaults to `0`):
            First biased timestep of `"range"`.
        timestep_bias_end (`int`, *optional*, defaults to `1000`):
            End (exclusive) of `"range"`.

        > Parameters of rectified-flow models (SD3 / SD3.5, FLUX.1)

        weighting_scheme (`str`, *optional*, defaults to `"logit_normal"`):
            Density of the training noise level `sigma` (one per pair, shared by both images): `"logit_normal"`
            (`sigma = sigmoid(n)`, `n ~ N(logit_mean, logit_std^2)`), `"mode"` (SD3 paper's mode sampling with
            `mode_scale`) or `"uniform"`; drawn with diffusers' `compute_density_for_timestep_sampling`, then mapped
            through the scheduler's shifted schedule, as in diffusers' SD3 / FLUX training scripts. Unused by UNet
            models.
        logit_mean (`float`, *optional*, defaults to `0.0`):
            Mean of the logit-normal density.
        logit_std (`float`, *optional*, defaults to `1.0`):
            Standard deviation of the logit-normal density.
        mode_scale (`float`, *optional*, defaults to `1.29`):
            Scale of the `"mode"` density (the SD3 paper's value).

        > Parameters that control the data

        caption_dropout_probability (`float`, *optional*, defaults to `0.0`):
            Probability of replacing a pair's prompt by the empty prompt (both images get the same empty prompt),
            which keeps classifier-free guidance working. Diffusion-DPO's reference run used 0.2.
        random_crop (`bool`, *optional*, defaults to `False`):
            Crop a random window after resizing instead of the center; both images of a pair get the same window.
        random_flip (`bool`, *optional*, defaults to `False`):
            Flip pairs horizontally with probability 0.5 (both images together).
        skip_invalid_rows (`bool`, *optional*, defaults to `False`):
            Drop rows whose prompt is empty or not a string, or whose image does not decode, logging how many and
            why. By default such a row raises an error naming its index and column.
        dataset_num_proc (`int`, *optional*):
            Processes for dataset validation and conversion.
        max_train_samples (`int`, *optional*):
            Keep only the first N training rows. Applied before anything else (validation, precompute), so a
            short run on Pick-a-Pic v2 never reads or encodes the rest of it.

        > Parameters that control speed and memory

        precompute_latents (`bool`, *optional*, defaults to `False`):
            Encode every image with the VAE and every prompt with the text encoder(s) once, before training, so
            that training steps run only the UNet. Random crop / flip then happen once, at precompute time. Each
            process encodes its own share of the rows (in the training dtype: bf16 / fp16 under mixed
            precision), writes it to `precompute_cache_dir`, and then reads every share, so all processes see the
            whole precomputed dataset. Each row's random crop, flip and VAE sample follow `seed` and its row
            index, so the cache is the same for any number of processes.
        precompute_batch_size (`int`, *optional*):
            Batch size of the precompute pass. Defaults to `per_device_train_batch_size`.
        precompute_cache_dir (`str`, *optional*):
            Folder of the precomputed shards (one sub-folder per dataset, encoder weights and settings; an
            existing shard is reused, not encoded again). Must be visible to every process. Defaults to
            `<HF_DATASETS_CACHE>/trl_rpo_precomputed`.
        offload_encoders (`bool`, *optional*, defaults to `True`):
            With `precompute_latents`, move the VAE and text encoders to the CPU afterwards; they return to the
            device only to render validation images.
    """

    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})

    beta: float = field(
        default=5000.0,
        metadata={"help": "KL strength; rewards are -0.5*beta*(policy_err - ref_err). 5000 is Diffusion-DPO's value."},
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={
            "help": "Loss: 'sigmoid' (Diffusion-DPO), 'hinge', 'ipo', 'sft' or 'mapo' (reference-free); several "
            "are summed with loss_weights, as in TRL.",
            "choices": list(DIFFUSION_DPO_LOSS_TYPES),
        },
    )
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per loss_type entry (default: 1.0 each), as in TRL."}
    )
    mapo_beta: float = field(default=0.1, metadata={"help": "MaPO's beta (margin-term weight), loss_type='mapo'."})
    mapo_snr_value: float = field(
        default=0.5, metadata={"help": "MaPO's gamma in s(e) = gamma*e / (exp(gamma*e) - 1), loss_type='mapo'."}
    )
    mask_weight_outside: float = field(
        default=0.0,
        metadata={"help": "Weight in [0, 1] of the error outside a pair's edit mask (1.0: masking off)."},
    )
    mask_dilation: int = field(default=1, metadata={"help": "Latent cells the edit mask grows by in each direction."})
    timestep_bias_strategy: str = field(
        default="none",
        metadata={
            "help": "UNet models: bias of the training timestep (none, earlier, later, range), as in diffusers' "
            "SDXL script.",
            "choices": list(TIMESTEP_BIAS_STRATEGIES),
        },
    )
    timestep_bias_multiplier: float = field(
        default=1.0, metadata={"help": "Weight of the biased timesteps (above 1 favours them, 0 never draws them)."}
    )
    timestep_bias_portion: float = field(
        default=0.25, metadata={"help": "Fraction of the timesteps that 'earlier' and 'later' bias."}
    )
    timestep_bias_begin: int = field(default=0, metadata={"help": "First biased timestep of 'range'."})
    timestep_bias_end: int = field(default=1000, metadata={"help": "End (exclusive) of 'range'."})
    weighting_scheme: str = field(
        default="logit_normal",
        metadata={
            "help": "Flow models: density of the training noise level (logit_normal, mode, uniform).",
            "choices": list(FLOW_WEIGHTING_SCHEMES),
        },
    )
    logit_mean: float = field(default=0.0, metadata={"help": "Flow models: mean of the logit-normal density."})
    logit_std: float = field(default=1.0, metadata={"help": "Flow models: std of the logit-normal density."})
    mode_scale: float = field(default=1.29, metadata={"help": "Flow models: scale of the 'mode' density."})
    caption_dropout_probability: float = field(
        default=0.0,
        metadata={"help": "Probability of training a pair on the empty prompt (same for both images)."},
    )
    random_crop: bool = field(default=False, metadata={"help": "Random instead of center crop (same for the pair)."})
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flip (same for the pair)."})
    skip_invalid_rows: bool = field(
        default=False,
        metadata={"help": "Drop invalid rows (logged with reasons) instead of raising an error naming the row."},
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for dataset validation."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (before validation and precompute)."}
    )
    precompute_latents: bool = field(
        default=False,
        metadata={
            "help": "Encode images (VAE) and prompts (text encoders) once before training; steps run only the UNet."
        },
    )
    precompute_batch_size: int | None = field(
        default=None, metadata={"help": "Batch size of the precompute pass (default: per-device train batch size)."}
    )
    precompute_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the precomputed shards, shared by all processes (default: in HF_DATASETS_CACHE)."
        },
    )
    offload_encoders: bool = field(
        default=True,
        metadata={"help": "After precompute, keep the VAE and text encoders on the CPU (back only for validation)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.loss_type, str):  # TRL's convention: one type, or a list summed with loss_weights
            self.loss_type = [self.loss_type]
        self.loss_type = list(self.loss_type)
        unknown = [t for t in self.loss_type if t not in DIFFUSION_DPO_LOSS_TYPES]
        if unknown or not self.loss_type:
            raise ValueError(f"loss_type must be one or more of {DIFFUSION_DPO_LOSS_TYPES}, got {self.loss_type!r}")
        if len(set(self.loss_type)) != len(self.loss_type):
            raise ValueError(f"loss_type lists a type twice: {self.loss_type!r}; give it once, with its loss_weights")
        if self.loss_weights is not None:
            if len(self.loss_weights) != len(self.loss_type):
                raise ValueError(
                    f"loss_weights has {len(self.loss_weights)} entries for the {len(self.loss_type)} loss types "
                    f"{self.loss_type}; give one weight per type"
                )
            if not all(math.isfinite(w) and w >= 0 for w in self.loss_weights):
                raise ValueError(f"loss_weights must be finite and >= 0, got {self.loss_weights}")
        if self.weighting_scheme not in FLOW_WEIGHTING_SCHEMES:
            raise ValueError(
                f"weighting_scheme must be one of {FLOW_WEIGHTING_SCHEMES}, got {self.weighting_scheme!r}"
            )
        if self.timestep_bias_strategy not in TIMESTEP_BIAS_STRATEGIES:
            raise ValueError(
                f"timestep_bias_strategy must be one of {TIMESTEP_BIAS_STRATEGIES}, "
                f"got {self.timestep_bias_strategy!r}"
            )
        if not (math.isfinite(self.timestep_bias_multiplier) and self.timestep_bias_multiplier >= 0):
            raise ValueError(f"timestep_bias_multiplier must be finite and >= 0, got {self.timestep_bias_multiplier}")
        if not 0.0 < self.timestep_bias_portion <= 1.0:
            raise ValueError(f"timestep_bias_portion must be in (0, 1], got {self.timestep_bias_portion}")
        if not 0 <= self.timestep_bias_begin < self.timestep_bias_end:
            raise ValueError(
                f"timestep_bias_begin and timestep_bias_end must satisfy 0 <= begin < end, got "
                f"{self.timestep_bias_begin} and {self.timestep_bias_end}"
            )
        if self.logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {self.logit_std}")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.mapo_beta < 0:
            raise ValueError(f"mapo_beta must be >= 0, got {self.mapo_beta}")
        if self.mapo_snr_value <= 0:
            raise ValueError(f"mapo_snr_value must be positive, got {self.mapo_snr_value}")
        if not 0.0 <= self.mask_weight_outside <= 1.0:
            raise ValueError(f"mask_weight_outside must be in [0, 1], got {self.mask_weight_outside}")
        if self.mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0 latent cells, got {self.mask_dilation}")
        if not 0.0 <= self.caption_dropout_probability <= 1.0:
            raise ValueError(f"caption_dropout_probability must be in [0, 1], got {self.caption_dropout_probability}")
        if self.max_train_samples is not None and self.max_train_samples <= 0:
            raise ValueError(f"max_train_samples must be positive, got {self.max_train_samples}")
