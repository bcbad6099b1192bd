"""Reward-labelled preference pairs (the Diffusion-DPO / Pick-a-Pic recipe without humans).

Each prompt gets `images_per_prompt` samples with their own seeds; a reward model scores them and the best and
worst become `chosen` and `rejected` (`trl_rpo.pairing.rank_pairs`, the same ranking TailorPO uses). This is the
baseline that RPO's critic-and-edit pairs are compared with at an equal image budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature

from ..pairing import rank_pairs
from ..rewards import combine_rewards

__all__ = ["REWARD_PAIR_FEATURES", "build_reward_pairs"]

REWARD_PAIR_FEATURES = Features(
    {
        "prompt": Value("string"),
        "chosen": ImageFeature(),
        "rejected": ImageFeature(),
        "chosen_score": Value("float64"),
        "rejected_score": Value("float64"),
        "seed": Value("int64"),
    }
)


def build_reward_pairs(
    generator: Any,
    prompts: Sequence[str],
    reward_funcs: Callable | Sequence[Callable],
    images_per_prompt: int = 2,
    reward_weights: Sequence[float] | None = None,
    tie_margin: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    **generator_kwargs: Any,
) -> tuple[Dataset, dict[str, int]]:
    """Generate `images_per_prompt` images per prompt and keep (best, worst) under the weighted reward.

    Args:
        generator: a diffusers text-to-image pipeline (object, Hub id or folder) or any callable
            `generator(prompts, seeds) -> list[PIL.Image]` (the builder's generator protocol).
        prompts: the prompts; prompt `i`'s image `j` uses seed `seed + i * images_per_prompt + j`, as in the builder.
        reward_funcs: reward function(s) `f(images, prompts) -> list[float]`, higher is better.
        tie_margin: prompts whose best and worst differ by at most this carry no preference and are skipped.
        generator_kwargs: `RichPreferenceConfig` fields for a diffusers generator (`num_inference_steps`,
            `guidance_scale`, `resolution`, ...).

    Returns:
        The pairs (`prompt`, `chosen`, `rejected`, their scores and the prompt's first seed), trainable by
        `DiffusionDPOTrainer` as is, and counts `{"prompts", "images", "pairs", "ties"}`.
    """
    from .builder import PipelineGenerator, RichPreferenceConfig, _is_diffusers_pipeline

    if images_per_prompt < 2:
        raise ValueError(f"images_per_prompt must be at least 2 to form a pair, got {images_per_prompt}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    prompts = list(prompts)
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt {i} must be a non-empty string, got {prompt!r}")
    if isinstance(generator, (str, os.PathLike)) or _is_diffusers_pipeline(generator):
        generator = PipelineGenerator(generator, RichPreferenceConfig(**generator_kwargs))
    elif generator_kwargs:
        raise TypeError(f"generator_kwargs {sorted(generator_kwargs)} only apply to a diffusers pipeline generator")
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    weights = [1.0] * len(funcs) if reward_weights is None else list(reward_weights)
    k = images_per_prompt
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat_seeds = [seed + i * k + j for i in range(len(prompts)) for j in range(k)]
    images = []
    for start in range(0, len(flat_prompts), batch_size):
        batch = flat_prompts[start : start + batch_size]
        out = list(generator(batch, flat_seeds[start : start + batch_size]))
        if len(out) != len(batch):
            raise ValueError(f"the generator returned {len(out)} images for {len(batch)} prompts")
        images.extend(out)
    total, _ = combine_rewards(funcs, weights, images, flat_prompts)
    rows: dict[str, list] = {name: [] for name in REWARD_PAIR_FEATURES}
    ties = 0
    for i, prompt in enumerate(prompts):
        scores = torch.as_tensor(total[i * k : (i + 1) * k], dtype=torch.float64)
        pairs, tied = rank_pairs(scores, "best_worst", tie_margin)
        ties += tied
        for best, worst in pairs:
            rows["prompt"].append(prompt)
            rows["chosen"].append(images[i * k + best])
            rows["rejected"].append(images[i * k + worst])
            rows["chosen_score"].append(float(scores[best]))
            rows["rejected_score"].append(float(scores[worst]))
            rows["seed"].append(flat_seeds[i * k])
    counts = {"prompts": len(prompts), "images": len(images), "pairs": len(rows["prompt"]), "ties": ties}
    return Dataset.from_dict(rows, features=REWARD_PAIR_FEATURES), counts
