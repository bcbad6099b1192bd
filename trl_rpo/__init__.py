"""trl-rpo: preference optimization for text-to-image diffusion models, in the style of TRL.

The public names load lazily (`trl_rpo._lazy`): importing the package imports no torch, so the command line
starts fast and quiet; `from trl_rpo import DiffusionDPOTrainer` imports what that trainer needs.
"""

import logging as _logging
from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0.dev0"

# On CPUs with AVX512-BF16, importing peft (trainers, configs, `shapes.load_pipeline`) makes bitsandbytes warn that an
# optional 4-bit CPU kernel from the Hub is missing. trl-rpo runs no 4-bit matmul on a CPU: muted here, for the command
# line and the Python API alike, before anything imports bitsandbytes. Its errors still show.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)

_EXPORTS = {
    **dict.fromkeys(["RichPreferenceConfig", "RichPreferenceDataBuilder"], ".data.builder"),
    **dict.fromkeys(
        [
            "InvalidRowError",
            "load_preference_dataset",
            "load_prompt_dataset",
            "pickapic_to_preference",
            "prepare_preference_dataset",
        ],
        ".data.formats",
    ),
    **dict.fromkeys(["Critique", "EditInstruction"], ".data.schema"),
    **dict.fromkeys(["DenoiserFamily", "register_family"], ".families"),
    **dict.fromkeys(["ChangeGuard", "CriticRecheckVerifier", "RewardMarginVerifier"], ".data.verifiers"),
    **dict.fromkeys(
        ["combined_diffusion_dpo_loss", "diffusion_dpo_loss", "mapo_loss", "stepwise_dpo_loss"], ".losses"
    ),
    "RemoteReward": ".rewards.remote",
    **dict.fromkeys(
        [
            "BaseDiffusionConfig",
            "BaseDiffusionTrainer",
            "DiffusionDPOConfig",
            "DiffusionDPOTrainer",
            "DiffusionGRPOConfig",
            "DiffusionGRPOTrainer",
            "DiffusionNFTConfig",
            "DiffusionNFTTrainer",
            "DiffusionModelConfig",
            "TailorPOConfig",
            "TailorPOTrainer",
            "get_peft_config",
        ],
        ".trainer",
    ),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names resolve through __getattr__
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
    from .families import DenoiserFamily, register_family
    from .losses import combined_diffusion_dpo_loss, diffusion_dpo_loss, mapo_loss, stepwise_dpo_loss
    from .rewards.remote import RemoteReward
    from .trainer import (
        BaseDiffusionConfig,
        BaseDiffusionTrainer,
        DiffusionDPOConfig,
        DiffusionDPOTrainer,
        DiffusionGRPOConfig,
        DiffusionGRPOTrainer,
        DiffusionModelConfig,
        DiffusionNFTConfig,
        DiffusionNFTTrainer,
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
    "DenoiserFamily",
    "EditInstruction",
    "BaseDiffusionConfig",
    "BaseDiffusionTrainer",
    "DiffusionDPOConfig",
    "DiffusionDPOTrainer",
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "DiffusionNFTConfig",
    "DiffusionNFTTrainer",
    "DiffusionModelConfig",
    "InvalidRowError",
    "RemoteReward",
    "TailorPOConfig",
    "TailorPOTrainer",
    "__version__",
    "combined_diffusion_dpo_loss",
    "diffusion_dpo_loss",
    "get_peft_config",
    "mapo_loss",
    "stepwise_dpo_loss",
    "load_preference_dataset",
    "load_prompt_dataset",
    "pickapic_to_preference",
    "prepare_preference_dataset",
    "register_family",
]
