"""TailorPO (online step-wise preference optimization) for any registered model family (SD 1.5, SDXL, SD3, FLUX.1,
Qwen-Image, Z-Image, FLUX.2 [klein]) with the LAION aesthetic reward.

SD 1.5, LoRA, aesthetic reward plus a little JPEG compressibility, on one or more GPUs:

    accelerate launch examples/tailorpo.py \\
        --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --prompts_name_or_path examples/prompts/animals.txt \\
        --reward_funcs aesthetic jpeg_compressibility --reward_weights 1.0 0.1 \\
        --output_dir sd15-tailorpo --use_peft --lora_r 4 --lora_alpha 4 \\
        --num_inference_steps 20 --guidance_scale 5.0 --eta 1.0 --num_candidates 2 \\
        --per_device_train_batch_size 2 --gradient_accumulation_steps 4 \\
        --learning_rate 6e-5 --max_steps 500 --bf16 --activation_checkpointing

Or from a YAML file (every field of TailorPOConfig, plus the model, prompt and reward arguments):

    accelerate launch examples/tailorpo.py --config examples/configs/tailorpo_sd15_aesthetic.yaml

TailorPO-G: add `--reward_guidance_scale 0.1` (needs a differentiable scorer such as `aesthetic`).
The D3PO/SPO-style baseline: `--pairing final`.

Prompts come from a text file (one per line), a `save_to_disk` folder or a Hub dataset (`--prompt_column`
names the column). Rewards are the names below; scorers that need weights load them with `from_pretrained`
from the given ids or local folders (`--aesthetic_clip_model`, `--aesthetic_head`, `--clip_model`,
`--pickscore_model`, `--pickscore_processor`).

The same script is `trl-rpo tailorpo` (`trl_rpo/scripts/tailorpo.py`); this file is kept for `accelerate launch
examples/tailorpo.py ...`.
"""

import sys

from trl_rpo.scripts.tailorpo import ScriptArguments, build_rewards, main, make_parser, run  # noqa: F401  (the script's API)

if __name__ == "__main__":
    sys.exit(run())
