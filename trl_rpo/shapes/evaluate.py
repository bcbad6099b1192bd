"""Prompt-image alignment in the shapes world, as a reward function."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from PIL import Image

from .analysis import Observation, analyze, shape_probabilities
from .world import Scene, parse_prompt, region_margin

__all__ = ["ATTRIBUTES", "alignment_score", "check_attributes", "soft_attributes", "soft_alignment_score"]

# The last analyses by image content: a trainer that logs `alignment_score` beside `soft_alignment_score` analyzes
# each image once, not twice (analysis is most of either reward's cost).
_OBSERVATIONS: OrderedDict[tuple, Observation] = OrderedDict()
_OBSERVATIONS_KEPT = 2048


def _observe(image: Image.Image) -> Observation:
    """`analyze(image)`, remembered for the last `_OBSERVATIONS_KEPT` distinct images (keyed by their pixels)."""
    key = (image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
    observation = _OBSERVATIONS.get(key)
    if observation is None:
        observation = _OBSERVATIONS[key] = analyze(image)
        if len(_OBSERVATIONS) > _OBSERVATIONS_KEPT:
            _OBSERVATIONS.popitem(last=False)
    return observation


# Width (normalized units) over which the soft position credit goes from 0.27 to 0.73 across a region's edge.
_POSITION_SOFTNESS = 0.03

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
    return _mean_credit(check_attributes, images, prompts)


def _mean_credit(attributes, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    """Per image, the mean over `attributes(analyze(image), scene)`'s values (checks or credits)."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    scores = []
    for image, prompt in zip(images, prompts):
        values = attributes(_observe(image), parse_prompt(prompt))
        scores.append(sum(values.values()) / len(values))
    return scores


def soft_attributes(observation: Observation, scene: Scene) -> dict[str, float]:
    """A graded `check_attributes`: each of the six `ATTRIBUTES` as a credit in [0, 1] instead of a pass/fail.

    An object o (area a_o) is a target with weight w_o = [color_o = scene color] * p_o(scene shape), where p_o is
    `shape_probabilities` of its mask, and lies in the scene's region with credit
    s_o = sigmoid(`region_margin`(centroid_o) / 0.03):

    - background: [background = scene background] (already near 1 for every model; left binary);
    - color: the share of object area in the scene's color;
    - shape: max_o p_o(scene shape) (some object has the shape);
    - count: max(0, 1 - |sum_o w_o - count| / 2);
    - position: sum_o w_o s_o / sum_o w_o (0 with no target);
    - exclusive: sum_o w_o a_o / sum_o a_o (1 with no object, as `check_attributes`).

    Where `check_attributes` is confident (clean shapes well inside their regions) the two agree; in between, the
    credit moves with the image (an object drifting toward its region, a blob becoming a square), so two images
    rarely tie. That is what a reward for online training needs (`soft_alignment_score`).
    """
    objects = observation.objects
    area = sum(o.area for o in objects)
    in_color = [o.color == scene.color for o in objects]
    p_shape = [shape_probabilities(o.mask)[scene.shape] for o in objects]
    weights = [c * p for c, p in zip(in_color, p_shape)]
    total = sum(weights)
    inside = [1.0 / (1.0 + math.exp(-region_margin(*o.centroid, scene.position) / _POSITION_SOFTNESS))
              for o in objects]  # fmt: skip
    return {
        "background": float(observation.background == scene.background),
        "color": sum(o.area for o, c in zip(objects, in_color) if c) / area if area else 0.0,
        "shape": max(p_shape, default=0.0),
        "count": max(0.0, 1.0 - abs(total - scene.count) / 2.0),
        "position": sum(w * s for w, s in zip(weights, inside)) / total if total > 0 else 0.0,
        "exclusive": sum(w * o.area for w, o in zip(weights, objects)) / area if area else 1.0,
    }


def soft_alignment_score(images: Sequence[Image.Image], prompts: Sequence[str], **kwargs: Any) -> list[float]:
    """Per image, the mean of `soft_attributes`: a graded `alignment_score` for online training (issue 28).

    `alignment_score` counts six pass/fail checks, so two samples of a prompt tie most of the time and a step that
    moves an object toward its region earns nothing until it crosses the edge. This reward gives partial credit for
    each check and ties rarely. Evaluation stays with `alignment_score`; this is a training signal. Same convention
    `f(images, prompts, **kwargs) -> list[float]`.
    """
    return _mean_credit(soft_attributes, images, prompts)
