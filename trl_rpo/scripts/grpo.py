"""GRPO (online RL with group-normalised rewards) for SD 1.5 or SDXL, with the same rewards as `trl-rpo tailorpo`.

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

from ..data.formats import load_prompt_dataset
from ..rewards.remote import RemoteReward
from ..trainer import DiffusionGRPOConfig, DiffusionGRPOTrainer, DiffusionModelConfig, get_peft_config
from .tailorpo import REWARDS, ScriptArguments, build_rewards

__all__ = ["REWARDS", "ScriptArguments", "build_grpo_rewards", "main", "make_parser", "run"]


def build_grpo_rewards(script_args: ScriptArguments) -> list:
    """The reward functions named in `--reward_funcs`: `trl-rpo tailorpo`'s names, or URLs of reward servers."""
    remote = {name for name in script_args.reward_funcs if name.startswith(("http://", "https://"))}
    local = [name for name in script_args.reward_funcs if name not in remote]
    built = iter(build_rewards(_with_rewards(script_args, local)) if local else [])
    return [RemoteReward(name) if name in remote else next(built) for name in script_args.reward_funcs]


def _with_rewards(script_args: ScriptArguments, names: list[str]) -> ScriptArguments:
    from dataclasses import replace

    return replace(script_args, reward_funcs=names)


def main(script_args: ScriptArguments, training_args: DiffusionGRPOConfig, model_args: DiffusionModelConfig) -> None:
    if model_args.model_name_or_path is None:
        raise SystemExit("--model_name_or_path is required (a Hub id or a local pipeline folder)")
    prompts = load_prompt_dataset(
        script_args.prompts_name_or_path, script_args.prompts_split, prompt_column=script_args.prompt_column
    )
    training_args.model_init_kwargs = {**model_args.pipeline_kwargs(), **(training_args.model_init_kwargs or {})}
    trainer = DiffusionGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=build_grpo_rewards(script_args),
        args=training_args,
        train_dataset=prompts,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.prompts_name_or_path)
    trainer.accelerator.end_training()


def make_parser(prog: str | None = None) -> TrlParser:
    """The argument parser of `trl-rpo grpo` (YAML via `--config`)."""
    return TrlParser((ScriptArguments, DiffusionGRPOConfig, DiffusionModelConfig), prog=prog)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` (YAML via `--config`, command line overrides it), then train."""
    main(*make_parser(prog).parse_args_and_config(args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(run())
