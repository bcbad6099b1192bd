"""Image preprocessing for training: resize, crop and flip a preference pair together (no torchvision)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["PreparedImage", "prepare_image", "prepare_pair", "to_tensor"]


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
    rng = rng or random
    fraction = (rng.random(), rng.random()) if random_crop else (0.5, 0.5)
    flip = random_flip and rng.random() < 0.5
    return prepare_image(chosen, resolution, fraction, flip), prepare_image(rejected, resolution, fraction, flip)
