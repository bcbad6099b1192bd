"""DiffusionNFT (online RL on the forward process) for SD 1.5, SDXL, SD3 / SD3.5, FLUX.1, Qwen-Image, Z-Image or
FLUX.2 [klein].

SD 1.5, LoRA, the LAION aesthetic reward, 4 images per prompt, deterministic (ODE) rollouts, on one or more GPUs:

    accelerate launch examples/nft.py \
        --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --prompts_name_or_path examples/prompts/animals.txt --reward_funcs aesthetic \
        --output_dir sd15-nft --use_peft --lora_r 4 --lora_alpha 4 \
        --num_generations 4 --per_device_train_batch_size 8 --num_inference_steps 10 --guidance_scale 4.5 \
        --nft_beta 1.0 --learning_rate 3e-4 --max_steps 500 --bf16 --activation_checkpointing

Or from a YAML file: `accelerate launch examples/nft.py --config examples/configs/nft_sd15_aesthetic.yaml`.

Rewards are `trl-rpo tailorpo`'s names, or the URL of a reward server started with `trl-rpo serve-reward`
(`--reward_funcs http://127.0.0.1:8000`). The same script is `trl-rpo nft` (`trl_rpo/scripts/nft.py`).
"""

import sys

from trl_rpo.scripts.nft import ScriptArguments, main, make_parser, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(run())
