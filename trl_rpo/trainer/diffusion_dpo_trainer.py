"""Diffusion-DPO (Wallace et al., CVPR 2024) for SD 1.5 and SDXL, and Flow-DPO for SD3 / SD3.5 and FLUX.1;
LoRA or full fine-tuning."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features

from ..data.formats import MASK_COLUMN, ROW_INDEX, load_image, prepare_preference_dataset
from ..data.transforms import pair_placement, prepare_image, prepare_mask
from ..diffusion import (
    latent_mask_weight,
    masked_per_sample_mse,
    per_sample_mse,
    timestep_bias_weights,
)
from ..losses import REFERENCE_FREE_LOSS_TYPES, combined_diffusion_dpo_loss
from .base import BaseDiffusionTrainer, process_seed
from .diffusion_dpo_config import DiffusionDPOConfig
from .model_card import DIFFUSION_DPO_CITATION, RPO_CITATION

logger = logging.getLogger(__name__)

__all__ = ["DataCollatorForDiffusionPreference", "DiffusionDPOTrainer"]

_PRECOMPUTED = "chosen_latents"
# The text-conditioning entries a family's `encode_prompts` may return (a precomputed row holds each one it has).
CONDITIONING_COLUMNS = ("prompt_embeds", "pooled_prompt_embeds", "prompt_embeds_mask")


def to_storage(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array holding `tensor`'s exact values in its own dtype, for an Arrow cache.

    numpy (and Arrow) have no bfloat16: bfloat16 is stored as its raw 16-bit patterns (`int16`), which
    :func:`from_storage` reinterprets, so a bf16 cache costs what an fp16 one does and loses nothing.
    """
    tensor = tensor.detach().cpu().contiguous()
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def from_storage(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The tensor :func:`to_storage` stored: integer arrays are bfloat16 bit patterns, floats are as they are.

    `datasets` formatters widen integers to int64 when reading; the values are still the int16 patterns.
    """
    tensor = torch.as_tensor(array)
    return tensor if tensor.is_floating_point() else tensor.to(torch.int16).view(torch.bfloat16)


def shard_bounds(num_rows: int, num_shards: int, index: int) -> tuple[int, int]:
    """`[start, end)` of contiguous shard `index` of `num_shards` (sizes differ by at most one row)."""
    size, extra = divmod(num_rows, num_shards)
    start = index * size + min(index, extra)
    return start, start + size + (1 if index < extra else 0)


def row_seed(seed: int, row: int) -> int:
    """A seed for one dataset row, so its random crop, flip and VAE sample depend on (seed, row) only.

    Independent of how rows are batched or split across processes: 1 or N processes cache the same values.
    """
    return int(np.random.SeedSequence([seed, row]).generate_state(1, dtype=np.uint64)[0] >> 1)


@dataclass
class DataCollatorForDiffusionPreference:
    """Batches preference rows as `[chosen; rejected]`.

    Raw rows become `pixel_values` (`[2B, 3, res, res]`, chosen first), `original_sizes` and `crop_top_lefts`
    (`[2B, 2]`, for SDXL micro-conditioning) and `prompt` (B strings). Precomputed rows become `latents`,
    `prompt_embeds` (and `pooled_prompt_embeds`, `time_ids` for SDXL).

    Rows with a `mask` column (edit masks, see `RichPreferenceDataBuilder`) also give `masks` (`[B, 1, res, res]`,
    1 = edited, cropped and flipped with the pair; ones where a row's mask is None) and `has_mask` (`[B]`);
    precomputed rows give `latent_masks` (`[B, 1, h, w]`, at latent resolution) and `has_mask`.
    """

    resolution: int
    random_crop: bool = False
    random_flip: bool = False
    seed: int | None = None  # of this collator's own stream of crops and flips; None: Python's global `random`

    def __post_init__(self) -> None:
        self._rng = None if self.seed is None else random.Random(self.seed)
        self._worker_seed: int | None = None

    def _stream(self) -> random.Random | None:
        """The stream crops and flips come from: in a DataLoader worker, one per worker and epoch (each worker holds
        a copy of this collator, and the copies would otherwise repeat each other's draws)."""
        from torch.utils.data import get_worker_info

        worker = get_worker_info()
        if self.seed is not None and worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            self._rng = random.Random(row_seed(self.seed, worker.seed))
        return self._rng

    def __call__(self, examples: list[dict[str, Any]], rngs: list[random.Random] | None = None) -> dict[str, Any]:
        """`rngs` (one per example) draw the crops and flips; by default the stream of `seed`."""
        prompts = [ex["prompt"] for ex in examples]
        if _PRECOMPUTED in examples[0]:

            def stack(key: str) -> torch.Tensor:
                return from_storage(np.stack([np.asarray(ex[key]) for ex in examples]))

            batch = {"prompt": prompts, "latents": torch.cat([stack("chosen_latents"), stack("rejected_latents")])}
            for key in CONDITIONING_COLUMNS:
                if key in examples[0]:
                    batch[key] = stack(key)
            for key in examples[0]:  # per-image micro-conditioning (SDXL's time_ids): chosen_K, rejected_K -> K
                if key.startswith("chosen_") and key != "chosen_latents":
                    name = key[len("chosen_") :]
                    batch[name] = torch.cat([stack(key), stack(f"rejected_{name}")])
            if "latent_mask" in examples[0]:
                batch["latent_masks"] = torch.as_tensor(np.stack([np.asarray(ex["latent_mask"]) for ex in examples]))
                batch["has_mask"] = torch.tensor([bool(ex["has_mask"]) for ex in examples])
            return batch
        with_masks = MASK_COLUMN in examples[0]
        chosen, rejected, masks = [], [], []
        stream = self._stream() if rngs is None else None
        for i, ex in enumerate(examples):
            row = ex.get(ROW_INDEX)  # images not validated up front are checked here, named by row
            chosen_image = load_image(ex["chosen"], row=row, column="chosen")
            rejected_image = load_image(ex["rejected"], row=row, column="rejected")
            rng = rngs[i] if rngs is not None else stream
            fraction, flip = pair_placement(self.random_crop, self.random_flip, rng)
            chosen.append(prepare_image(chosen_image, self.resolution, fraction, flip))
            rejected.append(prepare_image(rejected_image, self.resolution, fraction, flip))
            if with_masks:
                mask = ex[MASK_COLUMN]
                if mask is not None:
                    mask = prepare_mask(
                        load_image(mask, row=row, column=MASK_COLUMN),
                        chosen_image.size,
                        self.resolution,
                        fraction,
                        flip,
                    )
                masks.append(mask)
        images = chosen + rejected
        batch = {
            "prompt": prompts,
            "pixel_values": torch.stack([im.pixel_values for im in images]),
            "original_sizes": torch.tensor([im.original_size for im in images]),
            "crop_top_lefts": torch.tensor([im.crop_top_left for im in images]),
        }
        if with_masks:
            ones = torch.ones(1, self.resolution, self.resolution)
            batch["masks"] = torch.stack([m if m is not None else ones for m in masks])
            batch["has_mask"] = torch.tensor([m is not None for m in masks])
        return batch


class DiffusionDPOTrainer(BaseDiffusionTrainer):
    r"""Trainer for Diffusion-DPO, mirroring TRL's `DPOTrainer` API.

    Args:
        model: a `StableDiffusionPipeline` / `StableDiffusionXLPipeline` / `StableDiffusion3Pipeline` /
            `FluxPipeline`, or a Hub id / local folder of one (loaded with
            `DiffusionPipeline.from_pretrained(model, **args.model_init_kwargs)`). On SD3 and FLUX (rectified flow)
            the loss is Flow-DPO: the same errors on the velocity `eps - x0` at `x = (1 - s) x0 + s eps`.
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
        self._loss_types = list(args.loss_type) if args is not None else ["sigmoid"]
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
        self._timestep_weights = self._timestep_bias_weights()  # also without datasets (evaluate-only trainers)

    def _timestep_bias_weights(self) -> torch.Tensor | None:
        """The DDPM timestep sampling weights of `timestep_bias_*`, or None (uniform)."""
        args = self.args
        if args.timestep_bias_strategy == "none":
            return None
        if self.is_flow:
            raise ValueError(
                f"timestep_bias_strategy={args.timestep_bias_strategy!r} applies to UNet models; "
                f"{self.family.name} is a rectified-flow model: set weighting_scheme instead"
            )
        return timestep_bias_weights(
            self.noise_scheduler.config.num_train_timesteps,
            args.timestep_bias_strategy,
            args.timestep_bias_multiplier,
            args.timestep_bias_portion,
            args.timestep_bias_begin,
            args.timestep_bias_end,
        )

    @property
    def needs_reference(self) -> bool:
        return any(loss_type not in REFERENCE_FREE_LOSS_TYPES for loss_type in self._loss_types)

    def _card_hyperparameters(self) -> dict[str, Any]:
        params = super()._card_hyperparameters()
        params["loss_type"] = " + ".join(self.args.loss_type)  # "sigmoid", or e.g. "sigmoid + sft"
        if self.args.loss_weights is not None:
            params["loss_weights"] = list(self.args.loss_weights)
        if self.args.timestep_bias_strategy != "none":
            params["timestep_bias"] = self._timestep_bias_description()
        return params

    def _timestep_bias_description(self) -> str:
        args = self.args
        biased = (
            f"t in [{args.timestep_bias_begin}, {args.timestep_bias_end})"
            if args.timestep_bias_strategy == "range"
            else f"{args.timestep_bias_strategy} {args.timestep_bias_portion:g} of the timesteps"
        )
        return f"{biased} x {args.timestep_bias_multiplier:g}"

    def _papers(self) -> list[dict[str, str]]:
        rpo = {"title": "Fine-Tuning Diffusion Generative Models via Rich Preference Optimization", "id": "2503.11720"}
        return [self._paper, {**rpo, "citation": RPO_CITATION}]

    # -- data --------------------------------------------------------------------------------------------------

    def _default_data_collator(self):
        # Seeded per process: `Trainer` seeds Python's `random` alike everywhere, so every process would crop and flip
        # its rows the same way.
        seed = process_seed(self.args.seed, self.args.process_index)
        return DataCollatorForDiffusionPreference(self.resolution, self.args.random_crop, self.args.random_flip, seed)

    def _prepare_dataset(self, dataset, name: str):
        """`max_train_samples` first, then the cheap checks, then (optionally) the per-process precompute.

        Images are not decoded here unless `skip_invalid_rows` asks to drop bad ones: each is checked where it is
        first read (precompute or batch building), and a bad one raises an error naming its row and column.
        """
        args = self.args
        self._timestep_weights = self._timestep_bias_weights()  # refuses a bias the model cannot use, before encoding
        if name == "train" and args.max_train_samples is not None:
            dataset = dataset.select(range(min(args.max_train_samples, len(dataset))))
        with args.main_process_first(desc=f"preparing {name} dataset"):
            dataset = prepare_preference_dataset(
                dataset,
                skip_invalid_rows=args.skip_invalid_rows,
                validate_images=args.skip_invalid_rows,
                num_proc=args.dataset_num_proc,
                name=f"{name}_dataset",
            )
        if len(dataset) == 0:
            raise ValueError(f"{name}_dataset has no usable rows left after validation")
        if args.precompute_latents:
            if args.caption_dropout_probability > 0 and self._null_conditioning is None:
                self._null_conditioning = self.model_adapter.encode_prompts([""], "cpu")
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

    def _encode_rows(self, batch: dict[str, list], indices: list[int]) -> dict[str, np.ndarray]:
        """VAE latents and text embeddings of a batch of rows, in the training dtype.

        Each row's random crop, flip and VAE posterior sample come from its own generators seeded by
        `(args.seed, row)` (:func:`row_seed`), so the cache is the same however rows are batched or sharded.
        """
        dtype = self.weight_dtype
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        seeds = [row_seed(self.args.seed, i) for i in indices]
        raw = self._default_data_collator()(rows, rngs=[random.Random(s) for s in seeds])
        vae = self.pipeline.vae
        generators = [torch.Generator(vae.device).manual_seed(s) for s in seeds]
        latents = self.model_adapter.encode_images(raw["pixel_values"].to(vae.device), generators + generators)
        half = len(rows)
        cond = self.model_adapter.encode_prompts(raw["prompt"], "cpu")
        out = {
            "chosen_latents": to_storage(latents[:half].to(dtype)),
            "rejected_latents": to_storage(latents[half:].to(dtype)),
        }
        for key, value in cond.items():  # in the training dtype (a text mask as 0 / 1 values)
            out[key] = to_storage(value.to(dtype))
        if "masks" in raw:  # edit masks at latent resolution (a latent cell is edited if any of its pixels is)
            latent_mask = torch.nn.functional.adaptive_max_pool2d(raw["masks"], tuple(latents.shape[-2:]))
            out["latent_mask"] = latent_mask.to(torch.uint8).numpy()
            out["has_mask"] = raw["has_mask"].numpy()
        # Micro-conditioning (SDXL's time_ids) stays float32: bf16 cannot hold sizes such as 1023 exactly.
        micro = self.model_adapter.micro_conditioning(raw["original_sizes"], raw["crop_top_lefts"], self.resolution)
        for key, value in micro.items():
            out[f"chosen_{key}"], out[f"rejected_{key}"] = value[:half].numpy(), value[half:].numpy()
        return out

    def _precompute_cache_dir(self, fingerprint: str) -> Path:
        import datasets

        root = self.args.precompute_cache_dir or os.path.join(datasets.config.HF_DATASETS_CACHE, "trl_rpo_precomputed")
        return Path(root) / fingerprint

    def _precompute(self, dataset: Dataset, name: str) -> Dataset:
        """Encode images and prompts once; steps then run only the UNet.

        Each process encodes its own contiguous shard of the rows into `<cache>/<fingerprint>/<name>-<rank>-of-
        <world>.arrow` (skipped when that file exists: each shard is encoded once, also across runs), then every
        process memory-maps all shards and concatenates them, so each sees the whole precomputed dataset. The
        cache folder must be visible to every process (shared storage across nodes).
        """
        from accelerate import PartialState
        from datasets import concatenate_datasets
        from datasets.fingerprint import Hasher

        args = self.args
        state = PartialState()
        world, rank = state.num_processes, state.process_index
        fingerprint = Hasher.hash(
            [
                dataset._fingerprint,
                self._frozen_signature(),
                self.resolution,
                args.random_crop,
                args.random_flip,
                args.seed,
                str(self.weight_dtype),
            ]
        )
        folder = self._precompute_cache_dir(fingerprint)
        paths = [folder / f"{name}-{r:05d}-of-{world:05d}.arrow" for r in range(world)]
        bounds = [shard_bounds(len(dataset), world, r) for r in range(world)]
        # With fewer rows than processes some shards are empty: `datasets.map` writes no file for those, so they
        # are neither encoded nor read back (every process knows which from the bounds alone).
        start, end = bounds[rank]
        if end > start and not paths[rank].is_file():
            shard = dataset.select(range(start, end))
            features = self._precomputed_features(shard, start)
            row_bytes = sum(_feature_bytes(features[k]) for k in features if k not in shard.column_names)
            logger.info(
                "Precomputing %s rows %d-%d of %d on process %d/%d: about %.1f MiB (%s) into %s",
                name, start, end, len(dataset), rank, world, row_bytes * (end - start) / 2**20,
                self.weight_dtype, paths[rank],
            )  # fmt: skip
            folder.mkdir(parents=True, exist_ok=True)
            shard.map(
                lambda batch, idx: self._encode_rows(batch, [start + i for i in idx]),
                batched=True,
                with_indices=True,
                batch_size=args.precompute_batch_size or args.per_device_train_batch_size,
                remove_columns=[c for c in ("chosen", "rejected", MASK_COLUMN, ROW_INDEX) if c in shard.column_names],
                features=features,
                cache_file_name=str(paths[rank]),
                load_from_cache_file=False,
                new_fingerprint=Hasher.hash([fingerprint, rank, world]),
                desc=f"Precomputing latents and text embeddings ({name}, process {rank})",
            )
        state.wait_for_everyone()
        encoded = concatenate_datasets([Dataset.from_file(str(p)) for p, (lo, hi) in zip(paths, bounds) if hi > lo])
        numeric = [c for c in encoded.column_names if c != "prompt"]
        return encoded.with_format("numpy", columns=numeric, output_all_columns=True)

    def _precomputed_features(self, dataset: Dataset, first_row: int = 0) -> Features:
        """Fixed-shape array features for the encoded columns (probed on the first row, `first_row` overall).

        Stored as nested lists, every batch would be rebuilt element by element when read back; fixed-shape
        arrays load as whole arrays (the step's data loading drops from ~15 ms to a few ms on tiny models).
        """
        from datasets import Array2D, Array3D, Sequence, Value

        probe = self._encode_rows(dataset[:1], [first_row])
        drop = ("chosen", "rejected", MASK_COLUMN, ROW_INDEX)
        features = Features({k: v for k, v in dataset.features.items() if k not in drop})
        for key, value in probe.items():
            shape, dtype = tuple(value.shape[1:]), str(value.dtype)
            if value.dtype == np.bool_:
                features[key] = Value("bool")
            elif len(shape) == 3:
                features[key] = Array3D(shape=shape, dtype=dtype)
            elif len(shape) == 2:
                features[key] = Array2D(shape=shape, dtype=dtype)
            else:
                features[key] = Sequence(Value(dtype), length=shape[0])
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
            cond = {k: inputs[k] for k in CONDITIONING_COLUMNS if k in inputs}
            if drop is not None and drop.any():
                for key, value in cond.items():
                    null = self._null_conditioning[key].to(device=value.device, dtype=value.dtype)
                    value[drop.to(value.device)] = null
        else:
            # The VAE posterior sample comes from this process's stream (the global torch RNG is seeded alike on every
            # process), or from the fixed evaluation stream.
            generator = self._eval_generator_or_none()
            latents = self.model_adapter.encode_images(
                inputs["pixel_values"], generator if generator is not None else self.rank_generator
            )
            if drop is not None:
                prompts = ["" if d else p for p, d in zip(prompts, drop.tolist())]
            cond = self.model_adapter.encode_prompts(prompts, device)
        conditioning = {k: torch.cat([v, v]) for k, v in cond.items()}
        keys = self.family.micro_conditioning_keys
        if keys and not all(key in inputs for key in keys):
            inputs = {**self.model_adapter.micro_conditioning(
                inputs["original_sizes"], inputs["crop_top_lefts"], self.resolution
            ), **inputs}  # fmt: skip
        for key in keys:
            conditioning[key] = inputs[key].to(device)
        return latents.to(device), conditioning

    def _eval_generator_or_none(self) -> torch.Generator | None:
        return None if self.model.training else self._eval_generator

    def sample_noise_and_timesteps(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same noise and timestep for both images of a pair, from this process's own stream (each process draws
        its own); seeded afresh during evaluation so eval losses compare. UNet models: DDPM timesteps, uniform unless
        `args.timestep_bias_strategy` biases them; flow models: `t = sigma * 1000` with `sigma` from
        `args.weighting_scheme`."""
        generator = self._eval_generator_or_none()
        generator = generator if generator is not None else self.rank_generator
        return self.model_adapter.sample_pair_noise_and_timesteps(latents, generator, self._timestep_weights)

    def preference_loss(
        self,
        policy_chosen_err: torch.Tensor,
        policy_rejected_err: torch.Tensor,
        ref_chosen_err: torch.Tensor | None,
        ref_rejected_err: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Per-pair losses and implicit rewards: the `loss_type` terms weighted by `loss_weights`; see
        [`combined_diffusion_dpo_loss`], [`diffusion_dpo_loss`] and [`mapo_loss`]."""
        args = self.args
        return combined_diffusion_dpo_loss(
            policy_chosen_err,
            policy_rejected_err,
            ref_chosen_err,
            ref_rejected_err,
            args.loss_type,
            args.loss_weights,
            beta=args.beta,
            mapo_beta=args.mapo_beta,
            mapo_snr_value=args.mapo_snr_value,
            num_train_timesteps=self.noise_scheduler.config.num_train_timesteps,
        )

    def loss_weights(self, inputs: dict[str, Any], latents: torch.Tensor) -> torch.Tensor | None:
        """Per-position weights `[2B, 1, h, w]` of the denoising errors from the pairs' edit masks, or None.

        Each pair's mask (see [`latent_mask_weight`]: pooled to latent resolution, grown by `mask_dilation`,
        `mask_weight_outside` elsewhere) weights both of its images, for policy and reference alike. Pairs without
        a mask get uniform weights, i.e. the plain loss; a batch without any mask returns None (the plain path).
        """
        has_mask = inputs.get("has_mask")
        if has_mask is None or not bool(has_mask.any()):
            return None
        mask = inputs["latent_masks"] if "latent_masks" in inputs else inputs["masks"]
        weight = latent_mask_weight(
            mask.to(latents.device).float(),
            tuple(latents.shape[-2:]),
            self.args.mask_dilation,
            self.args.mask_weight_outside,
        )
        weight[~has_mask.to(weight.device)] = 1.0
        return torch.cat([weight, weight])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        latents, conditioning = self.encode_batch(inputs)
        noise, timesteps = self.sample_noise_and_timesteps(latents)
        noisy = self.model_adapter.add_noise(latents, noise, timesteps)
        target = self.model_adapter.target(latents, noise, timesteps)

        weight = self.loss_weights(inputs, latents)

        def errors(prediction: torch.Tensor) -> torch.Tensor:
            return (
                per_sample_mse(prediction, target)
                if weight is None
                else masked_per_sample_mse(prediction, target, weight)
            )

        # One denoiser call on the stacked pair (not one per branch), with and without gradients.
        policy_err = errors(self.unet_forward(model, noisy, timesteps, conditioning))
        policy_chosen_err, policy_rejected_err = policy_err.chunk(2)
        ref_chosen_err = ref_rejected_err = None
        if self.needs_reference:
            with torch.no_grad(), self.reference_model() as reference:
                ref_err = errors(self.unet_forward(reference, noisy, timesteps, conditioning))
            ref_chosen_err, ref_rejected_err = ref_err.chunk(2)

        losses, chosen_rewards, rejected_rewards = self.preference_loss(
            policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err
        )
        loss = losses.mean()

        self._record_metric(mode, "mse/policy_chosen", policy_chosen_err)
        self._record_metric(mode, "mse/policy_rejected", policy_rejected_err)
        if ref_chosen_err is not None:
            self._record_metric(mode, "mse/ref_chosen", ref_chosen_err)
            self._record_metric(mode, "mse/ref_rejected", ref_rejected_err)
        if chosen_rewards is not None:
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


def _feature_bytes(feature) -> int:
    """Bytes one row of a fixed-shape array feature takes (for the cache-size log line)."""
    shape = getattr(feature, "shape", None) or (getattr(feature, "length", 1),)
    dtype = getattr(feature, "dtype", None) or feature.feature.dtype
    return int(np.prod(shape)) * np.dtype(dtype).itemsize
