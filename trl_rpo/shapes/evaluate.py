"""Prompt-image alignment in the shapes world, as a reward function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from .analysis import Observation, analyze
from .world import Scene, parse_prompt

__all__ = ["ATTRIBUTES", "alignment_score", "check_attributes"]

ATTRIBUTES: tuple[str, ...] = ("background", "color", "shape", "count", "position", "exclusive")


def check_attributes(observation: Observation, scene: Scene) -> dict[str, bool]:
    """Which of the scene's `ATTRIBUTES` an observation satisfies ("targets" are objects of its color and shape).

    - background: the background is the scene's background color;
    - color: some object has the scene's color;
    - shape: some object has the scene's shape;
    - count: there are exactly `scene.count` targets;
    - position: there is at least one target and every target's centroid is in the scene's region;
    - exclusive: there is no object other than the targets.
    """
    objects = observation.objects
    targets = [o for o in objects if o.color == scene.color and o.shape == scene.shape]
    return {
        "background": observation.background == scene.background,
        "color": any(o.color == scene.color for o in objects),
        "shape": any(o.shape == scene.shape for o in objects),
        "count": len(targets) == scene.count,
        "position": bool(targets) and all(o.position == scene.position for o in targets),
        "exclusive": len(targets) == len(objects),
    }


def alignment_score(images: Sequence[Image.Image], prompts: Sequence[str], **kwargs: Any) -> list[float]:
    """Per image, the fraction of its prompt's six `ATTRIBUTES` that the image satisfies (see `check_attributes`).

    1.0 on `render(prompt)`; 0.0 when nothing matches. Follows the reward convention
    `f(images, prompts, **kwargs) -> list[float]` (extra keyword arguments are ignored), so trainers log it as
    `rewards/alignment_score/...`.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    scores = []
    for image, prompt in zip(images, prompts):
        checks = check_attributes(analyze(image), parse_prompt(prompt))
        scores.append(sum(checks.values()) / len(checks))
    return scores
