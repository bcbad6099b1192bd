"""Diffusion image editors that execute a critic's `EditInstruction`s (the "edit" step of the RPO data pipeline).

Every editor follows the editor protocol (`trl_rpo.data.protocols.Editor`)::

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

from ..protocols import Editor
from .base import _DiffusionEditor as _DiffusionEditor  # the base of custom diffusion editors, and refiners.py's
from .base import _Job as _Job
from .diffusion import ControlNetEditor, Img2ImgEditor, InpaintEditor, InstructPix2PixEditor
from .helpers import canny_edges, default_inpaint_prompt, region_mask, rewrite_prompt
from .router import EditorRouter, edit_masks

__all__ = [
    "ControlNetEditor",
    "Editor",
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
