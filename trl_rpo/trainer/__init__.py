"""Trainers and their configs (loaded lazily: importing a config does not import the trainers' model stack)."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(
        ["encode_images", "encode_prompts", "is_sdxl_pipeline", "load_pipeline", "sdxl_time_ids"], "..pipelines"
    ),
    "BaseDiffusionTrainer": ".base",
    "BaseDiffusionConfig": ".base_config",
    "DiffusionDPOConfig": ".diffusion_dpo_config",
    **dict.fromkeys(["DataCollatorForDiffusionPreference", "DiffusionDPOTrainer"], ".diffusion_dpo_trainer"),
    "DiffusionGRPOConfig": ".grpo_config",
    "DiffusionGRPOTrainer": ".grpo_trainer",
    "DiffusionNFTConfig": ".nft_config",
    "DiffusionNFTTrainer": ".nft_trainer",
    **dict.fromkeys(["GroupRolloutConfig", "OnlineDiffusionConfig"], ".online_config"),
    **dict.fromkeys(["DiffusionModelConfig", "get_peft_config"], ".model_config"),
    "TailorPOConfig": ".tailorpo_config",
    **dict.fromkeys(["StepPairs", "TailorPOTrainer"], ".tailorpo_trainer"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from ..pipelines import encode_images, encode_prompts, is_sdxl_pipeline, load_pipeline, sdxl_time_ids
    from .base import BaseDiffusionTrainer
    from .base_config import BaseDiffusionConfig
    from .diffusion_dpo_config import DiffusionDPOConfig
    from .diffusion_dpo_trainer import DataCollatorForDiffusionPreference, DiffusionDPOTrainer
    from .grpo_config import DiffusionGRPOConfig
    from .grpo_trainer import DiffusionGRPOTrainer
    from .model_config import DiffusionModelConfig, get_peft_config
    from .nft_config import DiffusionNFTConfig
    from .nft_trainer import DiffusionNFTTrainer
    from .online_config import GroupRolloutConfig, OnlineDiffusionConfig
    from .tailorpo_config import TailorPOConfig
    from .tailorpo_trainer import StepPairs, TailorPOTrainer

__all__ = [
    "BaseDiffusionConfig",
    "BaseDiffusionTrainer",
    "DataCollatorForDiffusionPreference",
    "DiffusionDPOConfig",
    "DiffusionDPOTrainer",
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
    "DiffusionModelConfig",
    "DiffusionNFTConfig",
    "DiffusionNFTTrainer",
    "GroupRolloutConfig",
    "OnlineDiffusionConfig",
    "get_peft_config",
    "StepPairs",
    "TailorPOConfig",
    "TailorPOTrainer",
    "encode_images",
    "encode_prompts",
    "is_sdxl_pipeline",
    "load_pipeline",
    "sdxl_time_ids",
]
