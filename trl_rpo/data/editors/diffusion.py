"""The diffusion editors: InstructPix2Pix, inpainting, ControlNet (canny) and img2img (SDEdit)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from ..schema import EditInstruction
from .base import _DiffusionEditor, _Job
from .helpers import _JOIN, canny_edges, default_inpaint_prompt, region_mask, rewrite_prompt


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
            (converted with `AutoPipelineForImage2Image.from_pipe`; one diffusers gives no img2img sibling, such as
            `Flux2KleinPipeline`, runs its family's SDEdit, `DenoiserFamily.img2img`), or an id / folder of one, e.g.
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
        if int(num_inference_steps * strength) < 1:
            # diffusers' img2img pipelines run int(num_inference_steps * strength) steps and fail on zero.
            raise ValueError(f"strength {strength} x num_inference_steps {num_inference_steps} runs no denoising "
                             "step (img2img runs int(steps x strength)); raise either")  # fmt: skip
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
        from ...families import find_family

        pipeline = self._load(pipeline, load_kwargs)
        self._sdedit = None  # the family's SDEdit on a pipeline diffusers has no img2img sibling of
        parameters = inspect.signature(pipeline.__call__).parameters
        if "strength" not in parameters or "mask_image" in parameters or "control_image" in parameters:
            from diffusers import AutoPipelineForImage2Image

            try:
                converted = AutoPipelineForImage2Image.from_pipe(pipeline)
            except ValueError as err:
                raise TypeError(
                    "Img2ImgEditor expects an img2img or text-to-image pipeline (SD 1.5, SDXL, SD3, FLUX.1, "
                    f"Qwen-Image, Z-Image, FLUX.2 [klein]; or an id / folder of one), got {type(pipeline).__name__}: "
                    f"{err}"
                ) from err
            if "strength" in inspect.signature(converted.__call__).parameters:
                return converted
            family = find_family(pipeline)
            self._sdedit = family.img2img(pipeline) if family is not None else None
            if self._sdedit is None:
                raise TypeError(
                    f"{type(pipeline).__name__} has no img2img sibling that re-noises to a `strength` (diffusers maps "
                    "it to itself) and its model family does no SDEdit of its own (`DenoiserFamily.img2img`), so "
                    "SDEdit refinement cannot run on it; refine with another family's pipeline"
                )
        return pipeline

    def _call_pipeline(self, kwargs: dict[str, Any]) -> Any:
        return self.pipeline(**kwargs) if self._sdedit is None else self._sdedit(**kwargs)

    def _call_kwargs(self) -> dict[str, Any]:
        return {"strength": self.strength}

    def _job(self, index, image, step, prompt, size) -> _Job:
        return _Job(index, image, rewrite_prompt(prompt, step))
