"""Validation images during training: rendered with the current weights (ZeRO-3 included), saved, tracked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .zero import gathered_state_dict, is_zero3, unpartitioned_copy

__all__ = ["ValidationImagesCallback", "ValidationImagesMixin"]


class ValidationImagesCallback(TrainerCallback):
    """Renders validation images every `validation_steps` steps and at the end of training."""

    def __init__(self, trainer: ValidationImagesMixin):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.validation_steps == 0:
            self.trainer.log_validation_images()

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step % args.validation_steps != 0:
            self.trainer.log_validation_images()


class ValidationImagesMixin:
    """Validation-image methods of [`BaseDiffusionTrainer`]: it provides `pipeline`, `family`, `is_flow`,
    `weight_dtype`, `resolution`, `peft_config`, `_unwrapped_unet` and `_frozen_modules`."""

    @torch.no_grad()
    def generate_validation_images(self) -> list:
        """Images of `args.validation_prompts` with the current weights (fixed seed, so runs are comparable)."""
        args = self.args
        unet = self._unwrapped_unet()
        was_training = unet.training
        unet.eval()
        device = self.accelerator.device
        frozen_devices = {m: next(m.parameters()).device for m in self._frozen_modules()}
        for module in frozen_devices:
            module.to(device)
        try:
            generator = torch.Generator(device="cpu").manual_seed(args.seed)
            autocast = torch.autocast(device.type, dtype=self.weight_dtype, enabled=self.weight_dtype != torch.float32)
            with autocast:
                images = self.pipeline(
                    prompt=list(args.validation_prompts),
                    num_images_per_prompt=args.num_validation_images,
                    num_inference_steps=args.validation_num_inference_steps,
                    height=self.resolution,
                    width=self.resolution,
                    generator=generator,
                    **self.pipeline_call_kwargs(args.validation_guidance_scale, len(args.validation_prompts)),
                ).images
        finally:
            for module, original in frozen_devices.items():
                module.to(original)
            unet.train(was_training)
        return images

    def pipeline_call_kwargs(self, guidance_scale: float | None = None, num_prompts: int = 1) -> dict[str, Any]:
        """Keywords of this family's pipeline call: the CFG scale in its convention (`guidance_scale`, Qwen-Image's
        `true_cfg_scale` with a negative prompt) and the text length `max_sequence_length` where it takes one."""
        return self.model_adapter.pipeline_call_kwargs(guidance_scale, num_prompts)

    def log_validation_images(self) -> None:
        """Render validation images, save them under `output_dir/validation/step-N/` and send them to trackers.

        Every process must call it (the callback does): under ZeRO-3 all of them gather the UNet's weights; the
        main process alone renders, saves and logs.
        """
        if not self.args.validation_prompts:
            return
        if is_zero3(self.accelerator):
            images = self._generate_validation_images_from_shards()
        else:
            images = self.generate_validation_images() if self.is_world_process_zero() else None
        if images is None:
            return
        step = self.state.global_step
        folder = Path(self.args.output_dir) / "validation" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        n = self.args.num_validation_images
        captions = [p for p in self.args.validation_prompts for _ in range(n)]
        for i, image in enumerate(images):
            image.save(folder / f"{i // n:03d}-{i % n}.png")
        (folder / "prompts.json").write_text(json.dumps(captions, indent=1))
        self._send_images_to_trackers(images, captions, step)

    def _generate_validation_images_from_shards(self) -> list | None:
        """Validation images under ZeRO-3, rendered by the main process with a whole, hook-free copy of the UNet.

        Each process holds only a shard of the UNet's weights, and DeepSpeed's forward hooks gather them (and
        check the module order) with collectives on every forward. A forward on the main process alone pairs
        those collectives with whatever the other processes run next (in a 2-process run: the loss-logging
        `all_gather`), which hangs or mixes up weights. So every process takes part in gathering the weights
        into a plain copy on the main process (:func:`gathered_state_dict`), which then renders alone.
        """
        unet = self._unwrapped_unet()
        state = gathered_state_dict(unet, self.is_world_process_zero())
        if state is None:
            return None
        whole = unpartitioned_copy(unet, state, self.peft_config).to(self.accelerator.device)
        attribute = self.family.denoiser
        original = getattr(self.pipeline, attribute)
        setattr(self.pipeline, attribute, whole)
        try:
            return self.generate_validation_images()
        finally:
            setattr(self.pipeline, attribute, original)

    def save_and_track_images(self, images: list, captions: list[str], kind: str, step: int | None = None) -> Path:
        """Save images with their captions under `output_dir/<kind>/step-N/` and send them to the trackers."""
        step = self.state.global_step if step is None else step
        folder = Path(self.args.output_dir) / kind / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(folder / f"{i:03d}.png")
        (folder / "captions.json").write_text(json.dumps(captions, indent=1))
        self._send_images_to_trackers(images, captions, step, tag=kind)
        return folder

    def _send_images_to_trackers(self, images, captions, step: int, tag: str = "validation") -> None:
        from .trackers import send_images_to_trackers

        send_images_to_trackers(self.callback_handler.callbacks, images, captions, step, tag)
