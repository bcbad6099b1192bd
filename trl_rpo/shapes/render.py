"""Deterministic ground-truth drawings of shapes-world scenes (solid colors, no anti-aliasing)."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from .world import BACKGROUNDS, PALETTE, Scene, object_size, parse_prompt, position_of, prompt_text, slot_centers

__all__ = ["Box", "centroid_in_region", "layout", "paint", "render", "shape_mask"]

Box = tuple[int, int, int, int]  # pixel (x0, y0, x1, y1), x1/y1 exclusive

_JITTER = 0.02  # normalized; small enough that the slots stay apart and inside their region
_ATTEMPTS = 8
_REGION_MARGIN = 0.02  # a centroid must stay this far inside its region, so analysis never sits on a border


def shape_mask(shape: str, width: int, height: int | None = None) -> np.ndarray:
    """A boolean `[height, width]` mask of a shape filling its box (triangles point up), without anti-aliasing."""
    height = width if height is None else height
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    x1, y1 = width - 1, height - 1
    if shape == "circle":
        draw.ellipse((0, 0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((0, 0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(x1 / 2, 0), (x1, y1), (0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(x1 / 2, 0), (x1, y1 / 2), (x1 / 2, y1), (0, y1 / 2)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas) > 0


def paint(pixels: np.ndarray, mask: np.ndarray, box: Box, rgb: tuple[int, int, int]) -> None:
    """Paint `rgb` into `pixels` (`[H, W, 3]`, in place) where the box-sized `mask` is set."""
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1][mask] = rgb


def centroid_in_region(mask: np.ndarray, box: Box, size: tuple[int, int], position: str, margin: float) -> bool:
    """Whether the centroid of a mask placed at `box` lies in `position`, at least `margin` inside it."""
    width, height = size
    ys, xs = np.nonzero(mask)
    cx = (box[0] + xs.mean() + 0.5) / width
    cy = (box[1] + ys.mean() + 0.5) / height
    probes = [(cx, cy), (cx - margin, cy), (cx + margin, cy), (cx, cy - margin), (cx, cy + margin)]
    return all(position_of(x, y) == position for x, y in probes)


def _apart(boxes: list[Box]) -> bool:
    # At least one empty pixel between any two boxes, so same-colored objects never merge into one component.
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]):
                return False
    return True


def layout(scene: Scene, size: int = 64, seed: int = 0) -> list[Box]:
    """Pixel boxes of the scene's objects: the region's canonical slots with seeded jitter, validated.

    A jittered layout is kept only if every box is inside the image, boxes are at least one pixel apart and
    every centroid is inside the named region; after a few failed draws the un-jittered slots are used.
    """
    side = max(3, round(object_size(scene.count) * size))
    mask = shape_mask(scene.shape, side)
    rng = random.Random(f"{seed}:{prompt_text(scene)}")  # str seeds are hashed deterministically
    centers = slot_centers(scene.position, scene.count)
    for attempt in range(_ATTEMPTS):
        jitter = _JITTER if attempt < _ATTEMPTS - 1 else 0.0
        boxes = []
        for cx, cy in centers:
            x0 = round((cx + rng.uniform(-jitter, jitter)) * size - side / 2)
            y0 = round((cy + rng.uniform(-jitter, jitter)) * size - side / 2)
            boxes.append((x0, y0, x0 + side, y0 + side))
        inside = all(0 <= b[0] and 0 <= b[1] and b[2] <= size and b[3] <= size for b in boxes)
        if (
            inside
            and _apart(boxes)
            and all(centroid_in_region(mask, b, (size, size), scene.position, _REGION_MARGIN) for b in boxes)
        ):
            return boxes
    raise RuntimeError(f"no valid layout for {prompt_text(scene)!r} at {size} px")


def render(scene_or_prompt: Scene | str, size: int = 64, seed: int = 0) -> Image.Image:
    """The ground-truth RGB image of a scene or prompt: solid colors, no anti-aliasing, deterministic per seed."""
    scene = parse_prompt(scene_or_prompt) if isinstance(scene_or_prompt, str) else scene_or_prompt
    pixels = np.empty((size, size, 3), dtype=np.uint8)
    pixels[:] = BACKGROUNDS[scene.background]
    side = max(3, round(object_size(scene.count) * size))
    mask = shape_mask(scene.shape, side)
    for box in layout(scene, size, seed):
        paint(pixels, mask, box, PALETTE[scene.color])
    return Image.fromarray(pixels, "RGB")
