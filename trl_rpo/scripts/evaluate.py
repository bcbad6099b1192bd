"""`trl-rpo eval`: did training help? A trained model against its base, image for image, with built-in rewards.

The trained model is a folder a trainer saved (a LoRA, a fine-tuned UNet) or a whole pipeline folder; the base is
a Hub id, a pipeline folder or `shapes` (the shapes world's shipped model). Both generate every prompt with the
same seeds, every reward scores both, and the report gives per reward the paired gain (trained minus base) with
its bootstrap confidence interval over prompts, the win rate and a paired t-test (`trl_rpo.evaluation`):

    trl-rpo eval --model sd15-dpo-lora --base stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --prompts prompts.txt --reward_funcs aesthetic clip_score --seeds 0 1 2 --output_dir eval-sd15-dpo

    trl-rpo eval --model outputs/demo/run-1/dpo-rpo --base shapes --prompts shapes:64 \\
        --reward_funcs shapes_alignment --num_inference_steps 20

It writes `report.json` (every number), `grid.png` (base above trained, first prompts, first seed) and prints
one line per reward. Python: `trl_rpo.evaluation.load_trained_pipeline` and `compare_with_base`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rewards.clip import DEFAULT_AESTHETIC_HEAD, DEFAULT_AESTHETIC_HEAD_FILE, DEFAULT_CLIP, DEFAULT_PICKSCORE
from .tailorpo import REWARDS

logger = logging.getLogger(__name__)

__all__ = ["EvalArguments", "build_eval_rewards", "main", "make_parser"]


@dataclass
class EvalArguments:
    """What `trl-rpo eval` compares, on what, and how it scores."""

    model: str = field(
        metadata={"help": "The trained model: a LoRA or UNet folder saved by a trainer, or a pipeline folder."}
    )
    base: str = field(metadata={"help": "The base pipeline: a Hub id, a pipeline folder, or 'shapes'."})
    prompts: str = field(
        metadata={"help": "A .txt file (one prompt per line), a dataset (Hub id or folder), or 'shapes:N'."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["jpeg_compressibility"],
        metadata={"help": f"Built-in rewards {list(REWARDS)} or import paths 'module:attribute'."},
    )
    output_dir: str = field(default="eval", metadata={"help": "Folder for report.json and grid.png."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompts of a dataset."})
    prompt_split: str = field(default="train", metadata={"help": "Split of a prompt dataset (use held-out prompts)."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds: images per prompt."})
    per_image_noise: bool = field(
        default=True,
        metadata={"help": "Each image from its own starting noise (seed x prompt index, both pipelines alike); "
                          "False: one noise per seed, shared by every prompt (not independent draws)."},
    )  # fmt: skip
    num_inference_steps: int = field(default=30, metadata={"help": "Denoising steps of both pipelines."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Classifier-free guidance scale."})
    resolution: int | None = field(default=None, metadata={"help": "Image side in pixels (default: pipeline's)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per pipeline call; does not change results."})
    confidence_level: float = field(default=0.95, metadata={"help": "Of the gain's and win rate's intervals."})
    n_resamples: int = field(default=9999, metadata={"help": "Bootstrap resamples."})
    grid_prompts: int = field(default=6, metadata={"help": "Prompts shown in grid.png (0: no grid)."})
    torch_dtype: str | None = field(default=None, metadata={"help": "dtype to load both models in, e.g. float16."})
    device: str | None = field(default=None, metadata={"help": "Device of both pipelines (default: cuda if any)."})
    aesthetic_clip_model: str = field(default=DEFAULT_CLIP, metadata={"help": "CLIP of the aesthetic reward."})
    aesthetic_head: str = field(default=DEFAULT_AESTHETIC_HEAD, metadata={"help": "Its MLP (repo, folder, file)."})
    aesthetic_head_filename: str = field(default=DEFAULT_AESTHETIC_HEAD_FILE, metadata={"help": "MLP file name."})
    clip_model: str = field(default=DEFAULT_CLIP, metadata={"help": "CLIP of the clip_score reward."})
    pickscore_model: str = field(default=DEFAULT_PICKSCORE, metadata={"help": "PickScore model."})

    def __post_init__(self):
        if not self.reward_funcs:
            raise ValueError("--reward_funcs needs at least one reward")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")
        if not 0 < self.confidence_level < 1:
            raise ValueError(f"confidence_level must be in (0, 1), got {self.confidence_level}")
        for name in ("num_inference_steps", "batch_size", "n_resamples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def build_eval_rewards(args: EvalArguments) -> list:
    """The reward functions named by `--reward_funcs`: built-in names (as in `trl-rpo tailorpo`) or import paths."""
    from ..cli import resolve_stage
    from .tailorpo import ScriptArguments, build_rewards

    builtin = [name for name in args.reward_funcs if name in REWARDS]
    scorer_args = ScriptArguments(
        prompts_name_or_path=args.prompts, reward_funcs=builtin, aesthetic_clip_model=args.aesthetic_clip_model,
        aesthetic_head=args.aesthetic_head, aesthetic_head_filename=args.aesthetic_head_filename,
        clip_model=args.clip_model, pickscore_model=args.pickscore_model,
    )  # fmt: skip
    built = iter(build_rewards(scorer_args))
    return [next(built) if name in REWARDS else resolve_stage(name, "reward") for name in args.reward_funcs]


def _load_base(args: EvalArguments, load_kwargs: dict[str, Any]) -> Any:
    if args.base == "shapes":
        from ..shapes import load_pipeline

        return load_pipeline(torch_dtype=load_kwargs.get("torch_dtype"))
    from ..pipelines import load_pipeline

    return load_pipeline(args.base, load_kwargs)


def main(args: EvalArguments) -> dict[str, Any]:
    """Load both models, compare them, write `report.json` and `grid.png`; returns the report."""
    import torch

    from ..cli import load_prompts
    from ..evaluation import compare_with_base, load_trained_pipeline

    prompts = load_prompts(args.prompts, args.prompt_column, args.prompt_split, args.max_prompts)
    rewards = build_eval_rewards(args)
    load_kwargs: dict[str, Any] = {}
    if args.torch_dtype not in (None, "auto"):
        load_kwargs["torch_dtype"] = getattr(torch, args.torch_dtype)
    base = _load_base(args, load_kwargs)
    trained = load_trained_pipeline(args.model, base, **load_kwargs)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for pipeline in (base, trained):
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
    pipeline_kwargs: dict[str, Any] = {
        "num_inference_steps": args.num_inference_steps,
        "guidance_scale": args.guidance_scale,
        "per_image_noise": args.per_image_noise,
    }
    if args.resolution is not None:
        pipeline_kwargs["height"] = pipeline_kwargs["width"] = args.resolution
    result = compare_with_base(
        trained, base, prompts, rewards, seeds=args.seeds, batch_size=args.batch_size,
        confidence_level=args.confidence_level, n_resamples=args.n_resamples, grid_prompts=args.grid_prompts,
        **pipeline_kwargs,
    )  # fmt: skip
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "base": args.base, "settings": pipeline_kwargs, **result.to_dict()}
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if result.grid is not None:
        result.grid.save(output_dir / "grid.png")
    print(result.summary())
    print(f"report.json{' and grid.png' if result.grid is not None else ''} in {output_dir}")
    return report


def make_parser(prog: str | None = None):
    """The argument parser of `trl-rpo eval` (YAML via `--config`)."""
    from trl import TrlParser

    return TrlParser((EvalArguments,), prog=prog)
