"""The model registry: each denoiser family is one registered :class:`DenoiserFamily`.

Built in: SD 1.5 and SDXL (`families.unet`), SD3 / SD3.5 and FLUX.1 (`families.flow`), Qwen-Image
(`families.qwen_image`), Z-Image (`families.z_image`), FLUX.2 [klein] (`families.flux2`). A new family is one
module that subclasses `DenoiserFamily` and calls `register_family`, plus a tiny offline pipeline in
`trl_rpo.testing`: see `docs/adding_a_model.md`.
"""

from __future__ import annotations

from . import flow, flux2, qwen_image, unet, z_image  # noqa: F401  (registers the built-in families, detection in this order)
from .base import (
    FAMILIES,
    DenoiserFamily,
    detect_family,
    find_family,
    guidance_call_kwargs,
    register_family,
    unregister_family,
)

__all__ = [
    "FAMILIES",
    "DenoiserFamily",
    "detect_family",
    "find_family",
    "guidance_call_kwargs",
    "register_family",
    "unregister_family",
]
