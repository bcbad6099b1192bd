"""Trainers and their configs."""

from ..pipelines import encode_images, encode_prompts, is_sdxl_pipeline, load_pipeline, sdxl_time_ids
from .base import BaseDiffusionTrainer
from .base_config import BaseDiffusionConfig
from .diffusion_dpo_config import DiffusionDPOConfig
from .diffusion_dpo_trainer import DataCollatorForDiffusionPreference, DiffusionDPOTrainer
from .grpo_config import DiffusionGRPOConfig
from .grpo_trainer import DiffusionGRPOTrainer
from .model_config import DiffusionModelConfig, get_peft_config
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
