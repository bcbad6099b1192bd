"""Images to experiment trackers, through each integration's public API (TensorBoard, Weights & Biases).

`transformers.Trainer` logs scalars through its callbacks; images need the tracker's own call. The callbacks are
recognised by class (`transformers.integrations`), so a subclass of either works; TensorBoard gets the callback's
`SummaryWriter.add_images`, W&B its run through the public `wandb` module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from PIL import Image

__all__ = ["send_images_to_trackers"]


def send_images_to_trackers(
    callbacks: Iterable[Any], images: Sequence[Image.Image], captions: Sequence[str], step: int, tag: str
) -> list[str]:
    """Log `images` under `tag` at `step` to every tracker among `callbacks`; returns the trackers written to."""
    import numpy as np
    from transformers.integrations import TensorBoardCallback, WandbCallback

    written = []
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and getattr(callback, "tb_writer", None) is not None:
            stacked = np.stack([np.asarray(image.convert("RGB")) for image in images])
            callback.tb_writer.add_images(tag, stacked, step, dataformats="NHWC")
            written.append("tensorboard")
        elif isinstance(callback, WandbCallback):
            import wandb  # WandbCallback exists only when wandb is installed

            if wandb.run is not None:
                wandb.log({tag: [wandb.Image(im, caption=c) for im, c in zip(images, captions)]}, step=step)
                written.append("wandb")
    return written
