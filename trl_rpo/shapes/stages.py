"""The stages the demo and its dev sweeps share: building the pair sets, training Diffusion-DPO, scoring models.

`trl_rpo.shapes.demo` runs them on the final prompts; `trl_rpo.shapes.sweep` runs the same functions on the dev
prompts, so a recipe chosen on dev is exactly what the demo trains.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .demo import DemoConfig

__all__ = ["DPO_ARMS", "TAILORPO_PAIRINGS", "arm_config", "build_pair_sets", "build_rpo_pairs", "format_dpo_recipe",
           "online_prompts", "pair_prompts", "parse_dpo_recipe", "train_dpo", "train_dpo_arm", "train_grpo",
           "train_nft", "train_tailorpo"]  # fmt: skip

# The demo's TailorPO rows and their `TailorPOConfig.pairing`: step-wise pairs, and the final-image (D3PO / SPO-style)
# baseline with the same rollouts.
TAILORPO_PAIRINGS = {"tailorpo": "best_worst", "tailorpo_final": "final"}

# The demo's Diffusion-DPO rows: (pair set of `build_pair_sets`, DemoConfig field holding its recipe string). None:
# the RPO arm's own recipe, the `dpo_*` fields with the edit-mask weighting. `dpo_rpo_pairs_reward_recipe` is the
# ablation that separates the data from the recipe: RPO pairs trained exactly as reward-labelled pairs are.
DPO_ARMS: dict[str, tuple[str, str | None]] = {
    "dpo_reward_pairs": ("reward_pairs", "reward_pairs_recipe"),
    "dpo_best_of_4": ("best_of_4_pairs", "best_of_4_recipe"),
    "dpo_rpo_pairs": ("rpo_pairs", None),
    "dpo_rpo_pairs_reward_recipe": ("rpo_pairs", "reward_pairs_recipe"),
}
# A recipe string's keys, the DemoConfig field each sets, and its type; `t` is the timestep range.
_RECIPE_KEYS = {"lr": ("dpo_learning_rate", float), "beta": ("dpo_beta", float), "steps": ("dpo_steps", int)}
# Timestep ranges: all of t (Diffusion-DPO's uniform draw) or the less noisy half only (DiffusionDPOConfig's timestep
# bias, diffusers' SDXL script's: the biased-out timesteps get weight 0).
_TIMESTEP_RANGES = {
    "all": {"dpo_timestep_bias_strategy": "none"},
    "<500": {"dpo_timestep_bias_strategy": "later", "dpo_timestep_bias_portion": 0.5,
             "dpo_timestep_bias_multiplier": 0.0},
}  # fmt: skip


def parse_dpo_recipe(text: str) -> dict[str, Any]:
    """The DemoConfig overrides of a recipe string, e.g. `"lr=2e-3 beta=5000 steps=300 t=all"` (or `t=<500`).

    Every key (lr, beta, steps, t) is required, so a recipe string says the whole recipe.

    Raises:
        ValueError: naming the part of `text` that is not `key=value` with a known key and a valid value.
    """
    out: dict[str, Any] = {}
    for part in str(text).replace(",", " ").split():
        key, sep, value = part.partition("=")
        if not sep or key not in (*_RECIPE_KEYS, "t") or key in out:
            raise ValueError(f"DPO recipe {text!r}: {part!r} is not one of lr=, beta=, steps=, t= (each once)")
        if key == "t":
            if value not in _TIMESTEP_RANGES:
                raise ValueError(f"DPO recipe {text!r}: t must be one of {sorted(_TIMESTEP_RANGES)}, got {value!r}")
            out[key] = value
            continue
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"DPO recipe {text!r}: {key} must be a number, got {value!r}") from None
        if not number > 0 or (key == "steps" and not number.is_integer()):
            raise ValueError(f"DPO recipe {text!r}: {key} must be positive{' and whole' * (key == 'steps')}")
        out[key] = _RECIPE_KEYS[key][1](number)
    missing = [k for k in (*_RECIPE_KEYS, "t") if k not in out]
    if missing:
        raise ValueError(f"DPO recipe {text!r} lacks {missing}: write every key, e.g. 'lr=2e-3 beta=5000 steps=300 "
                         "t=all'")  # fmt: skip
    overrides = {_RECIPE_KEYS[k][0]: out[k] for k in _RECIPE_KEYS}
    return {**overrides, **_TIMESTEP_RANGES[out["t"]]}


def format_dpo_recipe(config: DemoConfig) -> str:
    """The recipe string of `config`'s `dpo_*` fields (the inverse of `parse_dpo_recipe` for its two ranges)."""
    later_half = (config.dpo_timestep_bias_strategy, config.dpo_timestep_bias_portion,
                  config.dpo_timestep_bias_multiplier) == ("later", 0.5, 0.0)  # fmt: skip
    if config.dpo_timestep_bias_strategy != "none" and not later_half:
        raise ValueError("format_dpo_recipe: the timestep bias is neither 'all' nor '<500'")
    return (f"lr={config.dpo_learning_rate:g} beta={config.dpo_beta:g} steps={config.dpo_steps} "
            f"t={'<500' if later_half else 'all'}")  # fmt: skip


def arm_config(config: DemoConfig, method: str) -> DemoConfig:
    """The DemoConfig a Diffusion-DPO row trains with: the RPO arm's own, or its recipe string with no mask."""
    if method not in DPO_ARMS:
        raise ValueError(f"{method!r} is not a Diffusion-DPO row; expected one of {list(DPO_ARMS)}")
    field = DPO_ARMS[method][1]
    if field is None:
        return config
    return dataclasses.replace(config, **parse_dpo_recipe(getattr(config, field)), mask_weight_outside=1.0)


def _quiet_libraries() -> None:
    import datasets
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def _lora_config(r: int):
    from ..trainer import DiffusionModelConfig, get_peft_config

    # The command line's LoRA defaults (attention projections, alpha = r), as `trl-rpo dpo --use_peft` builds them.
    return get_peft_config(DiffusionModelConfig(use_peft=True, lora_r=r, lora_alpha=r))


def _curve(log_history: list[dict[str, float]], key: str) -> list[tuple[float, float]]:
    return [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]


def _sampling(config: DemoConfig, guidance_scale: float | None = None) -> dict[str, Any]:
    guidance = config.guidance_scale if guidance_scale is None else float(guidance_scale)
    return {"num_inference_steps": config.num_inference_steps, "guidance_scale": guidance}


# The online rows of the demo and the study: rollouts and evaluation images at `online_guidance_scale` when it is set.
ONLINE_ROWS = ("tailorpo", "tailorpo_final", "grpo", "nft")


# The fields an online row may set for itself over the shared online ones (None: the shared value).
_OWN_ONLINE_FIELDS = {"nft": {"nft_lora": "online_lora", "nft_guidance_scale": "online_guidance_scale",
                              "nft_prompt_split": "online_prompt_split"}}  # fmt: skip


def row_config(config: DemoConfig, method: str) -> DemoConfig:
    """`config` as the row `method` trains and is sampled with: its own operating point (`nft_lora`,
    `nft_guidance_scale`, `nft_prompt_split` for DiffusionNFT) in place of the shared online fields, where set."""
    own = {shared: getattr(config, name) for name, shared in _OWN_ONLINE_FIELDS.get(method, {}).items()
           if getattr(config, name) is not None}  # fmt: skip
    return dataclasses.replace(config, **own) if own else config


def online_guidance(config: DemoConfig) -> float:
    """The guidance of the online rows' rollouts and evaluation images: `online_guidance_scale`, else the demo's."""
    return config.guidance_scale if config.online_guidance_scale is None else float(config.online_guidance_scale)


def base_at(guidance: float) -> str:
    """The name the base sampled at `guidance` is scored under, `base@G` (`trl_rpo.shapes.study.base_guidance`
    parses it back)."""
    return f"base@{guidance:g}"


def same_guidance_base(config: DemoConfig, method: str | None = None) -> str | None:
    """The name the base is scored under when sampled as the online rows are (or the online row `method`, with its
    own operating point), `base@G` (the study's name), if their guidance (`online_guidance_scale`) differs from the
    demo's; None if it does not. An online row's gain against it is the training's share, without what the change
    of guidance alone gives."""
    guidance = online_guidance(row_config(config, method) if method else config)
    return None if guidance == config.guidance_scale else base_at(guidance)


def evaluation_guidance(config: DemoConfig, method: str) -> float | None:
    """The guidance a row's trained model is sampled at for scoring, None for the demo's own: a CFG-free online
    row's images are sampled as its rollouts were (the demo and the study both ask here)."""
    return row_config(config, method).online_guidance_scale if method in ONLINE_ROWS else None


def _common_args(config: DemoConfig, output_dir: Path, name: str) -> dict[str, Any]:
    return dict(output_dir=str(output_dir / "runs" / name), report_to=[], save_strategy="no", disable_tqdm=True,
                seed=config.seed, lr_scheduler_type="constant", logging_steps=1)  # fmt: skip


def pair_prompts(config: DemoConfig) -> list[str]:
    """The train prompts of the pair sets: RPO edits one image of each, reward labelling uses the first half."""
    from .world import prompts as shape_prompts

    return shape_prompts(config.image_budget, seed=config.seed, split="train")


def build_rpo_pairs(config: DemoConfig, base, prompts: list[str], output_dir: Path):
    """RPO pairs from `prompts` (one image each): critic, editor, base-model refinement, reward-margin verifier."""
    from ..data import Img2ImgRefiner, RewardMarginVerifier, RichPreferenceConfig, RichPreferenceDataBuilder
    from .critic import Critic
    from .editor import Editor
    from .evaluate import alignment_score

    refiner = None
    if config.refine_strength > 0:
        refiner = Img2ImgRefiner(base, strength=config.refine_strength, seed=config.seed, batch_size=64,
                                 mask_dilation=2 / 32, **_sampling(config))  # fmt: skip
    builder = RichPreferenceDataBuilder(
        generator=base,
        critic=Critic(),
        editor=Editor(),
        verifier=RewardMarginVerifier(alignment_score),
        refiner=refiner,
        args=RichPreferenceConfig(output_dir=str(output_dir), images_per_prompt=1, batch_size=64, seed=config.seed,
                                  disable_tqdm=True, **_sampling(config)),  # fmt: skip
    )
    return builder.build(prompts), builder


def build_pair_sets(config: DemoConfig, base, output_dir: Path) -> dict[str, Any]:
    """The demo's three pair sets for the same image budget, with what each cost.

    RPO pairs: one image for each of `pair_prompts(config)`, critiqued, edited, refined and verified. Reward-
    labelled pairs: two images for each of the first half of those prompts, the better one chosen; best-of-4
    pairs: four images for each of the first quarter, best vs worst (the stronger reward-labelled baseline). Each
    renders `image_budget` images. (Labelling the very same images, 256 scenes x 2, was tried on dev and lost: RPO
    pairs from half as many scenes, masked DPO over three training seeds -0.013 against +0.018; docs/shapes.md.)
    """
    from ..data import build_reward_pairs
    from .evaluate import alignment_score

    prompts = pair_prompts(config)
    start = time.perf_counter()
    rpo_pairs, builder = build_rpo_pairs(config, base, prompts, output_dir / "rpo_pairs")
    middle = time.perf_counter()
    reward_pairs, reward_counts = build_reward_pairs(base, prompts[: config.image_budget // 2], alignment_score,
                                                     images_per_prompt=2, seed=config.seed, batch_size=64,
                                                     **_sampling(config))  # fmt: skip
    reward_pairs.save_to_disk(str(output_dir / "reward_pairs"))
    third = time.perf_counter()
    best_of_4, best_of_4_counts = build_reward_pairs(base, prompts[: config.image_budget // 4], alignment_score,
                                                     images_per_prompt=4, seed=config.seed, batch_size=64,
                                                     **_sampling(config))  # fmt: skip
    best_of_4.save_to_disk(str(output_dir / "best_of_4_pairs"))
    return {"rpo_pairs": rpo_pairs, "builder": builder, "reward_pairs": reward_pairs, "reward_counts": reward_counts,
            "best_of_4_pairs": best_of_4, "best_of_4_counts": best_of_4_counts, "images": len(prompts),
            "seconds": {"rpo_pairs": middle - start, "reward_pairs": third - middle,
                        "best_of_4_pairs": time.perf_counter() - third}}  # fmt: skip


def train_dpo(config: DemoConfig, pairs, output_dir: Path, name: str, **overrides: Any):
    """A `DiffusionDPOTrainer` run on `pairs` with the demo's recipe (fields overridable); returns the trainer."""
    from ..data.formats import MASK_COLUMN
    from ..trainer import DiffusionDPOConfig, DiffusionDPOTrainer
    from .model import load_pipeline

    recipe = {"learning_rate": config.dpo_learning_rate, "beta": config.dpo_beta, "max_steps": config.dpo_steps,
              "use_lora": config.dpo_use_lora, "loss_type": "sigmoid", **overrides}  # fmt: skip
    losses = {"loss_type": recipe["loss_type"]}
    if recipe["loss_type"] == "sigmoid" and config.dpo_sft_weight > 0:  # TRL's multi-loss form, e.g. sigmoid + sft
        losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, config.dpo_sft_weight]}
    masked = MASK_COLUMN in pairs.column_names and config.mask_weight_outside != 1.0  # edit masks weight the loss
    columns = ["prompt", "chosen", "rejected", *([MASK_COLUMN] if masked else [])]
    trainer = DiffusionDPOTrainer(
        model=load_pipeline(config.model),
        args=DiffusionDPOConfig(
            max_steps=recipe["max_steps"], per_device_train_batch_size=min(config.dpo_batch_size, len(pairs)),
            learning_rate=recipe["learning_rate"], beta=recipe["beta"], **losses,
            mask_weight_outside=config.mask_weight_outside if masked else 1.0, precompute_latents=True,
            timestep_bias_strategy=config.dpo_timestep_bias_strategy,
            timestep_bias_portion=config.dpo_timestep_bias_portion,
            timestep_bias_multiplier=config.dpo_timestep_bias_multiplier,
            **_common_args(config, output_dir, name),
        ),
        train_dataset=pairs.select_columns(columns),
        peft_config=_lora_config(config.lora_r) if recipe["use_lora"] else None,
    )  # fmt: skip
    return _train_and_save(trainer)


def train_dpo_arm(config: DemoConfig, pair_sets: dict[str, Any], output_dir: Path, method: str,
                  name: str | None = None):  # fmt: skip
    """Train one of the demo's Diffusion-DPO rows (`DPO_ARMS`) on its pair set with its recipe, in `runs/NAME`
    (default: the method's name).

    Returns the trainer, or None when the pair set is empty (the row then reports the base model).
    """
    pairs = pair_sets[DPO_ARMS[method][0]] if method in DPO_ARMS else None
    if pairs is None:
        raise ValueError(f"{method!r} is not a Diffusion-DPO row; expected one of {list(DPO_ARMS)}")
    if len(pairs) == 0:
        return None
    return train_dpo(arm_config(config, method), pairs, output_dir, name or method)


def online_prompts(config: DemoConfig):
    """The online rows' rollout prompts: every scene of `config.online_prompt_split` ("train" by default), in a
    seeded order, as a `datasets.Dataset`."""
    from datasets import Dataset

    from .world import SPLIT_SIZES
    from .world import prompts as shape_prompts

    split = config.online_prompt_split
    return Dataset.from_dict({"prompt": shape_prompts(SPLIT_SIZES[split], seed=config.seed, split=split)})


def _online_peft_config(config: DemoConfig):
    """The online rows' LoRA (rank `lora_r`), or None to train the whole UNet (`online_lora=False`)."""
    return _lora_config(config.lora_r) if config.online_lora else None


def online_rewards(config: DemoConfig, method: str) -> dict[str, Any]:
    """`reward_funcs` / `reward_weights` of an online trainer ("tailorpo", "grpo" or "nft"): its `<method>_reward`,
    and `alignment_score` at weight 0 beside a graded reward, so every run logs its rollouts' alignment_score."""
    from . import evaluate

    name = getattr(config, f"{method}_reward")
    if name == "alignment_score":
        return {"reward_funcs": evaluate.alignment_score}
    return {"reward_funcs": [getattr(evaluate, name), evaluate.alignment_score], "reward_weights": [1.0, 0.0]}


def train_tailorpo(config: DemoConfig, output_dir: Path, name: str, pairing: str = "best_worst"):
    """A `TailorPOTrainer` run with `config.tailorpo_reward` as the step-wise reward and the demo's recipe; returns it.

    `pairing="final"` is the final-image (D3PO / SPO-style) baseline with the same rollouts.
    """
    return _train_and_save(tailorpo_trainer(config, output_dir, name, pairing))


def tailorpo_trainer(config: DemoConfig, output_dir: Path, name: str, pairing: str = "best_worst"):
    """The demo's `TailorPOTrainer` (its reward, recipe, prompts and LoRA), not yet trained."""
    from ..trainer import TailorPOConfig, TailorPOTrainer
    from .model import load_pipeline

    return TailorPOTrainer(
        model=load_pipeline(config.model),
        **online_rewards(config, "tailorpo"),
        args=TailorPOConfig(
            max_steps=config.tailorpo_steps, per_device_train_batch_size=config.tailorpo_batch_size,
            learning_rate=config.tailorpo_learning_rate, num_inference_steps=config.tailorpo_num_inference_steps,
            guidance_scale=online_guidance(config), num_candidates=config.num_candidates, pairing=pairing,
            **({"step_reward_estimate": config.tailorpo_step_reward_estimate} if pairing != "final" else {}),
            **({"timestep_selection": "window", "timestep_window_start": config.tailorpo_window_start,
                "timestep_window_end": config.tailorpo_window_end}
               if config.tailorpo_window_start > 0.0 or config.tailorpo_window_end < 1.0 else {}),
            **_common_args(config, output_dir, name),
        ),
        train_dataset=online_prompts(config),
        peft_config=_online_peft_config(config),
    )  # fmt: skip


def train_grpo(config: DemoConfig, output_dir: Path, name: str = "grpo"):
    """A `DiffusionGRPOTrainer` run, the online baseline: its reward (`grpo_reward`), TailorPO's steps and DDIM
    steps, groups of `grpo_num_generations` images, `grpo_batch_size` images per step, its own learning rate and
    trained steps.
    """
    from ..trainer import DiffusionGRPOConfig, DiffusionGRPOTrainer
    from .model import load_pipeline

    trainer = DiffusionGRPOTrainer(
        model=load_pipeline(config.model),
        **online_rewards(config, "grpo"),
        args=DiffusionGRPOConfig(
            max_steps=config.tailorpo_steps, num_generations=config.grpo_num_generations,
            per_device_train_batch_size=config.grpo_batch_size, learning_rate=config.grpo_learning_rate,
            num_inference_steps=config.tailorpo_num_inference_steps, guidance_scale=online_guidance(config),
            timestep_fraction=config.grpo_timestep_fraction, timestep_sampling=config.grpo_timestep_sampling,
            **_common_args(config, output_dir, name),
        ),
        train_dataset=online_prompts(config),
        peft_config=_online_peft_config(config),
    )  # fmt: skip
    return _train_and_save(trainer)


def train_nft(config: DemoConfig, output_dir: Path, name: str = "nft"):
    """A `DiffusionNFTTrainer` run: GRPO's group size and rollout steps, deterministic (ODE) rollouts, its own
    reward, steps, learning rate, images per step, trained timesteps, steps per rollout and old-policy decay
    (`nft_reward`, `nft_steps`, `nft_learning_rate`, `nft_batch_size`, `nft_timestep_fraction`,
    `nft_num_iterations`, `nft_old_policy_decay`, `nft_guided_loss`)."""
    from ..trainer import DiffusionNFTConfig, DiffusionNFTTrainer
    from .model import load_pipeline

    config = row_config(config, "nft")  # its own LoRA or whole UNet, guidance and rollout split, where set
    trainer = DiffusionNFTTrainer(
        model=load_pipeline(config.model),
        **online_rewards(config, "nft"),
        args=DiffusionNFTConfig(
            max_steps=config.nft_steps, num_generations=config.grpo_num_generations,
            per_device_train_batch_size=config.nft_batch_size, learning_rate=config.nft_learning_rate,
            num_inference_steps=config.tailorpo_num_inference_steps, guidance_scale=online_guidance(config),
            timestep_fraction=config.nft_timestep_fraction, num_iterations=config.nft_num_iterations,
            old_policy_decay=config.nft_old_policy_decay, guided_loss=config.nft_guided_loss,
            **_common_args(config, output_dir, name),
        ),
        train_dataset=online_prompts(config),
        peft_config=_online_peft_config(config),
    )  # fmt: skip
    return _train_and_save(trainer)


def _train_and_save(trainer):
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the demo's own bar and table report progress
    trainer.train()
    trainer.save_model()  # runs/NAME: the LoRA (or UNet) that `trl-rpo eval --model runs/NAME --base shapes` loads
    trainer.pipeline.unet.eval()
    return trainer


def prepare_for_scoring(pipeline) -> None:
    """Make a pipeline render fast for scoring: no progress bar, channels-last UNet, a trained LoRA folded in.

    Only for models that are already saved (or never will be): safetensors refuses the non-contiguous weights.
    """
    import torch

    pipeline.set_progress_bar_config(disable=True)
    # Channels-last convolutions render about 12% faster on CPU, with the same images.
    pipeline.unet.to(memory_format=torch.channels_last)
    if getattr(pipeline.unet, "peft_config", None):
        # A trained LoRA, saved already: folded into the weights it renders about 10% faster, the images equal
        # to a pixel level or so (diffusers' `fuse_lora`).
        pipeline.unet.fuse_lora()


class _Scorer:
    """Evaluates pipelines on fixed prompt sets and seeds, keeping every image's score for paired comparisons.

    The base is rendered once per set (`evaluate_pipeline`); every other method goes through
    `compare_with_base` against that result, the function behind `trl-rpo eval`, so the demo's gains are what
    the command reports for the same model, prompts and seeds.
    """

    def __init__(self, config: DemoConfig, sets: dict[str, tuple[list[str], tuple[int, ...]]]):
        self.config = config
        self.sets = sets
        self.scores: dict[str, dict[str, list[list[float]]]] = {}  # method -> set -> [seed][prompt]
        self.images: dict[str, list] = {}
        self.judge_bits: dict[str, dict[str, list[list[str]]]] = {}  # method -> set -> [seed][prompt]
        self.base_detector_bits: dict[str, list[list[str]]] = {}  # set -> [seed][prompt], alignment_score's checks
        self._base: dict[str, Any] = {}  # set -> the base's EvaluationResult

    def __call__(self, method: str, pipeline, guidance_scale: float | None = None) -> float:
        """Render and score `pipeline` on every set; returns the seconds. `guidance_scale` samples it at another
        guidance than the config's (a CFG-free online row); it is still paired with the base at the config's."""
        from ..evaluation import compare_with_base, evaluate_pipeline
        from .analysis import analyze
        from .evaluate import alignment_score, check_attributes
        from .judge import attribute_bits, judge_attributes
        from .world import parse_prompt

        start = time.perf_counter()
        prepare_for_scoring(pipeline)
        for name, (prompts, seeds) in self.sets.items():
            # Per-image noise (the default): with one noise per seed, every prompt's image of a seed starts alike,
            # so the images are not independent draws and the paired intervals come out too narrow.
            kwargs = dict(seeds=seeds, batch_size=64, per_image_noise=self.config.per_image_noise,
                          **_sampling(self.config, guidance_scale))  # fmt: skip
            if method == "base":
                if guidance_scale is not None and float(guidance_scale) != self.config.guidance_scale:
                    raise ValueError("the base is scored at the config's guidance; score it at another under "
                                     "another name (e.g. 'base@1')")  # fmt: skip
                result = self._base[name] = evaluate_pipeline(pipeline, prompts, alignment_score, return_images=True,
                                                              **kwargs)  # fmt: skip
            else:
                comparison = compare_with_base(pipeline, self._base[name], prompts, alignment_score, grid_prompts=0,
                                               bootstrap_seed=self.config.seed, **kwargs)  # fmt: skip
                result = comparison.trained_result
            self.scores.setdefault(method, {})[name] = result.scores["alignment_score"]
            # The independent judge (trl_rpo.shapes.judge) on the same images: attribute bits per image.
            self.judge_bits.setdefault(method, {})[name] = [
                [attribute_bits(v) for v in judge_attributes(images, prompts)] for images in result.images
            ]
            if method == "base":
                self.base_detector_bits[name] = [[attribute_bits(check_attributes(analyze(image), parse_prompt(p)))
                                                  for image, p in zip(images, prompts)] for images in result.images]
            if name == "final":
                self.images[method] = result.images[0][: self.config.grid_prompts]
        return time.perf_counter() - start

    def judge_report(self, name: str = "final") -> dict[str, Any]:
        """Both judges side by side on one prompt set (`trl_rpo.shapes.judge.judge_report`)."""
        from .judge import judge_report

        return judge_report(self.scores, self.judge_bits, self.base_detector_bits, name, seed=self.config.seed)

    def mean(self, method: str, name: str) -> float:
        rows = self.scores[method][name]
        return sum(map(sum, rows)) / sum(map(len, rows))

    def compare(self, a: str, b: str, name: str = "final"):
        from ..evaluation import paired_comparison

        return paired_comparison(self.scores[a][name], self.scores[b][name], seed=self.config.seed)

    def per_prompt_gain(self, a: str, b: str, name: str = "final") -> list[float]:
        import numpy as np

        return (np.asarray(self.scores[a][name]) - np.asarray(self.scores[b][name])).mean(axis=0).tolist()
