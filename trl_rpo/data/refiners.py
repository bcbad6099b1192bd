"""Refiners: bring an edited image back onto the generator's own image manifold before it becomes `chosen`.

A pixel or region edit can leave traces no generator makes (pasted shapes, flat removal patches, seams). RPO
executes edits with ControlNet / inpainting for this reason: the chosen image should look like the model's own
work, so that the preference teaches *what* to change rather than "look edited". A refiner is the builder's
optional stage between the editor and the verifier::

    refiner(images: list[PIL.Image], prompts: list[str], masks: list[PIL.Image | None]) -> list[PIL.Image | None]

`masks[i]` is the edit's region (mode "L", 255 = edited) when the editor knows it, else None; None in the result
drops the pair (counted as `refine_failed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from .editors import Img2ImgEditor, _Job
from .masks import dilate_mask

__all__ = ["Img2ImgRefiner"]


class Img2ImgRefiner(Img2ImgEditor):
    """SDEdit refinement with the base model itself: re-noise to `strength`, denoise under the original prompt.

    With `inside_mask=True` and a known edit mask, only the pixels inside the mask grown by `mask_dilation`
    (a fraction of the image side) take the refined values; the rest of the image stays exactly the edited one,
    which is inpainting inside the edit region by paste-back, and works with the pipeline of any registered family:
    SD 1.5, SDXL, SD3 / SD3.5, FLUX.1, Qwen-Image and Z-Image through their img2img siblings
    (`AutoPipelineForImage2Image`: `StableDiffusion3Img2ImgPipeline`, `FluxImg2ImgPipeline`,
    `QwenImageImg2ImgPipeline`, `ZImageImg2ImgPipeline`), and FLUX.2 [klein], which diffusers gives no img2img
    pipeline, through its family's SDEdit on `Flux2KleinPipeline` itself (`DenoiserFamily.img2img`: the same
    encoding, noising and `N - int(N - N strength)` last steps of the pipeline's own schedule as diffusers' flow
    img2img pipelines). Without a mask the whole image is refined. After a call,
    `last_masks[i]` is where image i may have changed (the dilated mask, or None for the whole image).

    Args:
        pipeline: the generator's pipeline (text-to-image or img2img), or an id / folder of one.
        strength: fraction of the schedule re-run; low values (0.2-0.4) keep the edit and restore the model's
            own texture, high values may undo the edit (the verifier then rejects the pair).
        inside_mask: refine only inside the edit mask when one is given.
        mask_dilation: growth of the mask, as a fraction of the image's longer side (covers the edit's seams).
        Others as in `Img2ImgEditor`; `name` defaults to "img2img_refiner".
    """

    name = "img2img_refiner"

    def __init__(
        self,
        pipeline: Any = "stable-diffusion-v1-5/stable-diffusion-v1-5",
        strength: float = 0.3,
        inside_mask: bool = True,
        mask_dilation: float = 0.05,
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
        if mask_dilation < 0:
            raise ValueError(f"mask_dilation must be >= 0 (a fraction of the image side), got {mask_dilation}")
        self.inside_mask = inside_mask
        self.mask_dilation = mask_dilation
        super().__init__(
            pipeline, strength=strength, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            seed=seed, batch_size=batch_size, resolution=resolution, device=device, pipeline_kwargs=pipeline_kwargs,
            load_kwargs=load_kwargs, name=name,
        )  # fmt: skip

    def _multiple(self) -> int:
        if getattr(self.pipeline, "unet", None) is None:  # SD3 / FLUX img2img: a transformer's patch sizes
            from .instruction_editors import transformer_side_multiple

            return transformer_side_multiple(self.pipeline)
        return super()._multiple()

    def _native_side(self) -> int:
        if getattr(self.pipeline, "unet", None) is None:
            from .instruction_editors import transformer_native_side

            return transformer_native_side(self.pipeline, self.resolution)
        return super()._native_side()

    def __call__(  # type: ignore[override]
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        masks: Sequence[Image.Image | None] | None = None,
    ) -> list[Image.Image | None]:
        """The refined images, one per input, at the input sizes."""
        if len(prompts) != len(images):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
        masks = list(masks) if masks is not None else [None] * len(images)
        if len(masks) != len(images):
            raise ValueError(f"got {len(masks)} masks for {len(images)} images")
        jobs = []
        for i, (image, prompt, mask) in enumerate(zip(images, prompts, masks)):
            image = image.convert("RGB")
            paste = None
            if self.inside_mask and mask is not None:
                if mask.size != image.size:
                    raise ValueError(f"mask {i} has size {mask.size}, its image {image.size}")
                paste = dilate_mask(mask, round(self.mask_dilation * max(image.size)))
            jobs.append(_Job(i, image, prompt, mask=paste))
        results = self._run(jobs)
        # Where the refinement may have changed pixels (the editor protocol's `last_masks`): None = anywhere.
        self.last_masks = [job.mask if results.get(job.index) is not None else None for job in jobs]
        return [results.get(i) for i in range(len(images))]

    def __repr__(self) -> str:
        # The builder's fingerprint: every setting that changes the refined pixels.
        extra = {k: v for k, v in (("resolution", self.resolution), ("pipeline_kwargs", self.pipeline_kwargs)) if v}
        settings = "".join(f", {k}={v!r}" for k, v in extra.items())
        return (
            f"{super().__repr__()[:-1]}, strength={self.strength}, inside_mask={self.inside_mask}, "
            f"mask_dilation={self.mask_dilation}{settings})"
        )
