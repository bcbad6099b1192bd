"""Read a shapes-world image back into structure: background color and each object's color, shape and place."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .world import BACKGROUNDS, PALETTE, position_of

__all__ = [
    "COLOR_NAMES",
    "DetectedObject",
    "Observation",
    "analyze",
    "classify_shape",
    "color_labels",
    "shape_probabilities",
]

COLOR_NAMES: tuple[str, ...] = (*PALETTE, *BACKGROUNDS)
_COLOR_VALUES = np.array([*PALETTE.values(), *BACKGROUNDS.values()], dtype=np.float32)

# A pixel farther than this (RGB distance) from every palette color marks the image as not a clean drawing.
_CLEAN_TOLERANCE = 24.0

# (fill ratio of the bounding box, |vertical centroid offset| within the box) of each ideal shape.
_SHAPE_PROTOTYPES = {
    "circle": (np.pi / 4, 0.0),
    "square": (1.0, 0.0),
    "triangle": (0.5, 1 / 6),
    "diamond": (0.5, 0.0),
}
_OFFSET_WEIGHT = 2.0  # puts triangle and diamond (same fill) as far apart as circle and square


@dataclass(frozen=True)
class DetectedObject:
    """One connected single-color component.

    Attributes:
        color: nearest palette color name (object or background palette).
        shape: nearest shape prototype (`classify_shape`).
        centroid: `(x, y)` of the pixels' mean, normalized to [0, 1].
        bbox: pixel box `(x0, y0, x1, y1)`, `x1`/`y1` exclusive.
        area: number of pixels.
        position: the region of the centroid (`world.position_of`).
        mask: the component's pixels, cropped to `bbox` (`[y1 - y0, x1 - x0]` booleans).
    """

    color: str
    shape: str
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]
    area: int
    position: str
    mask: np.ndarray = field(repr=False, compare=False)

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The bounding box in normalized [0, 1] coordinates (as `EditInstruction.region`)."""
        x0, y0, x1, y1 = self.bbox
        return (x0 / width, y0 / height, x1 / width, y1 / height)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Observation:
    """What `analyze` found: the background color name, the objects, and the image size `(width, height)`."""

    background: str
    objects: tuple[DetectedObject, ...]
    size: tuple[int, int]


def _border(labels: np.ndarray) -> np.ndarray:
    return np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])


def color_labels(pixels: np.ndarray, smooth: bool | None = None) -> np.ndarray:
    """Index into `COLOR_NAMES` of each pixel's palette color, `[H, W]`.

    A clean drawing (every pixel close to a palette color) is labeled by nearest color. Otherwise (or with
    `smooth=True`) a pixel that is better explained as a blend of the background (the border's most common
    color) with a palette color, as on anti-aliased or blurred edges, goes to whichever dominates the blend;
    then a 3x3 majority filter removes speckle.
    """
    rgb = pixels.astype(np.float32)
    distances = ((rgb[:, :, None, :] - _COLOR_VALUES[None, None]) ** 2).sum(-1)
    labels = distances.argmin(-1)
    if smooth is None:
        smooth = bool(np.sqrt(distances.min(-1)).max() > _CLEAN_TOLERANCE)
    if not smooth:
        return labels
    background = int(np.bincount(_border(labels), minlength=len(COLOR_NAMES)).argmax())
    base = _COLOR_VALUES[background]
    directions = _COLOR_VALUES - base  # [K, 3]; zero for the background itself
    lengths = np.maximum((directions**2).sum(-1), 1e-6)
    alpha = np.clip(((rgb - base)[:, :, None, :] * directions).sum(-1) / lengths, 0.0, 1.0)  # [H, W, K]
    residual = ((rgb[:, :, None, :] - (base + alpha[..., None] * directions)) ** 2).sum(-1)
    residual[:, :, background] = np.inf
    blend = residual.argmin(-1)
    blended = np.take_along_axis(residual, blend[..., None], -1)[..., 0] < distances.min(-1)
    blend_alpha = np.take_along_axis(alpha, blend[..., None], -1)[..., 0]
    labels = np.where(blended, np.where(blend_alpha >= 0.5, blend, background), labels)
    onehot = np.eye(len(COLOR_NAMES), dtype=np.float32)[labels]
    padded = np.pad(onehot, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = labels.shape
    votes = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    # Only speckle (a pixel with at most two like neighbors) takes its neighborhood's majority color: a full
    # majority filter would also round off the corners that tell diamonds and triangles from circles.
    own = (votes * onehot).sum(-1) - 1
    return np.where(own <= 2, (votes + 0.5 * onehot).argmax(-1), labels)


def _shape_distances(mask: np.ndarray) -> dict[str, float]:
    """Squared distance of a mask's (fill ratio, weighted centroid offset) to each shape prototype."""
    height, _ = mask.shape
    ys, _ = np.nonzero(mask)
    fill = float(mask.mean())
    offset = abs((ys.mean() + 0.5) / height - 0.5)
    return {
        shape: (fill - proto_fill) ** 2 + (_OFFSET_WEIGHT * (offset - proto_offset)) ** 2
        for shape, (proto_fill, proto_offset) in _SHAPE_PROTOTYPES.items()
    }


def shape_probabilities(mask: np.ndarray, temperature: float = 0.02) -> dict[str, float]:
    """A soft `classify_shape`: softmax over shapes of minus the squared prototype distance / `temperature`.

    The argmax is `classify_shape(mask)`; a mask between two prototypes (a blurred square, a rounded diamond)
    gets credit for both, which is what a graded reward needs (`soft_alignment_score`).
    """
    distances = _shape_distances(mask)
    logits = np.array([-d / temperature for d in distances.values()])
    weights = np.exp(logits - logits.max())
    return dict(zip(distances, (weights / weights.sum()).tolist()))


def classify_shape(mask: np.ndarray) -> str:
    """The nearest shape prototype of a component mask (cropped to its bounding box).

    Features: the fill ratio of the bounding box (circle pi/4, square 1, triangle and diamond 1/2) and how far
    the centroid sits from the box's vertical middle (1/6 of the height for a triangle, 0 for the others).
    """
    distances = _shape_distances(mask)
    return min(distances, key=distances.__getitem__)


def _components(labels: np.ndarray, background: int) -> list[tuple[int, list[int]]]:
    """4-connected components of equal label, skipping the background label: `(label, flat pixel indices)`."""
    height, width = labels.shape
    flat = labels.ravel().tolist()
    seen = [label == background for label in flat]
    components = []
    for start in range(height * width):
        if seen[start]:
            continue
        label = flat[start]
        seen[start] = True
        stack, pixels = [start], []
        while stack:
            p = stack.pop()
            pixels.append(p)
            y, x = divmod(p, width)
            for q, ok in ((p - 1, x > 0), (p + 1, x < width - 1), (p - width, y > 0), (p + width, y < height - 1)):
                if ok and not seen[q] and flat[q] == label:
                    seen[q] = True
                    stack.append(q)
        components.append((label, pixels))
    return components


def analyze(
    image: Image.Image, min_area: int | None = None, smooth: bool | None = None, max_side: int | None = 128
) -> Observation:
    """Segment an image by palette color and describe its background and objects.

    The background is the most common color on the image border; every other 4-connected single-color
    component of at least `min_area` pixels (default: 0.3% of the image, at least 4) is an object. Images larger
    than `max_side` are box-downsampled first (speed, and less noise); None analyzes every pixel, so that
    `bbox` and `mask` are in the image's own pixels.
    """
    image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BOX)
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    labels = color_labels(pixels, smooth)
    background = int(np.bincount(_border(labels), minlength=len(COLOR_NAMES)).argmax())
    min_area = max(4, round(0.003 * height * width)) if min_area is None else min_area
    objects = []
    for label, flat in _components(labels, background):
        if len(flat) < min_area:
            continue
        ys, xs = np.divmod(np.asarray(flat), width)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        mask[ys - y0, xs - x0] = True
        cx, cy = (xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height
        objects.append(
            DetectedObject(
                color=COLOR_NAMES[label],
                shape=classify_shape(mask),
                centroid=(float(cx), float(cy)),
                bbox=(x0, y0, x1, y1),
                area=len(flat),
                position=position_of(cx, cy),
                mask=mask,
            )
        )
    return Observation(background=COLOR_NAMES[background], objects=tuple(objects), size=(width, height))
