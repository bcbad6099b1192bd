"""Diffusion-DPO (Wallace et al., CVPR 2024) for Stable Diffusion 1.5 and SDXL, LoRA or full fine-tuning."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset, Features

from ..data.formats import load_image, prepare_preference_dataset
from ..data.transforms import prepare_pair
from ..diffusion import diffusion_target, per_sample_mse, sample_pair_noise_and_timesteps
from ..losses import diffusion_dpo_loss
from .base import BaseDiffusionTrainer, encode_images, encode_prompts, process_seed, sdxl_time_ids
from .diffusion_dpo_config import DiffusionDPOConfig
from .model_card import DIFFUSION_DPO_CITATION, RPO_CITATION

logger = logging.getLogger(__name__)

__all__ = ["DataCollatorForDiffusionPreference", "DiffusionDPOTrainer"]

_PRECOMPUTED = "chosen_latents"


@dataclass
class DataCollatorForDiffusionPreference:
    """Batches preference rows as `[chosen; rejected]`.

    Raw rows become `pixel_values` (`[2B, 3, res, res]`, chosen first), `original_sizes` and `crop_top_lefts`
    (`[2B, 2]`, for SDXL micro-conditioning) and `prompt` (B strings). Precomputed rows become `latents`,
    `prompt_embeds` (and `pooled_prompt_embeds`, `time_ids` for SDXL).
    """

    resolution: int
    random_crop: bool = False
    random_flip: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = [ex["prompt"] for ex in examples]
        if _PRECOMPUTED in examples[0]:
            batch = {
                "prompt": prompts,
                "latents": torch.cat(
                    [torch.stack([ex[f"{k}_latents"] for ex in examples]) for k in ("chosen", "rejected")]
                ),
                "prompt_embeds": torch.stack([ex["prompt_embeds"] for ex in examples]),
            }
            if "pooled_prompt_embeds" in examples[0]:
                batch["pooled_prompt_embeds"] = torch.stack([ex["pooled_prompt_embeds"] for ex in examples])
                batch["time_ids"] = torch.cat(
                    [torch.stack([ex[f"{k}_time_ids"] for ex in examples]) for k in ("chosen", "rejected")]
                )
            return batch
        chosen, rejected = [], []
        for ex in examples:
            c, r = prepare_pair(
                load_image(ex["chosen"], column="chosen"),
                load_image(ex["rejected"], column="rejected"),
                self.resolution,
                self.random_crop,
                self.random_flip,
            )
            chosen.append(c)
            rejected.append(r)
        images = chosen + rejected
        return {
            "prompt": prompts,
            "pixel_values": torch.stack([im.pixel_values for im in images]),
            "original_sizes": torch.tensor([im.original_size for im in images]),
            "crop_top_lefts": torch.tensor([im.crop_top_left for im in images]),
        }


class DiffusionDPOTrainer(BaseDiffusionTrainer):
    r"""Trainer for Diffusion-DPO, mirroring TRL's `DPOTrainer` API.

    Args:
        model: a `StableDiffusionPipeline` / `StableDiffusionXLPipeline`, or a Hub id / local folder of one
            (loaded with `DiffusionPipeline.from_pretrained(model, **args.model_init_kwargs)`).
        ref_model: optional frozen reference UNet. Without it, LoRA training uses the UNet with adapters
            disabled (no second copy in memory) and full fine-tuning a frozen copy made before training.
        args: a [`DiffusionDPOConfig`].
        train_dataset / eval_dataset: TRL preference format (`prompt`, `chosen`, `rejected`) or Pick-a-Pic v2
            (`caption`, `jpg_0`, `jpg_1`, `label_0`); validated row by row at construction.
        peft_config: a `peft.LoraConfig` to train LoRA adapters on the UNet; `None` for full fine-tuning.

    After `train()`, `trainer.pipeline` generates with the trained weights.

    Override points for variants (each small, documented in `docs/diffusion_dpo_trainer.md`):
    `encode_batch` (batch -> latents and conditioning), `sample_noise_and_timesteps`,
    `preference_loss` (denoising errors -> losses and rewards), and `unet_forward`.
    """

    _tag_names = ["trl", "trl-rpo", "diffusion-dpo", "diffusers", "text-to-image"]
    _name = "DiffusionDPO"
    _paper = {
        "title": "Diffusion Model Alignment Using Direct Preference Optimization",
        "id": "2311.12908",
        "citation": DIFFUSION_DPO_CITATION,
    }
    _card_method_fields = ("beta", "loss_type", "caption_dropout_probability", "random_crop", "random_flip")
    config_class = DiffusionDPOConfig

    def __init__(
        self,
        model: Any,
        ref_model: torch.nn.Module | None = None,
        args: DiffusionDPOConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict[str, Dataset] | None = None,
        peft_config=None,
        data_collator=None,
        callbacks=None,
        optimizers=(None, None),
    ):
        if args is not None and not isinstance(args, DiffusionDPOConfig):
            raise TypeError(f"args must be a DiffusionDPOConfig, got {type(args).__name__}")
        self._loss_type = args.loss_type if args is not None else "sigmoid"
        self._eval_generator: torch.Generator | None = None
        self._null_conditioning: dict[str, torch.Tensor] | None = None
        super().__init__(
            model=model,
            args=args,
            ref_model=ref_model,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            peft_config=peft_config,
            data_collator=data_collator,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if self.args.precompute_latents and self.args.offload_encoders:
            for module in self._frozen_modules():
                module.to("cpu")

    @property
    def needs_reference(self) -> bool:
        return self._loss_type != "sft"

    def _papers(self) -> list[dict[str, str]]:
        rpo = {"title": "Fine-Tuning Diffusion Generative Models via Rich Preference Optimization", "id": "2503.11720"}
        return [self._paper, {**rpo, "citation": RPO_CITATION}]

    # -- data --------------------------------------------------------------------------------------------------

    def _default_data_collator(self):
        return DataCollatorForDiffusionPreference(self.resolution, self.args.random_crop, self.args.random_flip)

    def _prepare_dataset(self, dataset, name: str):
        args = self.args
        with args.main_process_first(desc=f"preparing {name} dataset"):
            dataset = prepare_preference_dataset(
                dataset,
                skip_invalid_rows=args.skip_invalid_rows,
                num_proc=args.dataset_num_proc,
                name=f"{name}_dataset",
            )
            if len(dataset) == 0:
                raise ValueError(f"{name}_dataset has no usable rows left after validation")
            if args.precompute_latents:
                if args.caption_dropout_probability > 0 and self._null_conditioning is None:
                    self._null_conditioning = encode_prompts(self.pipeline, [""], "cpu")
                dataset = self._precompute(dataset, name)
        return dataset

    def _frozen_signature(self) -> str:
        """Cheap fingerprint of the frozen encoders, so cached latents never outlive the weights they came from."""
        parts = [type(self.pipeline).__name__, str(self.model_name_or_path)]
        for module in self._frozen_modules():
            params = list(module.parameters())
            parts.append(
                f"{sum(p.numel() for p in params)}:"
                f"{params[0].float().sum().item():.6e}:{params[-1].float().sum().item():.6e}"
            )
            parts.append(str(next(module.parameters()).dtype))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def _precompute(self, dataset: Dataset, name: str) -> Dataset:
        """Encode images and prompts once; steps then run only the UNet."""
        from datasets.fingerprint import Hasher

        args = self.args
        collate = self._default_data_collator()
        device = args.device

        def encode(batch: dict[str, list]) -> dict[str, Any]:
            rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
            raw = collate(rows)
            latents = encode_images(self.pipeline.vae, raw["pixel_values"].to(device)).cpu()
            half = len(rows)
            cond = encode_prompts(self.pipeline, raw["prompt"], "cpu")
            out = {
                "chosen_latents": latents[:half].numpy(),
                "rejected_latents": latents[half:].numpy(),
                "prompt_embeds": cond["prompt_embeds"].float().numpy(),
            }
            if self.is_sdxl:
                time_ids = sdxl_time_ids(raw["original_sizes"], raw["crop_top_lefts"], self.resolution)
                out["pooled_prompt_embeds"] = cond["pooled_prompt_embeds"].float().numpy()
                out["chosen_time_ids"], out["rejected_time_ids"] = time_ids[:half].numpy(), time_ids[half:].numpy()
            return out

        fingerprint = Hasher.hash(
            [
                dataset._fingerprint,
                self._frozen_signature(),
                self.resolution,
                args.random_crop,
                args.random_flip,
                args.seed,
            ]
        )
        encoded = dataset.map(
            encode,
            batched=True,
            batch_size=args.precompute_batch_size or args.per_device_train_batch_size,
            remove_columns=["chosen", "rejected"],
            features=self._precomputed_features(dataset, encode),
            new_fingerprint=fingerprint,
            desc=f"Precomputing latents and text embeddings ({name})",
        )
        numeric = [c for c in encoded.column_names if c != "prompt"]
        return encoded.with_format("torch", columns=numeric, output_all_columns=True)

    @staticmethod
    def _precomputed_features(dataset: Dataset, encode) -> Features:
        """Fixed-shape array features for the encoded columns (probed on one row).

        Stored as nested lists, every batch would be rebuilt element by element when read back; fixed-shape
        arrays load as whole tensors (the step's data loading drops from ~15 ms to a few ms on tiny models).
        """
        import random

        from datasets import Array2D, Array3D, Sequence, Value

        state = random.getstate()
        with torch.random.fork_rng():  # the probe must not shift the random crops / VAE samples of the real pass
            probe = encode(dataset[:1])
        random.setstate(state)
        features = Features({k: v for k, v in dataset.features.items() if k not in ("chosen", "rejected")})
        for key, value in probe.items():
            shape = tuple(value.shape[1:])
            if len(shape) == 3:
                features[key] = Array3D(shape=shape, dtype="float32")
            elif len(shape) == 2:
                features[key] = Array2D(shape=shape, dtype="float32")
            else:
                features[key] = Sequence(Value("float32"), length=shape[0])
        return features

    # -- the step ----------------------------------------------------------------------------------------------

    def encode_batch(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Latents `[2B, C, h, w]` (chosen first) and UNet conditioning for all `2B` images.

        Caption dropout is drawn once per pair, so chosen and rejected always see the same (possibly empty)
        prompt.
        """
        prompts = list(inputs["prompt"])
        device = self.accelerator.device
        drop = None
        if self.model.training:
            drop = torch.rand(len(prompts), generator=self.rank_generator) < self.args.caption_dropout_probability
        if "latents" in inputs:
            latents = inputs["latents"].float()
            cond = {k: inputs[k] for k in ("prompt_embeds", "pooled_prompt_embeds") if k in inputs}
            if drop is not None and drop.any():
                for key, value in cond.items():
                    null = self._null_conditioning[key].to(device=value.device, dtype=value.dtype)
                    value[drop.to(value.device)] = null
        else:
            latents = encode_images(self.pipeline.vae, inputs["pixel_values"], self._eval_generator_or_none())
            if drop is not None:
                prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
            cond = encode_prompts(self.pipeline, prompts, device)
        conditioning = {k: torch.cat([v, v]) for k, v in cond.items()}
        if self.is_sdxl:
            conditioning["time_ids"] = (
                inputs["time_ids"]
                if "time_ids" in inputs
                else sdxl_time_ids(inputs["original_sizes"], inputs["crop_top_lefts"], self.resolution)
            ).to(device)
        return latents.to(device), conditioning

    def _eval_generator_or_none(self) -> torch.Generator | None:
        return None if self.model.training else self._eval_generator

    def sample_noise_and_timesteps(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same noise and timestep for both images of a pair, from this process's own stream (each process draws
        its own); seeded afresh during evaluation so eval losses compare."""
        generator = self._eval_generator_or_none()
        generator = generator if generator is not None else self.rank_generator
        return sample_pair_noise_and_timesteps(latents, self.noise_scheduler.config.num_train_timesteps, generator)

    def preference_loss(
        self,
        policy_chosen_err: torch.Tensor,
        policy_rejected_err: torch.Tensor,
        ref_chosen_err: torch.Tensor | None,
        ref_rejected_err: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-pair losses and implicit rewards; see [`diffusion_dpo_loss`]."""
        return diffusion_dpo_loss(
            policy_chosen_err,
            policy_rejected_err,
            ref_chosen_err,
            ref_rejected_err,
            self.args.beta,
            self.args.loss_type,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        latents, conditioning = self.encode_batch(inputs)
        noise, timesteps = self.sample_noise_and_timesteps(latents)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = diffusion_target(self.noise_scheduler, latents, noise, timesteps, self.prediction_type)

        # One UNet call on the stacked pair (not one per branch), with and without gradients.
        policy_err = per_sample_mse(self.unet_forward(model, noisy, timesteps, conditioning), target)
        policy_chosen_err, policy_rejected_err = policy_err.chunk(2)
        ref_chosen_err = ref_rejected_err = None
        if self.needs_reference:
            with torch.no_grad(), self.reference_model() as reference:
                ref_err = per_sample_mse(self.unet_forward(reference, noisy, timesteps, conditioning), target)
            ref_chosen_err, ref_rejected_err = ref_err.chunk(2)

        losses, chosen_rewards, rejected_rewards = self.preference_loss(
            policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err
        )
        loss = losses.mean()

        self._record_metric(mode, "mse/policy_chosen", policy_chosen_err)
        self._record_metric(mode, "mse/policy_rejected", policy_rejected_err)
        if chosen_rewards is not None:
            self._record_metric(mode, "mse/ref_chosen", ref_chosen_err)
            self._record_metric(mode, "mse/ref_rejected", ref_rejected_err)
            self._record_metric(mode, "rewards/chosen", chosen_rewards)
            self._record_metric(mode, "rewards/rejected", rejected_rewards)
            self._record_metric(mode, "rewards/accuracies", (chosen_rewards > rejected_rewards).float())
            self._record_metric(mode, "rewards/margins", chosen_rewards - rejected_rewards)
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """`Trainer.evaluate` with a fixed noise/timestep stream, so two evaluations are directly comparable."""
        if eval_dataset is not None and not isinstance(eval_dataset, (str, dict)):
            eval_dataset = self._prepare_dataset(eval_dataset, "eval")
        seed = process_seed(self.args.seed, self.accelerator.process_index)
        self._eval_generator = torch.Generator().manual_seed(seed)
        try:
            return super().evaluate(
                eval_dataset=eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
            )
        finally:
            self._eval_generator = None
