"""The shapes world's pretrained base model, shipped with the package (made by `trl_rpo.shapes.pretrain`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_DIR", "load_pipeline", "training_info"]

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"


def load_pipeline(path: str | os.PathLike | None = None, torch_dtype: Any = None, device: str | None = None):
    """The shapes base model as a standard `StableDiffusionPipeline`, loaded offline.

    Args:
        path: a pipeline folder written by `trl_rpo.shapes.pretrain` (or `save_pretrained`); default: the
            checkpoint shipped in `trl_rpo/shapes/checkpoint`.
        torch_dtype: dtype to load the weights in (default float32).
        device: where to move the pipeline (default: stays on the CPU).
    """
    from diffusers import StableDiffusionPipeline

    folder = Path(path) if path is not None else CHECKPOINT_DIR
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{folder} holds no model_index.json: not a pipeline folder. Make one with "
            "`python -m trl_rpo.shapes.pretrain --output-dir DIR`, or omit the path to use the shipped checkpoint."
        )
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipeline = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs)
    pipeline.set_progress_bar_config(disable=True)
    if device is not None:
        pipeline.to(device)
    return pipeline


def training_info(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The record `pretrain` wrote with a checkpoint: its config, losses, wall time and base alignment."""
    folder = Path(path) if path is not None else CHECKPOINT_DIR
    return json.loads((folder / "training_info.json").read_text(encoding="utf-8"))
