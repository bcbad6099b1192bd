"""The generator stage: naming stages, and `PipelineGenerator` around a diffusers text-to-image pipeline."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping, Sequence
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
            self._check_arguments(self._pipeline)
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
            self._check_arguments(pipeline)
            self._pipeline = pipeline
        return self._pipeline

    def _check_arguments(self, pipeline: Any) -> None:
        """Refuses settings the pipeline would ignore or change, so the manifest and card never record them."""
        name = type(pipeline).__name__
        multiple = _size_multiple(pipeline)
        if self.args.resolution is not None and multiple and self.args.resolution % multiple:
            raise ValueError(
                f"RichPreferenceConfig.resolution is {self.args.resolution}, but {name} needs sides that are a "
                f"multiple of {multiple} (it would resize the images to another size); use e.g. "
                f"{self.args.resolution // multiple * multiple or multiple}."
            )
        if self.args.max_sequence_length is not None and not _accepts(pipeline, "max_sequence_length"):
            raise ValueError(
                f"RichPreferenceConfig.max_sequence_length is set, but {name} takes no max_sequence_length (it has "
                "no T5 text encoder); unset it."
            )
        if self.args.negative_prompt is None:
            return
        reason = _ignored_negative_prompt(pipeline)
        if reason is not None:
            raise ValueError(
                f"RichPreferenceConfig.negative_prompt is set, but {reason}, so it would not change the images. "
                "Unset negative_prompt, or pass as generator a callable `generator(prompts, seeds)` that calls the "
                "pipeline with the arguments it needs."
            )

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        from ...families import guidance_call_kwargs

        kwargs: dict[str, Any] = {
            "prompt": list(prompts),
            "num_inference_steps": self.args.num_inference_steps,
            # CFG in the convention of the pipeline's model family (Qwen-Image: true_cfg_scale).
            **guidance_call_kwargs(self.pipeline, self.args.guidance_scale, len(prompts)),
            # CPU generators: the same seed gives the same image on any device.
            "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            "output_type": "pil",
        }
        if self.args.resolution is not None:
            kwargs["height"] = kwargs["width"] = self.args.resolution
        if self.args.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.args.negative_prompt] * len(prompts)
        if self.args.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.args.max_sequence_length
        return list(self.pipeline(**kwargs).images)


def _size_multiple(pipeline: Any) -> int | None:
    """The number image sides must be a multiple of for `pipeline`, or None when it does not say.

    The VAE's downsampling factor, times what the denoiser groups on top of it: FLUX.1 packs 2x2 latent patches
    (its image processor's factor is twice the VAE's, and it silently resizes other sizes), SD3's transformer has a
    `patch_size` (it raises on other sizes).
    """
    factor = getattr(pipeline, "vae_scale_factor", None)
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        return None
    processor_config = getattr(getattr(pipeline, "image_processor", None), "config", None)
    processed = getattr(processor_config, "vae_scale_factor", None)
    processed = processed if isinstance(processed, int) and processed > 0 else factor
    patch = getattr(pipeline, "patch_size", None)
    patch = patch if isinstance(patch, int) and patch > 0 else 1
    return math.lcm(processed, factor * patch)


def _call_parameters(pipeline: Any) -> Mapping[str, inspect.Parameter] | None:
    """The parameters of `pipeline.__call__`, or None for a callable without a readable signature."""
    try:
        return inspect.signature(pipeline.__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - a callable without a signature
        return None


def _accepts(pipeline: Any, argument: str) -> bool:
    """Whether `pipeline.__call__` names `argument`. Diffusers pipelines name every argument they use; a catch-all
    `**kwargs` (StableDiffusionPipeline's, for deprecated callbacks) would drop it without a word."""
    parameters = _call_parameters(pipeline)
    return parameters is None or argument in parameters


def _ignored_negative_prompt(pipeline: Any) -> str | None:
    """Why `pipeline(prompt=..., negative_prompt=..., guidance_scale=...)` would not use the negative prompt, or None.

    Pipelines with a `true_cfg_scale` argument (FLUX.1, whose `guidance_scale` is the distilled guidance embedding)
    run classifier-free guidance, and so read a negative prompt, only when `true_cfg_scale > 1`; the generator does
    not pass it, so with a default of 1 the negative prompt is dropped without a warning.
    """
    parameters = _call_parameters(pipeline)
    if parameters is None:
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    name = type(pipeline).__name__
    if "negative_prompt" not in parameters:
        return f"{name} takes no negative_prompt"
    true_cfg = parameters.get("true_cfg_scale")
    if true_cfg is not None and isinstance(true_cfg.default, (int, float)) and true_cfg.default <= 1:
        return (
            f"{name} applies a negative prompt only with true_cfg_scale > 1 (true classifier-free guidance; its "
            f"default is {true_cfg.default}), which the builder does not pass"
        )
    return None


def _is_diffusers_pipeline(obj: Any) -> bool:
    try:
        from diffusers import DiffusionPipeline
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return False
    return isinstance(obj, DiffusionPipeline)
