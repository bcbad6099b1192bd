"""Instruction editors on diffusers' flow-matching editing pipelines: FLUX.1 Kontext and Qwen-Image-Edit.

Both take the source image and a plain-language instruction (no mask, no prompt rewriting): the instruction text is
the prompt, as with InstructPix2Pix. They share the batching, per-image seeding and resizing of the other
diffusion editors (`trl_rpo.data.editors`), with the sizes of transformer models: sides are multiples of the VAE
factor times the 2x2 patch, and the native side is the pipeline's `default_sample_size * vae_scale_factor`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .editors.base import _DiffusionEditor, _Job
from .editors.helpers import _JOIN

__all__ = ["FluxKontextEditor", "QwenImageEditEditor", "transformer_native_side", "transformer_side_multiple"]


def transformer_side_multiple(pipeline) -> int:
    """Pixel sides a transformer pipeline accepts are multiples of this: VAE factor x patch (2), and of 8."""
    vae_factor = getattr(pipeline, "vae_scale_factor", None) or 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    patch = getattr(getattr(pipeline, "transformer", None), "config", None)
    patch = getattr(patch, "patch_size", 1) if patch is not None else 1
    return math.lcm(8, int(vae_factor) * max(2, int(patch)))


def transformer_native_side(pipeline, resolution: int | None = None) -> int:
    """`resolution`, or the pipeline's default side: `transformer.config.sample_size` (SD3) or
    `default_sample_size` (FLUX, Qwen-Image: 128) latent pixels times the VAE factor."""
    if resolution is not None:
        return resolution
    vae_factor = getattr(pipeline, "vae_scale_factor", None) or 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    sample_size = getattr(pipeline.transformer.config, "sample_size", None) or getattr(
        pipeline, "default_sample_size", 128
    )
    return int(sample_size) * int(vae_factor)


class _InstructionTransformerEditor(_DiffusionEditor):
    """An instruction editor on a transformer pipeline: the instruction is the prompt, the image the condition."""

    pipeline_classes: tuple[str, ...] = ()

    def __init__(
        self,
        pipeline: Any,
        num_inference_steps: int = 28,
        guidance_scale: float = 2.5,
        seed: int = 0,
        batch_size: int = 1,
        resolution: int | None = None,
        combine: str = "join",
        device: str | torch.device | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        super().__init__(
            pipeline,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            batch_size=batch_size,
            resolution=resolution,
            combine=combine,
            device=device,
            pipeline_kwargs=pipeline_kwargs,
            load_kwargs=load_kwargs,
            name=name,
        )

    def _prepare_pipeline(self, pipeline: Any, load_kwargs: dict[str, Any]) -> Any:
        pipeline = self._load(pipeline, load_kwargs)
        if type(pipeline).__name__ not in self.pipeline_classes:
            raise TypeError(
                f"{type(self).__name__} expects a {' or '.join(self.pipeline_classes)} (or an id / folder of one), "
                f"got {type(pipeline).__name__}"
            )
        return pipeline

    def _multiple(self) -> int:
        return transformer_side_multiple(self.pipeline)

    def _native_side(self) -> int:
        return transformer_native_side(self.pipeline, self.resolution)

    def _job(self, index, image, step, prompt, size) -> _Job:
        return _Job(index, image, _JOIN.join(item.instruction for item in step))


class FluxKontextEditor(_InstructionTransformerEditor):
    """Edits with FLUX.1 Kontext (`FluxKontextPipeline`): the input image's tokens join the generated sequence.

    Args:
        pipeline: a `FluxKontextPipeline` or an id / folder of one, e.g. "black-forest-labs/FLUX.1-Kontext-dev".
        guidance_scale: FLUX's embedded guidance (Kontext's default 2.5).
        Others as in `InstructPix2PixEditor`. Kontext resizes inputs to its preferred resolutions by default; pass
        `pipeline_kwargs={"_auto_resize": False}` to edit at the working size (e.g. with small models).
    """

    name = "flux_kontext"
    pipeline_classes = ("FluxKontextPipeline",)

    def __init__(self, pipeline: Any = "black-forest-labs/FLUX.1-Kontext-dev", **kwargs: Any):
        super().__init__(pipeline, **kwargs)


class QwenImageEditEditor(_InstructionTransformerEditor):
    """Edits with Qwen-Image-Edit (`QwenImageEditPipeline`): a Qwen2.5-VL encoder reads image and instruction.

    Args:
        pipeline: a `QwenImageEditPipeline` or an id / folder of one, e.g. "Qwen/Qwen-Image-Edit".
        guidance_scale: passed as the pipeline's `true_cfg_scale` (real classifier-free guidance, 4.0 in its
            examples) when `pipeline_kwargs` does not set it. Above 1 each image also gets a blank negative prompt
            (`" "`), without which the pipeline does not apply it; at 1 or below neither is passed on.
        Others as in `InstructPix2PixEditor`. The pipeline's own `guidance_scale` is for guidance-distilled
        transformers, which Qwen-Image-Edit is not: the editor passes `guidance_scale=None`, the pipeline's default
        (a number would be ignored, with a warning on every call); a distilled transformer takes it from
        `pipeline_kwargs`.
    """

    name = "qwen_image_edit"
    pipeline_classes = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline")

    def __init__(self, pipeline: Any = "Qwen/Qwen-Image-Edit", guidance_scale: float = 4.0, **kwargs: Any):
        super().__init__(pipeline, guidance_scale=guidance_scale, **kwargs)

    def _true_cfg_scale(self) -> float:
        return self.pipeline_kwargs.get("true_cfg_scale", self.guidance_scale)

    def _job(self, index, image, step, prompt, size) -> _Job:
        job = super()._job(index, image, step, prompt, size)
        if self._true_cfg_scale() > 1:
            # One per image: the pipeline encodes a single negative string once, against all the batch's images.
            job.extras["negative_prompt"] = " "
        return job

    def _call_kwargs(self) -> dict[str, Any]:
        return {"true_cfg_scale": self._true_cfg_scale(), "guidance_scale": None}
