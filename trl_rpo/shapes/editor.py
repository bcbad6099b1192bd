"""A deterministic pixel editor that executes shapes-world `EditInstruction`s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
from PIL import Image

from ..data.masks import difference_mask
from ..data.schema import EditInstruction, coerce_edit_batch
from .analysis import COLOR_NAMES, analyze
from .render import Box, centroid_in_region, shape_mask
from .world import BACKGROUNDS, COUNTS, PALETTE, POSITIONS, SHAPES, object_size, position_of, slot_centers

__all__ = ["EditFailed", "Editor"]

_RGB = {**PALETTE, **BACKGROUNDS}
_REGION_MARGIN = 0.02  # placed centroids stay this far inside the target region (as in the renderer)
_MIN_SIDE = 5  # smaller shapes are no longer recognizable by `classify_shape`
_SHRINK = (1.0, 0.85, 0.7)  # sizes tried, relative to the requested one, when a region is crowded


class EditFailed(Exception):
    """An instruction the editor cannot execute (unknown kind, bad params, no matching object, no room)."""


@dataclass(eq=False)  # identity, not field equality: two objects may look alike
class _Object:
    """An object being edited: where it is now, and its bounding box in the original image (None when added)."""

    color: str
    shape: str
    mask: np.ndarray
    box: Box
    origin: tuple[float, float, float, float] | None


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _color(params: dict[str, Any], key: str = "color") -> str:
    value = params.get(key)
    if value not in _RGB:
        raise EditFailed(f"params[{key!r}] must be one of {list(COLOR_NAMES)}, got {value!r}")
    return value


def _point(value: Any) -> tuple[float, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, Real) and 0.0 <= v <= 1.0 for v in value)
    ):
        raise EditFailed(f"a destination 'at' must be [x, y] in [0, 1], got {value!r}")
    return float(value[0]), float(value[1])


class _Canvas:
    """The pixels of one image and the objects on it, edited in place."""

    def __init__(self, image: Image.Image):
        observation = analyze(image, max_side=None)  # masks must be in the image's own pixels
        self.pixels = np.array(image.convert("RGB"))
        self.height, self.width = self.pixels.shape[:2]
        self.background = observation.background
        self.objects = [
            _Object(o.color, o.shape, o.mask, o.bbox, o.box(self.width, self.height)) for o in observation.objects
        ]

    def occupancy(self, exclude: _Object | None = None) -> np.ndarray:
        occupied = np.zeros((self.height, self.width), dtype=bool)
        for o in self.objects:
            if o is not exclude:
                x0, y0, x1, y1 = o.box
                occupied[y0:y1, x0:x1] |= o.mask
        return occupied

    def resolve(self, instruction: EditInstruction) -> _Object:
        """The original object named by `target` ("<color> <shape>") that best overlaps `region`."""
        candidates = [o for o in self.objects if o.origin is not None]
        if instruction.target:
            *color_words, shape = instruction.target.split()
            color = " ".join(color_words) or None
            candidates = [o for o in candidates if o.shape == shape and (color is None or o.color == color)]
        if instruction.region is not None:
            scored = [(_iou(o.origin, instruction.region), i) for i, o in enumerate(candidates)]
            scored = [s for s in scored if s[0] > 0]
            if scored:
                return candidates[max(scored)[1]]
        elif len(candidates) == 1:
            return candidates[0]
        raise EditFailed(f"no unique object matches target {instruction.target!r} in region {instruction.region}")

    def erase(self, obj: _Object) -> None:
        """Paint an object (and its one-pixel rim, where anti-aliasing leaves mixed colors) with the background."""
        x0, y0, x1, y1 = obj.box
        full = np.zeros((self.height, self.width), dtype=bool)
        full[y0:y1, x0:x1] = obj.mask
        rim = full.copy()
        rim[1:] |= full[:-1]
        rim[:-1] |= full[1:]
        rim[:, 1:] |= full[:, :-1]
        rim[:, :-1] |= full[:, 1:]
        self.pixels[rim & ~self.occupancy(exclude=obj)] = _RGB[self.background]

    def place(self, mask: np.ndarray, to: str, hint: tuple[float, float] | None, exclude: _Object | None) -> Box:
        """The free box nearest `hint` (default: the region's anchor) whose mask centroid lies in region `to`.

        Free means the box grown by one pixel holds no other object's pixel, so nothing touches or merges.
        """
        h, w = mask.shape
        if h > self.height or w > self.width:
            raise EditFailed(f"a {w}x{h} object does not fit in the image")
        occupied = np.pad(self.occupancy(exclude), 1).astype(np.int32)
        integral = np.pad(occupied.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        ys, xs = np.nonzero(mask)
        ox, oy = xs.mean() + 0.5, ys.mean() + 0.5
        hx, hy = hint if hint is not None else slot_centers(to, 1)[0]
        candidates = [(x0, y0) for y0 in range(self.height - h + 1) for x0 in range(self.width - w + 1)]
        candidates.sort(key=lambda c: (math.hypot((c[0] + ox) / self.width - hx, (c[1] + oy) / self.height - hy), c))
        for x0, y0 in candidates:
            # The box grown by one pixel, in the padded occupancy's coordinates: [x0, x0 + w + 2).
            inside = integral[y0 + h + 2, x0 + w + 2] - integral[y0, x0 + w + 2] - integral[y0 + h + 2, x0]
            if inside + integral[y0, x0] == 0:
                box = (x0, y0, x0 + w, y0 + h)
                if centroid_in_region(mask, box, (self.width, self.height), to, _REGION_MARGIN):
                    return box
        raise EditFailed(f"no free room {to}")


class Editor:
    """Executes `EditInstruction`s on the pixels of shapes-world images, deterministically.

    Kinds and params (objects are named by `target` "<color> <shape>" and found by `region`, their box in the
    original image; instructions run in order on the same image):

    - "recolor": `{"color": name}` repaints the object's pixels;
    - "move": `{"to": position, "at": [x, y] (optional)}` erases the object and redraws its pixels at the free
      place nearest `at` (default: the region's anchor) whose centroid is in the region;
    - "remove": erases the object with the background color;
    - "add": `{"shape", "color", "count" (default 1), "to" (or a `region` box), "size" (side as a fraction of
      the image, default the world's size for the count), "at": [[x, y], ...] (optional)}` draws new shapes in
      free places, shrinking them a little when the region is crowded;
    - "background": `{"color": name}` repaints every pixel outside the objects.

    An image whose instructions cannot all be executed (unknown kind, bad params, no matching object, no room)
    yields None. After each call, `last_masks[i]` marks the pixels the edit of image i changed.
    """

    name = "shapes_editor"

    def __call__(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[Sequence[EditInstruction | dict | str]],
        prompts: Sequence[str] | None = None,
    ) -> list[Image.Image | None]:
        images, instructions, _ = coerce_edit_batch(images, instructions, prompts)
        edited = [self.edit(image, items) for image, items in zip(images, instructions)]
        # The editor protocol's optional region report (`trl_rpo.data.editors.edit_masks`): the repainted pixels.
        self.last_masks = [
            difference_mask(image, out) if out is not None else None for image, out in zip(images, edited)
        ]
        return edited

    def edit(self, image: Image.Image, instructions: Sequence[EditInstruction | dict | str]) -> Image.Image | None:
        """The edited image, or None if some instruction cannot be executed."""
        canvas = _Canvas(image)
        try:
            for item in instructions:
                self._apply(canvas, EditInstruction.coerce(item))
        except EditFailed:
            return None
        return Image.fromarray(canvas.pixels, "RGB")

    def _apply(self, canvas: _Canvas, instruction: EditInstruction) -> None:
        params = instruction.params
        if instruction.kind == "remove":
            obj = canvas.resolve(instruction)
            canvas.erase(obj)
            canvas.objects.remove(obj)
        elif instruction.kind == "recolor":
            color = _color(params)
            obj = canvas.resolve(instruction)
            x0, y0, x1, y1 = obj.box
            canvas.pixels[y0:y1, x0:x1][obj.mask] = _RGB[color]
            obj.color = color
        elif instruction.kind == "move":
            to = params.get("to")
            if to not in POSITIONS:
                raise EditFailed(f"move needs params['to'] in {list(POSITIONS)}, got {to!r}")
            hint = _point(params["at"]) if "at" in params else None
            obj = canvas.resolve(instruction)
            x0, y0, x1, y1 = obj.box
            colors = canvas.pixels[y0:y1, x0:x1][obj.mask].copy()  # keep the object's own pixels, texture included
            box = canvas.place(obj.mask, to, hint, exclude=obj)
            canvas.erase(obj)
            canvas.pixels[box[1] : box[3], box[0] : box[2]][obj.mask] = colors
            obj.box = box
        elif instruction.kind == "add":
            self._add(canvas, instruction)
        elif instruction.kind == "background":
            color = _color(params)
            canvas.pixels[~canvas.occupancy()] = _RGB[color]
            canvas.background = color
        else:
            raise EditFailed(f"unknown instruction kind {instruction.kind!r}")

    @staticmethod
    def _add(canvas: _Canvas, instruction: EditInstruction) -> None:
        params = instruction.params
        shape, color, count = params.get("shape"), _color(params), params.get("count", 1)
        if shape not in SHAPES:
            raise EditFailed(f"add needs params['shape'] in {list(SHAPES)}, got {shape!r}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise EditFailed(f"add needs a positive integer params['count'], got {count!r}")
        to = params.get("to")
        if to is None and instruction.region is not None:
            x0, y0, x1, y1 = instruction.region
            to = position_of((x0 + x1) / 2, (y0 + y1) / 2)
        if to not in POSITIONS:
            raise EditFailed(f"add needs params['to'] in {list(POSITIONS)} or a region, got {to!r}")
        size = params.get("size", object_size(count) if count in COUNTS else object_size(COUNTS[-1]))
        if not isinstance(size, Real) or not 0 < size <= 1:
            raise EditFailed(f"params['size'] must be in (0, 1], got {size!r}")
        hints = [_point(p) for p in params.get("at", [])]
        side = max(_MIN_SIDE, round(size * min(canvas.width, canvas.height)))
        added: list[_Object] = []
        try:
            for i in range(count):
                added.append(_draw_new(canvas, shape, color, side, to, hints[i] if i < len(hints) else None))
        except EditFailed:
            # A crowded region: undo, then lay the group out afresh on the canonical slots of its new count.
            for obj in added:
                canvas.erase(obj)
                canvas.objects.remove(obj)
            _regroup(canvas, shape, color, side, to, count)


def _draw_new(
    canvas: _Canvas, shape: str, color: str, side: int, to: str, hint: tuple[float, float] | None
) -> _Object:
    """Draw a new shape at the free place nearest `hint`, shrinking it a little if there is no room."""
    for shrink in _SHRINK:
        mask = shape_mask(shape, max(_MIN_SIDE, round(side * shrink)))
        try:
            box = canvas.place(mask, to, hint, exclude=None)
        except EditFailed:
            continue
        canvas.pixels[box[1] : box[3], box[0] : box[2]][mask] = _RGB[color]
        obj = _Object(color, shape, mask, box, None)
        canvas.objects.append(obj)
        return obj
    raise EditFailed(f"no room to add a {color} {shape} {to}")


def _regroup(canvas: _Canvas, shape: str, color: str, side: int, to: str, count: int) -> None:
    """Add `count` shapes by re-placing the same-looking objects already in region `to` together with them.

    The existing objects keep their own pixels; all of them go to the free places nearest the region's
    canonical slots for the new total (or its anchor when the total exceeds the world's counts).
    """
    group = []
    for obj in canvas.objects:
        x0, y0 = obj.box[:2]
        ys, xs = np.nonzero(obj.mask)
        cx, cy = (x0 + xs.mean() + 0.5) / canvas.width, (y0 + ys.mean() + 0.5) / canvas.height
        if (obj.color, obj.shape) == (color, shape) and position_of(cx, cy) == to:
            group.append((obj, canvas.pixels[y0 : obj.box[3], x0 : obj.box[2]][obj.mask].copy()))
    total = len(group) + count
    slots = list(slot_centers(to, total)) if total in COUNTS else []
    for obj, _ in group:
        canvas.erase(obj)
        canvas.objects.remove(obj)
    for obj, colors in group:
        hint = min(slots, key=lambda s: math.dist(s, _center(obj, canvas))) if slots else None
        if hint is not None:
            slots.remove(hint)
        box = canvas.place(obj.mask, to, hint, exclude=None)
        canvas.pixels[box[1] : box[3], box[0] : box[2]][obj.mask] = colors
        obj.box = box
        canvas.objects.append(obj)
    for i in range(count):
        _draw_new(canvas, shape, color, side, to, slots[i] if i < len(slots) else None)


def _center(obj: _Object, canvas: _Canvas) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box
    return ((x0 + x1) / 2 / canvas.width, (y0 + y1) / 2 / canvas.height)
