"""Reward functions: the calling convention, weighting, and the base class of model-based scorers."""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["RewardScorer", "combine_rewards", "images_to_tensor", "reward_name"]

RewardFunc = Callable[..., Sequence[float]]


def reward_name(func: Any) -> str:
    """The name a reward is logged under: its `name` attribute, function name, or class name."""
    name = getattr(func, "name", None) or getattr(func, "__name__", None) or type(func).__name__
    return "reward" if name == "<lambda>" else str(name)


def images_to_tensor(images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    """PIL images (or an `[N, 3, H, W]` tensor) as a float tensor in [0, 1], `[N, 3, H, W]`."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images as a [N, 3, H, W] tensor, got shape {tuple(images.shape)}")
        return images.float()
    arrays = [np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 for image in images]
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images in one reward call must share a size, got {sorted(sizes)}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def combine_rewards(
    funcs: Sequence[RewardFunc],
    weights: Sequence[float],
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    **kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Weighted sum of reward functions, $r(x, c) = \sum_i w_i\, f_i(x, c)$ (TRL GRPOTrainer's convention).

    Each `f(images, prompts, **kwargs)` must return one finite number per image.

    Returns:
        `(total, per_function)`: the weighted total, shape `[N]`, and each function's raw rewards by name
        (names made unique with a suffix when two functions share one).
    """
    if len(funcs) != len(weights):
        raise ValueError(f"got {len(weights)} reward weights for {len(funcs)} reward functions")
    n = len(images)
    total = torch.zeros(n, dtype=torch.float64)
    per_function: dict[str, torch.Tensor] = {}
    for func, weight in zip(funcs, weights):
        name = reward_name(func)
        values = func(images, list(prompts), **kwargs)
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().flatten().tolist()
        values = list(values)
        if len(values) != n:
            raise ValueError(f"reward function {name!r} returned {len(values)} values for {n} images")
        # Any real number (Python, NumPy or 0-d tensor values converted above); bools are labels, not rewards.
        bad = [
            i
            for i, v in enumerate(values)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v))
        ]
        if bad:
            raise ValueError(
                f"reward function {name!r} returned a non-finite or non-numeric value for image {bad[0]}: "
                f"{values[bad[0]]!r} (expected one float per image)"
            )
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64)
        key, suffix = name, 1
        while key in per_function:
            suffix += 1
            key = f"{name}_{suffix}"
        per_function[key] = tensor.float()
        total += weight * tensor
    return total.float(), per_function


class RewardScorer(torch.nn.Module, abc.ABC):
    """Base class of model-based rewards.

    Subclasses implement `score_tensor(images, prompts)`, a differentiable map from images in [0, 1]
    (`[N, 3, H, W]`) to one score each. Calling the scorer follows the reward-function convention
    `scorer(images, prompts, **kwargs) -> list[float]` with PIL images or a tensor, without gradients.
    """

    name: str = "scorer"
    differentiable: bool = True

    @abc.abstractmethod
    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """One score per image, differentiable with respect to `images`."""

    def forward(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.score_tensor(images, prompts)

    @property
    def device(self) -> torch.device:
        """Where the scorer's weights live (CPU for a scorer without parameters or buffers)."""
        for tensor in (*self.parameters(), *self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @torch.no_grad()
    def __call__(self, images, prompts: Sequence[str] | None = None, **kwargs: Any) -> list[float]:  # type: ignore[override]
        pixels = images_to_tensor(images).to(self.device)
        prompts = list(prompts) if prompts is not None else [""] * pixels.shape[0]
        return self.score_tensor(pixels, prompts).float().cpu().tolist()
