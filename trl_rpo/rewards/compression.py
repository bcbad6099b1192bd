"""JPEG (in)compressibility, DDPO's weight-free rewards (Black et al., 2023)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from PIL import Image

__all__ = ["jpeg_compressibility", "jpeg_incompressibility", "jpeg_size_kb"]


def jpeg_size_kb(image: Image.Image, quality: int = 95) -> float:
    """Size in kilobytes of the image saved as JPEG at `quality`."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.tell() / 1000.0


def jpeg_compressibility(
    images: Sequence[Image.Image], prompts: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """Negative JPEG size in kB (quality 95): simpler, smoother images score higher."""
    return [-jpeg_size_kb(image) for image in images]


def jpeg_incompressibility(
    images: Sequence[Image.Image], prompts: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """JPEG size in kB (quality 95): detailed, high-frequency images score higher."""
    return [jpeg_size_kb(image) for image in images]
