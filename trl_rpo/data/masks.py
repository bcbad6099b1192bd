"""Edit masks: where an edit changed an image, grown a little, combined over editing steps.

Masks are mode "L" PIL images at the image's size, 255 where the edit acts and 0 elsewhere: the format of
diffusers' inpainting `mask_image` and of the builder's `mask` column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["difference_mask", "dilate_mask", "union_masks"]


def difference_mask(original: Image.Image, edited: Image.Image, threshold: int = 0) -> Image.Image:
    """255 where any channel of `edited` differs from `original` by more than `threshold` (0-255), else 0.

    The exact region of a pixel editor (paste, recolor, erase); for a diffusion editor without paste-back almost
    every pixel changes a little, so such editors report their own masks instead.
    """
    if original.size != edited.size:
        raise ValueError(f"difference_mask needs images of one size, got {original.size} and {edited.size}")
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(edited.convert("RGB"), dtype=np.int16)
    changed = np.abs(a - b).max(axis=-1) > threshold
    return Image.fromarray(changed.astype(np.uint8) * 255, "L")


def dilate_mask(mask: Image.Image, pixels: int) -> Image.Image:
    """The mask grown by `pixels` in every direction (a square max filter of side `2 * pixels + 1`)."""
    if pixels < 0:
        raise ValueError(f"dilation must be >= 0 pixels, got {pixels}")
    mask = mask.convert("L")
    return mask if pixels == 0 else mask.filter(ImageFilter.MaxFilter(2 * pixels + 1))


def union_masks(masks: Sequence[Image.Image | None]) -> Image.Image | None:
    """The pixel-wise maximum of the masks; None when any is None (an edit of unknown extent) or none is given."""
    if not masks or any(mask is None for mask in masks):
        return None
    out = np.asarray(masks[0].convert("L"))
    for mask in masks[1:]:
        if mask.size != masks[0].size:
            raise ValueError(f"union_masks needs masks of one size, got {masks[0].size} and {mask.size}")
        out = np.maximum(out, np.asarray(mask.convert("L")))
    return Image.fromarray(out, "L")
