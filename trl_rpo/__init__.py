"""trl-rpo: preference optimization for text-to-image diffusion models, in the style of TRL."""

__version__ = "0.1.0.dev0"

from .data.builder import RichPreferenceConfig, RichPreferenceDataBuilder
from .data.formats import (
    InvalidRowError,
    load_preference_dataset,
    load_prompt_dataset,
    pickapic_to_preference,
    prepare_preference_dataset,
)
from .data.schema import Critique, EditInstruction
from .data.verifiers import ChangeGuard, CriticRecheckVerifier, RewardMarginVerifier
from .losses import diffusion_dpo_loss, mapo_loss, stepwise_dpo_loss
from .rewards.remote import RemoteReward
from .trainer import (
    BaseDiffusionConfig,
    BaseDiffusionTrainer,
    DiffusionDPOConfig,
    DiffusionDPOTrainer,
    DiffusionGRPOConfig,
    DiffusionGRPOTrainer,
    DiffusionModelConfig,
    TailorPOConfig,
    TailorPOTrainer,
    get_peft_config,
)

__all__ = [
    "ChangeGuard",
    "CriticRecheckVerifier",
    "RewardMarginVerifier",
    "RichPreferenceConfig",
    "RichPreferenceDataBuilder",
    "Critique",
    "EditInstruction",
    "BaseDiffusionConfig",
    "BaseDiffusionTrainer",
    "DiffusionDPOConfig",
    "DiffusionDPOTrainer",
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "DiffusionModelConfig",
    "InvalidRowError",
    "RemoteReward",
    "TailorPOConfig",
    "TailorPOTrainer",
    "__version__",
    "diffusion_dpo_loss",
    "get_peft_config",
    "mapo_loss",
    "stepwise_dpo_loss",
    "load_preference_dataset",
    "load_prompt_dataset",
    "pickapic_to_preference",
    "prepare_preference_dataset",
]
