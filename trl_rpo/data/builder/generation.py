"""The generator stage: naming stages, and `PipelineGenerator` around a diffusers text-to-image pipeline."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ...rewards.base import reward_name
from .config import RichPreferenceConfig
from .shards import _process_state

__all__ = ["PipelineGenerator", "stage_name"]


def stage_name(stage: Any) -> str:
    """A stable, human-readable name of a stage: its own `repr` when it defines one, else its name."""
    if isinstance(stage, str):
        return stage
    if not inspect.isroutine(stage) and type(stage).__repr__ is not object.__repr__:
        return repr(stage)
    return reward_name(stage)


class PipelineGenerator:
    """The generator stage around a diffusers text-to-image pipeline (an object, a Hub id or a local folder).

    A Hub id or folder is loaded with `DiffusionPipeline.from_pretrained` on first use, so building the builder is
    cheap and a resumed run whose work is all done never loads the model.
    """

    def __init__(self, pipeline: Any, args: RichPreferenceConfig):
        self._pipeline = None if isinstance(pipeline, (str, os.PathLike)) else pipeline
        self._source = os.fspath(pipeline) if isinstance(pipeline, (str, os.PathLike)) else None
        self.args = args
        if self._pipeline is not None:
            config = getattr(self._pipeline, "config", None) or {}
            self.name = getattr(self._pipeline, "name_or_path", None) or config.get("_name_or_path") or ""
            # from_pretrained(Path) leaves a Path in name_or_path; the manifest and the card need a string.
            self.name = str(self.name or type(self._pipeline).__name__)
        else:
            self.name = self._source

    def __repr__(self) -> str:
        return self.name

    @property
    def pipeline(self):
        """The diffusers pipeline, loaded (and moved to the configured device) on first access."""
        if self._pipeline is None:
            import torch
            from diffusers import DiffusionPipeline

            kwargs = {}
            if self.args.torch_dtype not in (None, "auto"):
                kwargs["torch_dtype"] = getattr(torch, self.args.torch_dtype)
            try:
                pipeline = DiffusionPipeline.from_pretrained(self._source, **kwargs)
            except (OSError, ValueError) as err:
                raise OSError(
                    f"could not load the generator {self._source!r}: {err}. Pass a local folder written by "
                    "`pipeline.save_pretrained`, a pipeline object, a callable, or a Hub id reachable from here."
                ) from err
            pipeline.to(self.args.device or _process_state().device)
            if hasattr(pipeline, "set_progress_bar_config"):
                pipeline.set_progress_bar_config(disable=True)
            self._pipeline = pipeline
        return self._pipeline

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        kwargs: dict[str, Any] = {
            "prompt": list(prompts),
            "num_inference_steps": self.args.num_inference_steps,
            "guidance_scale": self.args.guidance_scale,
            # CPU generators: the same seed gives the same image on any device.
            "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            "output_type": "pil",
        }
        if self.args.resolution is not None:
            kwargs["height"] = kwargs["width"] = self.args.resolution
        if self.args.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.args.negative_prompt] * len(prompts)
        return list(self.pipeline(**kwargs).images)


def _is_diffusers_pipeline(obj: Any) -> bool:
    try:
        from diffusers import DiffusionPipeline
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return False
    return isinstance(obj, DiffusionPipeline)
