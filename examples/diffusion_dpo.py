"""Diffusion-DPO with LoRA (or full fine-tuning) on a preference dataset from the Hub or a local folder.

SDXL, LoRA, Pick-a-Pic v2 (ties dropped), on one or more GPUs:

    accelerate launch examples/diffusion_dpo.py \\
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
        examples/diffusion_dpo.py --config examples/configs/diffusion_dpo_sdxl_lora.yaml
    accelerate launch --config_file examples/accelerate_configs/deepspeed_zero2.yaml \\
        examples/diffusion_dpo.py --config examples/configs/diffusion_dpo_sd15_full.yaml

SD 1.5 from a YAML file (every field of DiffusionDPOConfig, plus the model and dataset arguments):

    accelerate launch examples/diffusion_dpo.py --config examples/configs/diffusion_dpo_sd15_lora.yaml

`--model_name_or_path` is a Hub id or a folder written by `pipeline.save_pretrained`; `--dataset_name` a Hub id
or a folder written by `Dataset.save_to_disk`. The dataset may be in TRL's preference format
(`prompt`, `chosen`, `rejected`) or Pick-a-Pic v2's (`caption`, `jpg_0`, `jpg_1`, `label_0`).

The same script is `trl-rpo dpo` (`trl_rpo/scripts/dpo.py`); this file is kept for `accelerate launch
examples/diffusion_dpo.py ...`.
"""

import sys

from trl_rpo.scripts.dpo import ScriptArguments, main, make_parser, run  # noqa: F401  (the script's API)

if __name__ == "__main__":
    sys.exit(run())
