"""Diffusion image editors that execute a critic's `EditInstruction`s (the "edit" step of the RPO data pipeline).

Every editor follows the editor protocol of `trl_rpo.shapes.Editor`::

    editor(images: list[PIL.Image], instructions: list[list[EditInstruction]], prompts: list[str])
        -> list[PIL.Image | None]

`instructions[i]` are the edits of image i (`EditInstruction`s, dicts or strings), `prompts[i]` the prompt the image
was generated from; the result has one entry per image: the edited image at the original size, or None when the
edit could not be applied. Each editor has a `name`, recorded as the dataset's `edit_method`.

- `InstructPix2PixEditor`: instruction-following editing (SD 1.5 and SDXL InstructPix2Pix).
- `InpaintEditor`: repaints each instruction's `region` box (SD 1.5 and SDXL inpainting).
- `ControlNetEditor`: regenerates the image with its structure kept by a ControlNet condition (canny edges).
- `Img2ImgEditor`: SDEdit-style img2img with the prompt rewritten by the instructions.
- `EditorRouter`: picks an editor per instruction kind and chains them.

The diffusion editors share one execution model: images are resized to the model's working resolution, edited in
batches of `batch_size`, each image with its own `torch.Generator` seeded with `seed` (so an image's edit does not
depend on its batch or position), and resized back to the original size.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .masks import union_masks
from .schema import EditInstruction, coerce_edit_batch

__all__ = [
    "ControlNetEditor",
    "EditorRouter",
    "Img2ImgEditor",
    "InpaintEditor",
    "InstructPix2PixEditor",
    "canny_edges",
    "default_inpaint_prompt",
    "edit_masks",
    "region_mask",
    "rewrite_prompt",
]

Editor = Callable[..., list]
_COMBINE_MODES = ("join", "sequential")
_JOIN = "; "


# ----------------------------------------------------------------------------------------------------------------
# Helpers: prompts, masks, edges
# ----------------------------------------------------------------------------------------------------------------


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
    """Canny edges of an image with numpy only (no OpenCV): white edges on black, RGB, same size.

    Follows `cv2.Canny(gray, low, high)`, the detector the canny ControlNets were trained with: 3x3 Sobel
    gradients with the L1 magnitude `|gx| + |gy|`, non-maximum suppression along the gradient direction
    (quantised to 0/45/90/135 degrees), and hysteresis (pixels above `high` seed edges that grow through
    8-connected pixels above `low`). No smoothing is applied, as in `cv2.Canny`.
    """
    if not 0 <= low <= high:
        raise ValueError(f"canny thresholds must satisfy 0 <= low <= high, got low={low}, high={high}")
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    height, width = gray.shape
    p = np.pad(gray, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    magnitude = np.abs(gx) + np.abs(gy)
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    padded = np.pad(magnitude, 1)

    def neighbour(dy: int, dx: int) -> np.ndarray:
        return padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    # (dy, dx) of the neighbour along the gradient; image rows grow downwards, as does gy.
    directions = [
        ((angle < 22.5) | (angle >= 157.5), (0, 1)),
        ((angle >= 22.5) & (angle < 67.5), (1, 1)),
        ((angle >= 67.5) & (angle < 112.5), (1, 0)),
        ((angle >= 112.5) & (angle < 157.5), (1, -1)),
    ]
    thin = np.zeros_like(magnitude, dtype=bool)
    for selected, (dy, dx) in directions:
        is_max = (magnitude > neighbour(dy, dx)) & (magnitude >= neighbour(-dy, -dx))
        thin |= selected & is_max
    weak = thin & (magnitude >= low)
    edges = thin & (magnitude >= high)
    while True:
        grown = np.pad(edges, 1)
        dilated = np.zeros_like(edges)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                dilated |= grown[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        updated = edges | (dilated & weak)
        if np.array_equal(updated, edges):
            break
        edges = updated
    return Image.fromarray(np.repeat(edges[..., None].astype(np.uint8) * 255, 3, axis=2), "RGB")


# ----------------------------------------------------------------------------------------------------------------
# Diffusion editors
# ----------------------------------------------------------------------------------------------------------------


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
            from ..pipelines import load_pipeline

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
        results: dict[int, Image.Image | None] = {}
        for (width, height), group in by_size.items():
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                kwargs: dict[str, Any] = {
                    "prompt": [job.prompt for job in batch],
                    "image": [job.original.resize((width, height), Image.BICUBIC) for job in batch],
                    "num_inference_steps": self.num_inference_steps,
                    "guidance_scale": self.guidance_scale,
                    "generator": [torch.Generator().manual_seed(self.seed) for _ in batch],
                    "output_type": "pil",
                    **self._call_kwargs(),
                }
                for key in batch[0].extras:
                    kwargs[key] = [job.extras[key] for job in batch]
                if "height" in self._call_parameters:
                    kwargs.update(height=height, width=width)
                kwargs.update(self.pipeline_kwargs)
                output = self.pipeline(**kwargs)
                flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(batch)
                for job, image, nsfw in zip(batch, output.images, flagged):
                    results[job.index] = None if nsfw else self._finish(job, image)
        return results

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


class InstructPix2PixEditor(_DiffusionEditor):
    """Edits with InstructPix2Pix: the instruction text is the prompt, the image is the conditioning.

    Args:
        pipeline: a `StableDiffusionInstructPix2PixPipeline` / `StableDiffusionXLInstructPix2PixPipeline`, or a Hub
            id or local folder of one (loaded with `DiffusionPipeline.from_pretrained`, which picks the class from
            `model_index.json`), e.g. "timbrooks/instruct-pix2pix" or "diffusers/sdxl-instructpix2pix-768".
        num_inference_steps, guidance_scale: as in the pipeline (text guidance).
        image_guidance_scale: how closely the output follows the input image (higher keeps more of it).
        seed: seeds each image's own generator, so an edit is reproducible and independent of its batch.
        batch_size: images per pipeline call.
        resolution: longer side of the working size; None uses the model's native side (512 for SD 1.5).
        combine: "join" (default) applies all instructions of an image in one pass, joined with "; " (one
            denoising run per image, no accumulated degradation); "sequential" applies them one after another,
            each pass editing the previous output (closer to single-edit training data, N times the cost).
        device: moves the pipeline there when given.
        pipeline_kwargs: extra arguments of every pipeline call (e.g. `negative_prompt`).
        load_kwargs: arguments of `from_pretrained` when `pipeline` is an id (e.g. `{"torch_dtype": "float16"}`).
        name: overrides `name` (default "instruct_pix2pix").
    """

    name = "instruct_pix2pix"

    def __init__(
        self,
        pipeline: Any = "timbrooks/instruct-pix2pix",
        num_inference_steps: int = 20,
        image_guidance_scale: float = 1.5,
        guidance_scale: float = 7.5,
        seed: int = 0,
        batch_size: int = 4,
        resolution: int | None = None,
        combine: str = "join",
        device: str | torch.device | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        self.image_guidance_scale = image_guidance_scale
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
        from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline

        pipeline = self._load(pipeline, load_kwargs)
        if not isinstance(
            pipeline, (StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline)
        ):
            raise TypeError(
                "InstructPix2PixEditor expects a StableDiffusionInstructPix2PixPipeline or "
                f"StableDiffusionXLInstructPix2PixPipeline (or an id / folder of one), got {type(pipeline).__name__}"
            )
        return pipeline

    def _call_kwargs(self) -> dict[str, Any]:
        return {"image_guidance_scale": self.image_guidance_scale}

    def _job(self, index, image, step, prompt, size) -> _Job:
        return _Job(index, image, _JOIN.join(item.instruction for item in step))


class InpaintEditor(_DiffusionEditor):
    """Repaints the `region` box of each instruction with an inpainting model, keeping every other pixel.

    The mask of an instruction is its `region` grown by `mask_dilation` (a fraction of the image side; inpainting
    blends better with some context) and the prompt is `prompt_fn(instruction, prompt)` (`default_inpaint_prompt`:
    a caption of what to paint, e.g. "red circle"). With `paste_back=True` (default) the output is composited onto
    the original through the mask, so pixels outside the mask are exactly the original ones: the VAE round trip and
    resizing cannot alter them, and the preference pair differs only where the critic asked.

    Instructions without a `region`: `missing_region="fail"` (default) makes the image's edit fail (None), because
    a whole-image inpainting is a regeneration, not an edit; `"full"` uses the whole image as the mask instead.

    Args:
        pipeline: a `StableDiffusionInpaintPipeline` / `StableDiffusionXLInpaintPipeline` or an id / folder of one,
            e.g. "stable-diffusion-v1-5/stable-diffusion-inpainting" or
            "diffusers/stable-diffusion-xl-1.0-inpainting-0.1". A text-to-image pipeline is converted with
            `AutoPipelineForInpainting.from_pipe` (diffusers then inpaints by latent blending).
        strength: how much of the masked area is re-noised (1.0 repaints it entirely).
        combine: "sequential" (default) inpaints each instruction's region with its own prompt, one after the
            other; "join" inpaints the union of the regions once, with the prompts joined by "; ".
        Others as in `InstructPix2PixEditor`; `name` defaults to "inpaint".
    """

    name = "inpaint"

    def __init__(
        self,
        pipeline: Any = "stable-diffusion-v1-5/stable-diffusion-inpainting",
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        strength: float = 1.0,
        mask_dilation: float = 0.02,
        missing_region: str = "fail",
        prompt_fn: Callable[[EditInstruction, str], str] | None = None,
        paste_back: bool = True,
        seed: int = 0,
        batch_size: int = 4,
        resolution: int | None = None,
        combine: str = "sequential",
        device: str | torch.device | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0 (a fraction of the image side), got {mask_dilation}")
        if missing_region not in ("fail", "full"):
            raise ValueError(f"missing_region must be 'fail' or 'full', got {missing_region!r}")
        self.strength = strength
        self.mask_dilation = mask_dilation
        self.missing_region = missing_region
        self.prompt_fn = prompt_fn or default_inpaint_prompt
        self.paste_back = paste_back
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
        if "mask_image" not in inspect.signature(pipeline.__call__).parameters:
            from diffusers import AutoPipelineForInpainting

            try:
                pipeline = AutoPipelineForInpainting.from_pipe(pipeline)
            except ValueError as err:
                raise TypeError(
                    "InpaintEditor expects a StableDiffusionInpaintPipeline or StableDiffusionXLInpaintPipeline "
                    f"(or a text-to-image pipeline convertible to one), got {type(pipeline).__name__}: {err}"
                ) from err
        return pipeline

    def _call_kwargs(self) -> dict[str, Any]:
        return {"strength": self.strength}

    def _job(self, index, image, step, prompt, size) -> _Job | None:
        regions = [item.region for item in step]
        if any(region is None for region in regions):
            if self.missing_region == "fail":
                return None
            regions = [(0.0, 0.0, 1.0, 1.0)]
        mask = region_mask(image.size, regions, self.mask_dilation)
        work_mask = region_mask(size, regions, self.mask_dilation)
        text = _JOIN.join(self.prompt_fn(item, prompt) for item in step)
        return _Job(index, image, text, extras={"mask_image": work_mask}, mask=mask if self.paste_back else None)


class ControlNetEditor(_DiffusionEditor):
    """Regenerates the image (img2img) with its structure held by a ControlNet condition computed from it.

    The prompt is the original prompt followed by the instructions (`rewrite_prompt`); the condition is
    `canny_edges(image)` for `condition="canny"`, or `condition(image) -> PIL.Image` for a callable (depth, pose, ...
    computed by your own model). Good for global changes (style, lighting, background) that must keep the layout.

    Args:
        pipeline: a `StableDiffusionControlNetImg2ImgPipeline` / `StableDiffusionXLControlNetImg2ImgPipeline` (a
            text-to-image ControlNet pipeline is converted with `AutoPipelineForImage2Image.from_pipe`), an id or
            folder of one, or a pair `(base id, controlnet id)`, e.g.
            `("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/sd-controlnet-canny")` or
            `("stabilityai/stable-diffusion-xl-base-1.0", "diffusers/controlnet-canny-sdxl-1.0")`.
        condition: "canny" or a callable computing the control image from the original.
        strength: img2img strength (how much of the original is re-noised; 1.0 ignores its colors).
        controlnet_conditioning_scale: weight of the ControlNet residuals.
        canny_thresholds: `(low, high)` of `canny_edges`.
        Others as in `InstructPix2PixEditor`; `name` defaults to "controlnet_<condition>" ("controlnet" for a
        callable condition).
    """

    def __init__(
        self,
        pipeline: Any = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/sd-controlnet-canny"),
        condition: str | Callable[[Image.Image], Image.Image] = "canny",
        strength: float = 0.8,
        controlnet_conditioning_scale: float = 1.0,
        canny_thresholds: tuple[float, float] = (100.0, 200.0),
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        seed: int = 0,
        batch_size: int = 4,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if condition != "canny" and not callable(condition):
            raise ValueError(f"condition must be 'canny' or a callable image -> control image, got {condition!r}")
        self.condition = condition
        self.strength = strength
        self.controlnet_conditioning_scale = controlnet_conditioning_scale
        self.canny_thresholds = tuple(canny_thresholds)
        self.name = f"controlnet_{condition}" if isinstance(condition, str) else "controlnet"
        super().__init__(
            pipeline,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            batch_size=batch_size,
            resolution=resolution,
            combine="join",
            device=device,
            pipeline_kwargs=pipeline_kwargs,
            load_kwargs=load_kwargs,
            name=name,
        )

    def _prepare_pipeline(self, pipeline: Any, load_kwargs: dict[str, Any]) -> Any:
        from diffusers import AutoPipelineForImage2Image

        controlnet = None
        if isinstance(pipeline, tuple):
            if len(pipeline) != 2:
                raise ValueError(f"expected a pair (base model id, controlnet id), got {pipeline!r}")
            from diffusers import ControlNetModel

            base, controlnet_id = pipeline
            kwargs = dict(load_kwargs)
            if isinstance(kwargs.get("torch_dtype"), str) and kwargs["torch_dtype"] != "auto":
                kwargs["torch_dtype"] = getattr(torch, kwargs["torch_dtype"])
            controlnet = ControlNetModel.from_pretrained(os.fspath(controlnet_id), **kwargs)
            pipeline = base
        pipeline = self._load(pipeline, load_kwargs)
        parameters = inspect.signature(pipeline.__call__).parameters
        if controlnet is not None or "strength" not in parameters or "control_image" not in parameters:
            extra = {} if controlnet is None else {"controlnet": controlnet}
            if controlnet is None and getattr(pipeline, "controlnet", None) is None:
                raise TypeError(
                    "ControlNetEditor expects a ControlNet pipeline, an id / folder of one, or a pair (base id, "
                    f"controlnet id); got {type(pipeline).__name__} without a controlnet"
                )
            pipeline = AutoPipelineForImage2Image.from_pipe(pipeline, **extra)
        return pipeline

    def _call_kwargs(self) -> dict[str, Any]:
        return {"strength": self.strength, "controlnet_conditioning_scale": self.controlnet_conditioning_scale}

    def control_image(self, image: Image.Image) -> Image.Image:
        """The ControlNet condition of an image, at the image's size."""
        if self.condition == "canny":
            return canny_edges(image, *self.canny_thresholds)
        control = self.condition(image)
        if not isinstance(control, Image.Image):
            raise TypeError(f"condition must return a PIL image, got {type(control).__name__}")
        return control.convert("RGB")

    def _job(self, index, image, step, prompt, size) -> _Job:
        control = self.control_image(image).resize(size, Image.BILINEAR)
        return _Job(index, image, rewrite_prompt(prompt, step), extras={"control_image": control})


class Img2ImgEditor(_DiffusionEditor):
    """SDEdit-style editing: re-noises the image to `strength` and denoises it under the rewritten prompt.

    The prompt is the original prompt followed by the instructions (`rewrite_prompt`). Cheap and model-agnostic
    (any text-to-image checkpoint works), but it changes the whole image; best for "style" and global edits.

    Args:
        pipeline: a `StableDiffusionImg2ImgPipeline` / `StableDiffusionXLImg2ImgPipeline`, a text-to-image pipeline
            (converted with `AutoPipelineForImage2Image.from_pipe`), or an id / folder of one, e.g.
            "stable-diffusion-v1-5/stable-diffusion-v1-5" or "stabilityai/stable-diffusion-xl-base-1.0".
        strength: fraction of the denoising schedule re-run (0 keeps the image, 1 regenerates it).
        Others as in `InstructPix2PixEditor`; `name` defaults to "img2img".
    """

    name = "img2img"

    def __init__(
        self,
        pipeline: Any = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        strength: float = 0.5,
        num_inference_steps: int = 30,
        guidance_scale: float = 7.5,
        seed: int = 0,
        batch_size: int = 4,
        resolution: int | None = None,
        device: str | torch.device | None = None,
        pipeline_kwargs: dict[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        self.strength = strength
        super().__init__(
            pipeline,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            batch_size=batch_size,
            resolution=resolution,
            combine="join",
            device=device,
            pipeline_kwargs=pipeline_kwargs,
            load_kwargs=load_kwargs,
            name=name,
        )

    def _prepare_pipeline(self, pipeline: Any, load_kwargs: dict[str, Any]) -> Any:
        pipeline = self._load(pipeline, load_kwargs)
        parameters = inspect.signature(pipeline.__call__).parameters
        if "strength" not in parameters or "mask_image" in parameters or "control_image" in parameters:
            from diffusers import AutoPipelineForImage2Image

            try:
                pipeline = AutoPipelineForImage2Image.from_pipe(pipeline)
            except ValueError as err:
                raise TypeError(
                    "Img2ImgEditor expects an SD 1.5 / SDXL img2img or text-to-image pipeline (or an id / folder of "
                    f"one), got {type(pipeline).__name__}: {err}"
                ) from err
        return pipeline

    def _call_kwargs(self) -> dict[str, Any]:
        return {"strength": self.strength}

    def _job(self, index, image, step, prompt, size) -> _Job:
        return _Job(index, image, rewrite_prompt(prompt, step))


# ----------------------------------------------------------------------------------------------------------------
# Router
# ----------------------------------------------------------------------------------------------------------------


def edit_masks(editor: Any, n: int) -> list[Image.Image | None]:
    """The masks of the region each of an editor's last `n` outputs changed (its `last_masks`), else n Nones.

    The editor protocol's optional per-call state, like `last_methods`: an editor that knows where it edited
    (inpainting with paste-back, a pixel editor) sets `last_masks` to one mode "L" mask or None per image.
    """
    masks = getattr(editor, "last_masks", None)
    if isinstance(masks, (list, tuple)) and len(masks) == n:
        return [mask if isinstance(mask, Image.Image) else None for mask in masks]
    return [None] * n


def _editor_name(editor: Any) -> str:
    return str(getattr(editor, "name", None) or type(editor).__name__)


class EditorRouter:
    """Dispatches each instruction to an editor by its `kind`, chaining editors when an image needs several.

    An image's instructions are split into runs of consecutive instructions that route to the same editor; the
    runs are applied in order, each editor receiving the previous one's output (so `[recolor, style]` with
    `{"recolor": inpaint, "style": img2img}` inpaints, then restyles the inpainted image). Within a run all the
    instructions go to the editor in one call, and images are batched: step k of every image is sent to its
    editor in one call per editor.

    An instruction whose kind (None included) has no route goes to `default`; with no default the image's edit
    fails (None). If any editor returns None for an image, the image's result is None.

    Which editors edited each image: after every call, `last_methods[i]` is the "+"-joined names of the editors
    that were applied to image i, in order (e.g. "inpaint+img2img"), "" when no route matched. A dataset builder
    should record `last_methods[i]` as the row's `edit_method` when the editor has the attribute, and `name`
    otherwise; `name` itself is "router(<sorted editor names>)". `last_masks[i]` is the union of the chained
    editors' masks (`edit_masks`), None when one of them edits anywhere. Both are per-call state: read them
    before the next call.
    """

    def __init__(self, routes: dict[str, Any], default: Any | None = None):
        if not isinstance(routes, dict) or not all(isinstance(k, str) for k in routes):
            raise TypeError(f"routes must be a dict from instruction kind (str) to editor, got {routes!r}")
        for kind, editor in [*routes.items(), *([("default", default)] if default is not None else [])]:
            if not callable(editor):
                raise TypeError(
                    f"the editor for {kind!r} must be callable (images, instructions, prompts), got {editor!r}"
                )
        if not routes and default is None:
            raise ValueError("an EditorRouter needs at least one route or a default editor")
        self.routes = dict(routes)
        self.default = default
        self.last_methods: list[str] = []

    @property
    def name(self) -> str:
        editors = [*self.routes.values(), *([self.default] if self.default is not None else [])]
        return f"router({'+'.join(sorted({_editor_name(e) for e in editors}))})"

    def route(self, instruction: EditInstruction) -> Any | None:
        """The editor of an instruction: its kind's route, else the default (None when neither exists)."""
        if instruction.kind is not None and instruction.kind in self.routes:
            return self.routes[instruction.kind]
        return self.default

    def plan(self, instructions: Sequence[EditInstruction]) -> list[tuple[Any, list[EditInstruction]]] | None:
        """The editor runs of one image's instructions, in order; None if an instruction has no editor."""
        runs: list[tuple[Any, list[EditInstruction]]] = []
        for instruction in instructions:
            editor = self.route(instruction)
            if editor is None:
                return None
            if runs and runs[-1][0] is editor:
                runs[-1][1].append(instruction)
            else:
                runs.append((editor, [instruction]))
        return runs

    def __call__(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[Sequence[EditInstruction | dict | str]],
        prompts: Sequence[str] | None = None,
    ) -> list[Image.Image | None]:
        """The edited images, one per input; None where no editor matched or an editor failed."""
        images, instructions, prompts = coerce_edit_batch(images, instructions, prompts)
        plans = [self.plan(items) for items in instructions]
        current: list[Image.Image | None] = [image if plan is not None else None for image, plan in zip(images, plans)]
        methods: list[list[str]] = [[] for _ in images]
        masks: list[list[Image.Image | None]] = [[] for _ in images]
        for step in range(max((len(p) for p in plans if p is not None), default=0)):
            groups: dict[int, tuple[Any, list[int]]] = {}
            for i, plan in enumerate(plans):
                if plan is not None and current[i] is not None and step < len(plan):
                    editor = plan[step][0]
                    groups.setdefault(id(editor), (editor, []))[1].append(i)
            for editor, indices in groups.values():
                outputs = editor(
                    [current[i] for i in indices], [plans[i][step][1] for i in indices], [prompts[i] for i in indices]
                )
                if len(outputs) != len(indices):
                    raise RuntimeError(
                        f"editor {_editor_name(editor)!r} returned {len(outputs)} images for {len(indices)} inputs"
                    )
                used = edit_masks(editor, len(indices))
                for i, output, mask in zip(indices, outputs, used):
                    methods[i].append(_editor_name(editor))
                    masks[i].append(mask)
                    current[i] = output
        self.last_methods = ["+".join(names) for names in methods]
        self.last_masks = [union_masks(m) if image is not None else None for m, image in zip(masks, current)]
        return current
