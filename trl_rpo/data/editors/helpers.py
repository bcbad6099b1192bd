"""What the editors share besides the pipeline: prompt rewriting, region masks, Canny edges."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..schema import EditInstruction

_COMBINE_MODES = ("join", "sequential")
_JOIN = "; "


def rewrite_prompt(prompt: str, instructions: Sequence[EditInstruction]) -> str:
    """The generation prompt followed by the edit instructions, comma-separated.

    Used by the regenerating editors (img2img, ControlNet), whose models read captions rather than commands:
    the original prompt keeps the content, the instructions steer the change.
    """
    return ", ".join([p for p in [prompt.strip(), *(i.instruction.strip() for i in instructions)] if p])


def default_inpaint_prompt(instruction: EditInstruction, prompt: str) -> str:
    """What to paint inside an instruction's region.

    Inpainting models are trained on captions of the painted content, not on commands, so a caption is built
    where the instruction allows it: `params["prompt"]` when given; `"<color> <target>"` when the instruction has a
    `target` and `params["color"]` (e.g. a recolor); `"background"` for `kind="remove"`; otherwise the instruction
    text itself.
    """
    params = instruction.params or {}
    if isinstance(params.get("prompt"), str) and params["prompt"].strip():
        return params["prompt"]
    if instruction.target and isinstance(params.get("color"), str):
        return f"{params['color']} {instruction.target}"
    if instruction.kind == "remove":
        return "background"
    return instruction.instruction


def region_mask(
    size: tuple[int, int],
    regions: Sequence[tuple[float, float, float, float]],
    dilation: float = 0.0,
) -> Image.Image:
    """A mode "L" mask of `size` (width, height): 255 inside the union of the boxes, 0 elsewhere.

    Boxes are `(x0, y0, x1, y1)` in [0, 1]; each is grown by `dilation` (a fraction of the image side) on every
    side and clipped to the image, then rounded outwards to whole pixels so a box never loses its edge pixels.
    """
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0 (a fraction of the image side), got {dilation}")
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in regions:
        x0, y0 = max(0.0, x0 - dilation), max(0.0, y0 - dilation)
        x1, y1 = min(1.0, x1 + dilation), min(1.0, y1 + dilation)
        px0, py0 = math.floor(x0 * width), math.floor(y0 * height)
        px1, py1 = max(px0 + 1, math.ceil(x1 * width)), max(py0 + 1, math.ceil(y1 * height))
        mask[py0:py1, px0:px1] = 255
    return Image.fromarray(mask, "L")


def canny_edges(image: Image.Image, low: float = 100.0, high: float = 200.0) -> Image.Image:
    """Canny edges of an image with OpenCV's `cv2.Canny(gray, low, high)`: white edges on black, RGB, same size.

    The detector (and default thresholds) the canny ControlNets were trained with, as in the diffusers ControlNet
    examples. Needs `opencv-python-headless` (`pip install 'trl-rpo[editors]'`).
    """
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    try:
        import cv2
    except ImportError as error:
        raise ImportError(
            "canny_edges (the ControlNet editor's condition) needs OpenCV: pip install 'trl-rpo[editors]' "
            "(opencv-python-headless), or pass ControlNetEditor a `condition` callable"
        ) from error
    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)
    return Image.fromarray(np.repeat(edges[..., None], 3, axis=2), "RGB")
