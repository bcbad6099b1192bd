"""GRPO (online RL with group-normalised rewards) for any registered model family (SD 1.5, SDXL, SD3, FLUX.1,
Qwen-Image, Z-Image, FLUX.2 [klein]; e.g. `examples/configs/grpo_qwen_image_aesthetic.yaml`), with the same rewards
as `trl-rpo tailorpo`.

SD 1.5, LoRA, the LAION aesthetic reward, 4 images per prompt:

    accelerate launch -m trl_rpo.cli grpo \
        --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --prompts_name_or_path examples/prompts/animals.txt \
        --reward_funcs aesthetic --output_dir sd15-grpo --use_peft --lora_r 4 --lora_alpha 4 \
        --num_generations 4 --per_device_train_batch_size 8 --num_inference_steps 10 --guidance_scale 4.5 \
        --timestep_fraction 0.5 --learning_rate 3e-4 --max_steps 500 --bf16 --activation_checkpointing

A reward served by `trl-rpo serve-reward` in another environment is named by its URL:
`--reward_funcs http://127.0.0.1:8000` (a `RemoteReward`, logged as `rewards/remote/...`).
Or from a YAML file: `trl-rpo grpo --config examples/configs/grpo_sd15_aesthetic.yaml`.
"""

from __future__ import annotations

import sys

from trl import TrlParser

from ..trainer.grpo_config import DiffusionGRPOConfig
from ..trainer.model_config import DiffusionModelConfig
from .tailorpo import REWARDS, ScriptArguments, build_rewards, train_online

__all__ = ["REWARDS", "ScriptArguments", "build_grpo_rewards", "main", "make_parser", "run"]

# `trl-rpo tailorpo`'s rewards: its names, or URLs of reward servers.
build_grpo_rewards = build_rewards


def main(script_args: ScriptArguments, training_args: DiffusionGRPOConfig, model_args: DiffusionModelConfig) -> None:
    from ..trainer import DiffusionGRPOTrainer

    train_online(DiffusionGRPOTrainer, script_args, training_args, model_args)


def make_parser(prog: str | None = None) -> TrlParser:
    """The argument parser of `trl-rpo grpo` (YAML via `--config`)."""
    return TrlParser((ScriptArguments, DiffusionGRPOConfig, DiffusionModelConfig), prog=prog)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` (YAML via `--config`, command line overrides it), then train."""
    main(*make_parser(prog).parse_args_and_config(args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(run())
