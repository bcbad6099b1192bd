"""DiffusionNFT (online RL on the forward process) for SD 1.5, SDXL, SD3 / SD3.5, FLUX.1, Qwen-Image, Z-Image or
FLUX.2 [klein] (e.g. `examples/configs/nft_z_image_turbo_aesthetic.yaml`), with the same rewards as `trl-rpo tailorpo`
and `trl-rpo grpo`.

SD 1.5, LoRA, the LAION aesthetic reward, 4 images per prompt, deterministic (ODE) rollouts:

    accelerate launch -m trl_rpo.cli nft \
        --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --prompts_name_or_path examples/prompts/animals.txt \
        --reward_funcs aesthetic --output_dir sd15-nft --use_peft --lora_r 4 --lora_alpha 4 \
        --num_generations 4 --per_device_train_batch_size 8 --num_inference_steps 10 --guidance_scale 4.5 \
        --nft_beta 1.0 --learning_rate 3e-4 --max_steps 500 --bf16 --activation_checkpointing

Or from a YAML file: `trl-rpo nft --config examples/configs/nft_sd15_aesthetic.yaml`.
"""

from __future__ import annotations

import sys

from trl import TrlParser

from ..trainer.model_config import DiffusionModelConfig
from ..trainer.nft_config import DiffusionNFTConfig
from .tailorpo import REWARDS, ScriptArguments, train_online

__all__ = ["REWARDS", "ScriptArguments", "main", "make_parser", "run"]


def main(script_args: ScriptArguments, training_args: DiffusionNFTConfig, model_args: DiffusionModelConfig) -> None:
    from ..trainer import DiffusionNFTTrainer

    train_online(DiffusionNFTTrainer, script_args, training_args, model_args)


def make_parser(prog: str | None = None) -> TrlParser:
    """The argument parser of `trl-rpo nft` (YAML via `--config`)."""
    return TrlParser((ScriptArguments, DiffusionNFTConfig, DiffusionModelConfig), prog=prog)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` (YAML via `--config`, command line overrides it), then train."""
    main(*make_parser(prog).parse_args_and_config(args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(run())
