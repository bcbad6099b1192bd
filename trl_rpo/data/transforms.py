"""Image preprocessing for training: resize, crop and flip a preference pair together (no torchvision)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["PreparedImage", "pair_placement", "prepare_image", "prepare_mask", "prepare_pair", "to_tensor"]


@dataclass
class PreparedImage:
    """A training image in [-1, 1] (`[3, res, res]`) with the SDXL micro-conditioning it came from."""

    pixel_values: torch.Tensor
    original_size: tuple[int, int]  # (height, width) before resizing
    crop_top_left: tuple[int, int]  # (top, left) in the resized image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float tensor `[3, H, W]` in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def prepare_image(
    image: Image.Image, resolution: int, crop_fraction: tuple[float, float] = (0.5, 0.5), flip: bool = False
) -> PreparedImage:
    """Resize the short side to `resolution`, crop a square window and optionally flip it.

    `crop_fraction` places the window: (0.5, 0.5) is a center crop; (0, 0) the top-left corner. Passing the
    same fraction to both images of a pair keeps them aligned when their sizes differ.
    """
    width, height = image.size
    scale = resolution / min(width, height)
    new_w, new_h = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR) if (new_w, new_h) != (width, height) else image
    top = round((new_h - resolution) * crop_fraction[0])
    left = round((new_w - resolution) * crop_fraction[1])
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    if flip:
        cropped = cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return PreparedImage(to_tensor(cropped), (height, width), (top, left))


def prepare_pair(
    chosen: Image.Image,
    rejected: Image.Image,
    resolution: int,
    random_crop: bool = False,
    random_flip: bool = False,
    rng: random.Random | None = None,
) -> tuple[PreparedImage, PreparedImage]:
    """Prepare both images of a pair with the *same* crop placement and flip, so they stay comparable."""
    fraction, flip = pair_placement(random_crop, random_flip, rng)
    return prepare_image(chosen, resolution, fraction, flip), prepare_image(rejected, resolution, fraction, flip)


def pair_placement(
    random_crop: bool = False, random_flip: bool = False, rng: random.Random | None = None
) -> tuple[tuple[float, float], bool]:
    """The crop placement (fractions, see :func:`prepare_image`) and flip shared by a pair (and its edit mask)."""
    rng = rng or random
    fraction = (rng.random(), rng.random()) if random_crop else (0.5, 0.5)
    flip = random_flip and rng.random() < 0.5
    return fraction, flip


def prepare_mask(
    mask: Image.Image, image_size: tuple[int, int], resolution: int, crop_fraction=(0.5, 0.5), flip: bool = False
) -> torch.Tensor:
    """An edit mask through the same resize, crop and flip as its image: `[1, res, res]` with 1 where edited.

    `image_size` is the (width, height) of the image the mask belongs to; a mask of another size is first
    resized to it. Resizing blends border pixels; any pixel the edit touched at all counts as edited.
    """
    mask = mask.convert("L")
    if mask.size != image_size:
        mask = mask.resize(image_size, Image.Resampling.NEAREST)
    prepared = prepare_image(mask, resolution, crop_fraction, flip).pixel_values[:1]  # [-1, 1], -1 = untouched
    return (prepared > -1.0 + 1e-6).float()
