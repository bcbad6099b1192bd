"""Diffusion-DPO with LoRA (or full fine-tuning) on a preference dataset from the Hub or a local folder.

SDXL, LoRA, Pick-a-Pic v2 (ties dropped), on one or more GPUs:

    accelerate launch -m trl_rpo.cli dpo \\
        --model_name_or_path stabilityai/stable-diffusion-xl-base-1.0 \\
        --vae_model_name_or_path madebyollin/sdxl-vae-fp16-fix \\
        --dataset_name yuvalkirstain/pickapic_v2 --dataset_train_split train \\
        --output_dir sdxl-dpo-lora --use_peft --lora_r 16 --lora_alpha 16 \\
        --per_device_train_batch_size 1 --gradient_accumulation_steps 64 \\
        --learning_rate 1e-5 --beta 5000 --max_steps 2000 --bf16 \\
        --activation_checkpointing --precompute_latents \\
        --validation_prompts "a photo of a cat" "a red car in the snow" --validation_steps 200

SDXL with LoRA under DeepSpeed ZeRO-2, and SD 1.5 full fine-tuning, from their YAML files:

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml \\
        -m trl_rpo.cli dpo --config examples/configs/diffusion_dpo_sdxl_lora.yaml
    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml \\
        -m trl_rpo.cli dpo --config examples/configs/diffusion_dpo_sd15_full.yaml

SD 1.5 from a YAML file (every field of DiffusionDPOConfig, plus the model and dataset arguments):

    accelerate launch -m trl_rpo.cli dpo --config examples/configs/diffusion_dpo_sd15_lora.yaml

Qwen-Image, Z-Image-Turbo and FLUX.2 [klein] 4B with LoRA (the memory guide's settings, docs/memory.md):

    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero3.yaml \\
        -m trl_rpo.cli dpo --config examples/configs/diffusion_dpo_qwen_image_lora.yaml
    accelerate launch -m trl_rpo.cli dpo --config examples/configs/diffusion_dpo_z_image_turbo_lora.yaml
    accelerate launch -m trl_rpo.cli dpo --config examples/configs/diffusion_dpo_flux2_klein_lora.yaml

`--model_name_or_path` is a Hub id or a folder written by `pipeline.save_pretrained` of any registered model
family (SD 1.5, SDXL, SD3 / SD3.5, FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]); `--dataset_name` a Hub id
or a folder written by `Dataset.save_to_disk`. The dataset may be in TRL's preference format
(`prompt`, `chosen`, `rejected`) or Pick-a-Pic v2's (`caption`, `jpg_0`, `jpg_1`, `label_0`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from trl import TrlParser

from ..trainer.diffusion_dpo_config import DiffusionDPOConfig
from ..trainer.model_config import DiffusionModelConfig

# The trainer and the dataset loader load in `main`: `--help` needs only the configs.


@dataclass
class ScriptArguments:
    dataset_name: str = field(metadata={"help": "Hub id or local `save_to_disk` folder of the preference dataset."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(default=None, metadata={"help": "Split to evaluate on (optional)."})


def main(script_args: ScriptArguments, training_args: DiffusionDPOConfig, model_args: DiffusionModelConfig) -> None:
    if model_args.model_name_or_path is None:
        raise SystemExit("--model_name_or_path is required (a Hub id or a local pipeline folder)")
    from ..data.formats import load_preference_dataset
    from ..trainer import DiffusionDPOTrainer, get_peft_config

    train_dataset = load_preference_dataset(script_args.dataset_name, script_args.dataset_train_split)
    eval_dataset = (
        load_preference_dataset(script_args.dataset_name, script_args.dataset_test_split)
        if script_args.dataset_test_split
        else None
    )
    training_args.model_init_kwargs = {**model_args.pipeline_kwargs(), **(training_args.model_init_kwargs or {})}

    trainer = DiffusionDPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if eval_dataset is not None:
        trainer.log_metrics("eval", trainer.evaluate())
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.end_training()


def make_parser(prog: str | None = None) -> TrlParser:
    """The argument parser of `trl-rpo dpo` and `examples/diffusion_dpo.py` (YAML via `--config`)."""
    return TrlParser((ScriptArguments, DiffusionDPOConfig, DiffusionModelConfig), prog=prog)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` (YAML via `--config`, command line overrides it), then train."""
    main(*make_parser(prog).parse_args_and_config(args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(run())
