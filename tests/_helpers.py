"""Small builders shared by the trainer tests."""

from __future__ import annotations

from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_rpo.testing import tiny_lora_config, tiny_preference_dataset, tiny_sd_pipeline, tiny_sdxl_pipeline


def dpo_config(output_dir, **overrides) -> DiffusionDPOConfig:
    defaults = dict(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        learning_rate=1e-3,
        disable_tqdm=True,
        seed=0,
    )
    defaults.update(overrides)
    return DiffusionDPOConfig(**defaults)


def make_trainer(output_dir, sdxl=False, lora=True, pipe=None, dataset=None, prediction_type="epsilon", **overrides):
    if pipe is None:
        pipe = (tiny_sdxl_pipeline if sdxl else tiny_sd_pipeline)(prediction_type=prediction_type)
    return DiffusionDPOTrainer(
        model=pipe,
        args=dpo_config(output_dir, **overrides),
        train_dataset=dataset if dataset is not None else tiny_preference_dataset(8),
        peft_config=tiny_lora_config() if lora else None,
    )
