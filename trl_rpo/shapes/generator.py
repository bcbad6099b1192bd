"""The shapes world's generator stage: renders prompts with deliberate mistakes (the builder's generator protocol)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

from PIL import Image

from .render import render
from .world import BACKGROUNDS, COUNTS, PALETTE, POSITIONS, SHAPES, parse_prompt

__all__ = ["ShapesGenerator"]


class ShapesGenerator:
    """A shapes-world generator that makes deliberate mistakes: an offline stand-in for a text-to-image model.

    With probability `mistake_rate` (seeded per image) one attribute of the prompt's scene (shape, color, count,
    position or background) is changed before rendering, so `trl_rpo.shapes.Critic` has something to criticize.
    """

    name = "shapes_generator"

    def __init__(self, mistake_rate: float = 0.75, size: int = 64):
        if not 0.0 <= mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {mistake_rate}")
        self.mistake_rate, self.size = mistake_rate, size

    def __repr__(self) -> str:
        return f"ShapesGenerator(mistake_rate={self.mistake_rate}, size={self.size})"

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        choices = {
            "shape": SHAPES,
            "color": tuple(PALETTE),
            "count": COUNTS,
            "position": POSITIONS,
            "background": tuple(BACKGROUNDS),
        }
        images = []
        for prompt, seed in zip(prompts, seeds):
            rng = random.Random(int(seed))
            scene = parse_prompt(prompt)
            if rng.random() < self.mistake_rate:
                attribute = rng.choice(sorted(choices))
                wrong = rng.choice([v for v in choices[attribute] if v != getattr(scene, attribute)])
                scene = dataclasses.replace(scene, **{attribute: wrong})
            images.append(render(scene, size=self.size, seed=int(seed)))
        return images
