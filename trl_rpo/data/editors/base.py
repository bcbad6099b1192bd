"""The execution model of the diffusion editors: batching, per-image seeding, resizing, paste-back."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..masks import union_masks
from ..schema import EditInstruction, coerce_edit_batch
from .helpers import _COMBINE_MODES


@dataclass
class _Job:
    """One pipeline call's worth of work for one image: the inputs at working size and how to finish the output."""

    index: int
    original: Image.Image
    prompt: str
    extras: dict[str, Any] = field(default_factory=dict)
    mask: Image.Image | None = None  # at the original size: where the output replaces the original (paste-back)


class _DiffusionEditor:
    """The batching, seeding and resizing shared by the diffusion editors; subclasses say what one step does."""

    name: str = "diffusion_editor"
    combine: str = "join"

    def __init__(
        self,
        pipeline: Any,
        *,
        num_inference_steps: int,
        guidance_scale: float,
        seed: int,
        batch_size: int,
        resolution: int | None,
        combine: str,
        device: str | torch.device | None,
        pipeline_kwargs: dict[str, Any] | None,
        load_kwargs: dict[str, Any] | None,
        name: str | None,
    ):
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
            raise ValueError(f"resolution must be a positive integer or None (the model's own), got {resolution!r}")
        if combine not in _COMBINE_MODES:
            raise ValueError(f"combine must be one of {_COMBINE_MODES}, got {combine!r}")
        self.pipeline = self._prepare_pipeline(pipeline, dict(load_kwargs or {}))
        if device is not None:
            self.pipeline.to(device)
        if hasattr(self.pipeline, "set_progress_bar_config"):
            self.pipeline.set_progress_bar_config(disable=True)
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.batch_size = batch_size
        self.resolution = resolution
        self.combine = combine
        self.pipeline_kwargs = dict(pipeline_kwargs or {})
        if name is not None:
            self.name = name
        self._call_parameters = set(inspect.signature(self.pipeline.__call__).parameters)

    # -- what subclasses define ---------------------------------------------------------------------------------

    def _prepare_pipeline(self, pipeline: Any, load_kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _job(self, index: int, image: Image.Image, step: list[EditInstruction], prompt: str, size) -> _Job | None:
        """The pipeline inputs of one step of one image, or None when the step cannot be applied."""
        raise NotImplementedError

    def _call_kwargs(self) -> dict[str, Any]:
        """Scalar pipeline arguments particular to the editor (strength, image guidance, ...)."""
        return {}

    # -- shared machinery ---------------------------------------------------------------------------------------

    @staticmethod
    def _load(pipeline: Any, load_kwargs: dict[str, Any]) -> Any:
        if isinstance(pipeline, (str, os.PathLike)):
            from ...pipelines import load_pipeline

            return load_pipeline(pipeline, load_kwargs)
        return pipeline

    def _multiple(self) -> int:
        """Pixel sides must be multiples of this: the VAE's downsampling times the UNet's, and of 8 (some
        pipelines, e.g. SDXL inpainting, check divisibility by 8 whatever the model)."""
        vae_factor = getattr(self.pipeline, "vae_scale_factor", None)
        if vae_factor is None:
            vae_factor = 2 ** (len(self.pipeline.vae.config.block_out_channels) - 1)
        return math.lcm(8, int(vae_factor) * 2 ** (len(self.pipeline.unet.config.block_out_channels) - 1))

    def _native_side(self) -> int:
        if self.resolution is not None:
            return self.resolution
        sample_size = self.pipeline.unet.config.sample_size
        sample_size = max(sample_size) if isinstance(sample_size, (list, tuple)) else sample_size
        vae_factor = getattr(self.pipeline, "vae_scale_factor", None) or 2 ** (
            len(self.pipeline.vae.config.block_out_channels) - 1
        )
        return int(sample_size) * int(vae_factor)

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) an image of `size` is edited at: longer side `resolution` (default: the model's
        native side, `unet.config.sample_size * vae_scale_factor`), aspect kept, sides rounded to what the model
        accepts."""
        multiple = self._multiple()
        scale = self._native_side() / max(size)
        return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in size)

    def _steps(self, instructions: list[EditInstruction]) -> list[list[EditInstruction]]:
        if not instructions:
            return []
        return [instructions] if self.combine == "join" else [[item] for item in instructions]

    def __call__(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[Sequence[EditInstruction | dict | str]],
        prompts: Sequence[str] | None = None,
    ) -> list[Image.Image | None]:
        """The edited images (original sizes), one per input; None where the edit could not be applied.

        An image with no instructions is returned unchanged (there is nothing to edit).
        """
        images, instructions, prompts = coerce_edit_batch(images, instructions, prompts)
        current: list[Image.Image | None] = [image.convert("RGB") for image in images]
        steps = [self._steps(items) for items in instructions]
        masks: list[list[Image.Image | None]] = [[] for _ in images]
        for round_index in range(max((len(s) for s in steps), default=0)):
            jobs = []
            for i, image in enumerate(current):
                if image is None or round_index >= len(steps[i]):
                    continue
                job = self._job(i, image, steps[i][round_index], prompts[i], self.working_size(image.size))
                if job is None:
                    current[i] = None
                else:
                    jobs.append(job)
                    masks[i].append(job.mask)
            for i, edited in self._run(jobs).items():
                current[i] = edited
        # Where each image was changed: known when every step pasted back through a mask (None: anywhere).
        self.last_masks = [union_masks(m) if image is not None else None for m, image in zip(masks, current)]
        return current

    @torch.no_grad()
    def _run(self, jobs: list[_Job]) -> dict[int, Image.Image | None]:
        """Runs the jobs through the pipeline in batches of images of equal working size."""
        by_size: dict[tuple[int, int], list[_Job]] = {}
        for job in jobs:
            by_size.setdefault(self.working_size(job.original.size), []).append(job)
        from ...families import guidance_call_kwargs

        results: dict[int, Image.Image | None] = {}
        for (width, height), group in by_size.items():
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                kwargs: dict[str, Any] = {
                    "prompt": [job.prompt for job in batch],
                    "image": [job.original.resize((width, height), Image.BICUBIC) for job in batch],
                    "num_inference_steps": self.num_inference_steps,
                    # CFG in the convention of the pipeline's model family (Qwen-Image: true_cfg_scale).
                    **guidance_call_kwargs(self.pipeline, self.guidance_scale, len(batch)),
                    "generator": [torch.Generator().manual_seed(self.seed) for _ in batch],
                    "output_type": "pil",
                    **self._call_kwargs(),
                }
                for key in batch[0].extras:
                    kwargs[key] = [job.extras[key] for job in batch]
                if "height" in self._call_parameters:
                    kwargs.update(height=height, width=width)
                kwargs.update(self.pipeline_kwargs)
                output = self._call_pipeline(kwargs)
                flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(batch)
                for job, image, nsfw in zip(batch, output.images, flagged):
                    results[job.index] = None if nsfw else self._finish(job, image)
        return results

    def _call_pipeline(self, kwargs: dict[str, Any]) -> Any:
        """One batch's pipeline call (its output has `images`)."""
        return self.pipeline(**kwargs)

    @staticmethod
    def _finish(job: _Job, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if image.size != job.original.size:
            image = image.resize(job.original.size, Image.BICUBIC)
        if job.mask is not None:
            image = Image.composite(image, job.original, job.mask)
        return image

    def __repr__(self) -> str:
        # Builders record `repr` as the stage's provenance: say which model and which settings edited the data.
        source = getattr(getattr(self.pipeline, "config", None), "_name_or_path", None)
        where = f", from={source!r}" if source else ""
        return (
            f"{type(self).__name__}(name={self.name!r}, pipeline={type(self.pipeline).__name__}{where}, "
            f"steps={self.num_inference_steps}, guidance_scale={self.guidance_scale}, seed={self.seed})"
        )
