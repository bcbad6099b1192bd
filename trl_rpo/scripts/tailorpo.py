"""TailorPO (online step-wise preference optimization) for any registered model family (SD 1.5, SDXL, SD3, FLUX.1,
Qwen-Image, Z-Image, FLUX.2 [klein]) with the LAION aesthetic reward.

SD 1.5, LoRA, aesthetic reward plus a little JPEG compressibility, on one or more GPUs:

    accelerate launch -m trl_rpo.cli tailorpo \\
        --model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --prompts_name_or_path examples/prompts/animals.txt \\
        --reward_funcs aesthetic jpeg_compressibility --reward_weights 1.0 0.1 \\
        --output_dir sd15-tailorpo --use_peft --lora_r 4 --lora_alpha 4 \\
        --num_inference_steps 20 --guidance_scale 5.0 --eta 1.0 --num_candidates 2 \\
        --per_device_train_batch_size 2 --gradient_accumulation_steps 4 \\
        --learning_rate 6e-5 --max_steps 500 --bf16 --activation_checkpointing

Or from a YAML file (every field of TailorPOConfig, plus the model, prompt and reward arguments):

    accelerate launch -m trl_rpo.cli tailorpo --config examples/configs/tailorpo_sd15_aesthetic.yaml

TailorPO-G: add `--reward_guidance_scale 0.1` (needs a differentiable scorer such as `aesthetic`).
A reward served by `trl-rpo serve-reward` in another environment is named by its URL (`--reward_funcs
http://127.0.0.1:8000`, a `RemoteReward`).
The D3PO/SPO-style baseline: `--pairing final`.

Prompts come from a text file (one per line), a `save_to_disk` folder or a Hub dataset (`--prompt_column`
names the column). Rewards are the names below; scorers that need weights load them with `from_pretrained`
from the given ids or local folders (`--aesthetic_clip_model`, `--aesthetic_head`, `--clip_model`,
`--pickscore_model`, `--pickscore_processor`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from trl import TrlParser

from ..rewards.clip import (
    DEFAULT_AESTHETIC_HEAD,
    DEFAULT_AESTHETIC_HEAD_FILE,
    DEFAULT_CLIP,
    DEFAULT_PICKSCORE,
    DEFAULT_PICKSCORE_PROCESSOR,
)
from ..trainer.model_config import DiffusionModelConfig
from ..trainer.tailorpo_config import TailorPOConfig

# The trainer, the scorers and the shapes world load in `main` / `build_rewards`: `--help` needs only the configs.

REWARDS = (
    "aesthetic",
    "clip_score",
    "pickscore",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "shapes_alignment",
)


@dataclass
class ScriptArguments:
    prompts_name_or_path: str = field(
        metadata={"help": "Text file (one prompt per line), `save_to_disk` folder or Hub id of the prompts."}
    )
    prompts_split: str = field(default="train", metadata={"help": "Split of a prompt dataset."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["aesthetic"], metadata={"help": f"Rewards to optimize, among {list(REWARDS)}."}
    )
    aesthetic_clip_model: str = field(default=DEFAULT_CLIP, metadata={"help": "CLIP of the aesthetic scorer."})
    aesthetic_head: str = field(default=DEFAULT_AESTHETIC_HEAD, metadata={"help": "Repo, folder or file of its MLP."})
    aesthetic_head_filename: str = field(default=DEFAULT_AESTHETIC_HEAD_FILE, metadata={"help": "MLP file name."})
    clip_model: str = field(default=DEFAULT_CLIP, metadata={"help": "CLIP of the `clip_score` reward."})
    pickscore_model: str = field(default=DEFAULT_PICKSCORE, metadata={"help": "PickScore model."})
    pickscore_processor: str = field(default=DEFAULT_PICKSCORE_PROCESSOR, metadata={"help": "PickScore processor."})


def build_rewards(script_args: ScriptArguments) -> list:
    """The reward functions named in `--reward_funcs`: names from `REWARDS`, or URLs of `trl-rpo serve-reward`
    servers (each a `RemoteReward`, for scorers that live in another environment)."""
    unknown = [name for name in script_args.reward_funcs if name not in REWARDS and not _is_url(name)]
    if unknown:
        raise SystemExit(f"unknown reward(s) {unknown}; choose among {list(REWARDS)} or give a reward server's URL")
    from ..pipelines import zero3_init_disabled
    from ..rewards import AestheticScorer, CLIPScorer, PickScoreScorer, jpeg_compressibility, jpeg_incompressibility
    from ..rewards.remote import RemoteReward
    from ..shapes.evaluate import alignment_score

    builders = {
        "aesthetic": lambda: AestheticScorer(
            script_args.aesthetic_clip_model, script_args.aesthetic_head, script_args.aesthetic_head_filename
        ),
        "clip_score": lambda: CLIPScorer(script_args.clip_model),
        "pickscore": lambda: PickScoreScorer(script_args.pickscore_model, script_args.pickscore_processor),
        "jpeg_compressibility": lambda: jpeg_compressibility,
        "jpeg_incompressibility": lambda: jpeg_incompressibility,
        "shapes_alignment": lambda: alignment_score,  # the shapes world's evaluator (trl_rpo.shapes)
    }
    # The training config has already switched on transformers' ZeRO-3 loading (`zero3_init_flag`): scorers are
    # frozen and run whole on every process, outside the DeepSpeed engine, so they must not load partitioned.
    with zero3_init_disabled():
        return [RemoteReward(name) if _is_url(name) else builders[name]() for name in script_args.reward_funcs]


def _is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def main(script_args: ScriptArguments, training_args: TailorPOConfig, model_args: DiffusionModelConfig) -> None:
    from ..trainer import TailorPOTrainer

    train_online(TailorPOTrainer, script_args, training_args, model_args)


def train_online(trainer_class: type, script_args: ScriptArguments, training_args, model_args: DiffusionModelConfig):
    """Train an online trainer (`TailorPOTrainer`, `DiffusionGRPOTrainer`) on the prompts with the named rewards,
    save it to `output_dir` and push it when asked: the body of `trl-rpo tailorpo` and `trl-rpo grpo`."""
    if model_args.model_name_or_path is None:
        raise SystemExit("--model_name_or_path is required (a Hub id or a local pipeline folder)")
    from ..data.formats import load_prompt_dataset
    from ..trainer import get_peft_config

    prompts = load_prompt_dataset(
        script_args.prompts_name_or_path, script_args.prompts_split, prompt_column=script_args.prompt_column
    )
    training_args.model_init_kwargs = {**model_args.pipeline_kwargs(), **(training_args.model_init_kwargs or {})}
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        reward_funcs=build_rewards(script_args),
        args=training_args,
        train_dataset=prompts,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.prompts_name_or_path)
    trainer.accelerator.end_training()
    return trainer


def make_parser(prog: str | None = None) -> TrlParser:
    """The argument parser of `trl-rpo tailorpo` and `examples/tailorpo.py` (YAML via `--config`)."""
    return TrlParser((ScriptArguments, TailorPOConfig, DiffusionModelConfig), prog=prog)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` (YAML via `--config`, command line overrides it), then train."""
    main(*make_parser(prog).parse_args_and_config(args=argv))
    return 0


if __name__ == "__main__":
    sys.exit(run())
