"""GRPO (online RL with group-normalised rewards) for any registered model family (SD 1.5, SDXL, SD3, FLUX.1,
Qwen-Image, Z-Image, FLUX.2 [klein]).

SD 1.5, LoRA, the LAION aesthetic reward, 4 images per prompt, on one or more GPUs:

    accelerate launch examples/grpo.py \
        --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --prompts_name_or_path examples/prompts/animals.txt --reward_funcs aesthetic \
        --output_dir sd15-grpo --use_peft --lora_r 4 --lora_alpha 4 \
        --num_generations 4 --per_device_train_batch_size 8 --num_inference_steps 10 --guidance_scale 4.5 \
        --timestep_fraction 0.5 --learning_rate 3e-4 --max_steps 500 --bf16 --activation_checkpointing

Or from a YAML file: `accelerate launch examples/grpo.py --config examples/configs/grpo_sd15_aesthetic.yaml`.

Rewards are `trl-rpo tailorpo`'s names, or the URL of a reward server started with `trl-rpo serve-reward` in
another environment (`--reward_funcs http://127.0.0.1:8000`; see examples/remote_reward.py).
The same script is `trl-rpo grpo` (`trl_rpo/scripts/grpo.py`).
"""

import sys

from trl_rpo.scripts.grpo import ScriptArguments, build_grpo_rewards, main, make_parser, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(run())
