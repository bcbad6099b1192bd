"""What every trl-rpo diffusion trainer shares.

Pipeline loading, the denoiser adapter (SD 1.5, SDXL, SD3 / SD3.5, FLUX.1: `trl_rpo.models`), the LoRA-off
reference context, saving in
diffusers formats, resuming, model cards, TRL-style metric accumulation and validation images. The
trainers subclass :class:`BaseDiffusionTrainer` and only add their data handling and loss.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import types
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import enable_full_determinism, set_seed

from ..models import DenoiserAdapter
from ..pipelines import (  # noqa: F401 - re-exported: trainer code imported them from here
    cast_model,
    decode_latents,
    denoiser_of,
    encode_images,
    encode_prompts,
    is_sdxl_pipeline,
    load_denoiser_state_dict,
    load_pipeline,
    sdxl_time_ids,
    tensor_to_pil,
    zero3_init_disabled,
)
from .base_config import BaseDiffusionConfig
from .model_card import build_model_card
from .validation import ValidationImagesCallback, ValidationImagesMixin
from .zero import fill_deepspeed_auto_sizes

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
UNET_SUBFOLDER = "unet"


def process_seed(seed: int, process_index: int) -> int:
    """The seed of one process's own random stream: `seed` itself on process 0, a distinct fixed seed on each other.

    `Trainer` seeds every process alike, which keeps their initial weights identical; draws that must differ
    between processes (noise, timesteps, caption dropout, rollouts) come from a generator seeded with this.
    """
    return (seed + process_index * 0x9E3779B97F4A7C15) % 2**63  # a large odd stride: no two ranks share a seed


def pooled_mean_and_std(total: float, total_sq: float, count: float) -> tuple[float, float]:
    """Mean and sample standard deviation of values known only by their sum, sum of squares and count.

    What a metric over several processes needs: those three add up across processes, per-process means and
    standard deviations do not.
    """
    mean = total / count
    if count < 2:
        return mean, 0.0
    variance = max(total_sq - count * mean * mean, 0.0) / (count - 1)  # clamped: rounding can dip below zero
    return mean, variance**0.5


def mixed_precision_dtype(args) -> torch.dtype:
    """The dtype frozen weights are kept in: bf16 / fp16 under mixed precision, float32 otherwise."""
    if getattr(args, "bf16", False):
        return torch.bfloat16
    if getattr(args, "fp16", False):
        return torch.float16
    return torch.float32


def _enable_unet_gradient_checkpointing(unet, **_: Any) -> None:
    # transformers.Trainer calls `activation_checkpointing_enable` with transformers-style kwargs; a diffusers
    # model only knows `enable_gradient_checkpointing()`.
    unet.enable_gradient_checkpointing()


# ---------------------------------------------------------------------------------------------------------------
# The trainer base
# ---------------------------------------------------------------------------------------------------------------


class BaseDiffusionTrainer(ValidationImagesMixin, Trainer):
    """A `transformers.Trainer` whose model is the denoiser of a diffusers pipeline: its `unet` (SD 1.5, SDXL) or
    its `transformer` (SD3 / SD3.5, FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]): any family of the model registry
    (`trl_rpo.families`). Family-specific encoding, noising, targets and the denoiser call go through
    `self.model_adapter` (a :class:`~trl_rpo.models.DenoiserAdapter`); the training step is the same.

    Handles: loading the pipeline, freezing VAE and text encoders, LoRA (via `unet.add_adapter`) or full
    fine-tuning, the reference model (adapters disabled, or a frozen copy), saving (diffusers LoRA format or
    a diffusers UNet folder), resuming from those checkpoints, TRL-style metrics and model cards.

    Subclasses set `_tag_names`, `_name`, `_paper`, `_card_method_fields`, `config_class`, implement
    `compute_loss`, and may override `needs_reference` (False skips building a reference copy).
    """

    _tag_names: list[str] = ["trl", "trl-rpo", "diffusers", "text-to-image"]
    _name = "Diffusion"
    _paper: dict[str, str] = {}
    _card_method_fields: tuple[str, ...] = ()  # config fields of the method itself, written to the model card
    config_class = BaseDiffusionConfig
    # compute_loss returns a per-batch mean; Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: Any,
        args: BaseDiffusionConfig | None = None,
        ref_model: torch.nn.Module | None = None,
        train_dataset=None,
        eval_dataset=None,
        peft_config=None,
        data_collator=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
    ):
        if args is None:
            stem = Path(os.fspath(model)).name if isinstance(model, (str, os.PathLike)) else "model"
            args = self.config_class(output_dir=f"{stem}-{self._name}")
        if not isinstance(args, BaseDiffusionConfig):
            raise TypeError(f"args must be a {self.config_class.__name__}, got {type(args).__name__}")
        self.pipeline = load_pipeline(model, args.model_init_kwargs, args.vae_model_name_or_path)
        self.model_name_or_path = (
            os.fspath(model) if isinstance(model, (str, os.PathLike)) else (self.pipeline.name_or_path or None)
        )
        self.model_adapter = DenoiserAdapter(
            self.pipeline,
            prediction_type=args.prediction_type,
            weighting_scheme=getattr(args, "weighting_scheme", "logit_normal"),
            logit_mean=getattr(args, "logit_mean", 0.0),
            logit_std=getattr(args, "logit_std", 1.0),
            mode_scale=getattr(args, "mode_scale", 1.29),
            max_sequence_length=args.max_sequence_length,
            embedded_guidance_scale=args.embedded_guidance_scale,
        )
        self.family = self.model_adapter.family
        self.is_flow = self.family.flow_matching
        self.weight_dtype = mixed_precision_dtype(args)
        self.peft_config = peft_config
        self.resolution = args.resolution or self.model_adapter.native_resolution()
        # Training noises with the forward process of the pipeline's own schedule (DDPM, or rectified flow).
        self.noise_scheduler = self.model_adapter.noise_scheduler
        self.prediction_type = self.model_adapter.prediction_type

        unet = denoiser_of(self.pipeline)
        for frozen in self._frozen_modules():
            frozen.requires_grad_(False).eval()
        # Seeded before the adapters exist (Trainer.__init__ seeds only later): LoRA's init depends on args.seed alone.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        self.ref_model = self._setup_trainable_unet(unet, ref_model, args)
        if args.activation_checkpointing:
            unet.enable_gradient_checkpointing()
            # Trainer.train() calls this transformers-only hook when activation_checkpointing is set.
            unet.activation_checkpointing_enable = types.MethodType(_enable_unet_gradient_checkpointing, unet)

        device = args.device
        self._place_frozen_modules(device, args)
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        self.args = args  # set early: dataset preparation reads it before Trainer.__init__
        if train_dataset is not None:
            train_dataset = self._prepare_dataset(train_dataset, "train")
        if eval_dataset is not None:
            if isinstance(eval_dataset, dict):
                eval_dataset = {k: self._prepare_dataset(v, f"eval_{k}") for k, v in eval_dataset.items()}
            else:
                eval_dataset = self._prepare_dataset(eval_dataset, "eval")
        super().__init__(
            model=unet,
            args=args,
            data_collator=data_collator if data_collator is not None else self._default_data_collator(),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if self.ref_model is not None:
            self.ref_model.to(self.accelerator.device)
        # This process's own stream for noise, timesteps and rollouts (saved in checkpoints, restored on resume).
        self.rank_generator = torch.Generator().manual_seed(process_seed(args.seed, self.accelerator.process_index))
        if args.validation_prompts:
            self.add_callback(ValidationImagesCallback(self))

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if self.is_deepspeed_enabled:
            fill_deepspeed_auto_sizes(
                self.accelerator.state.deepspeed_plugin.hf_ds_config, self.model_adapter.hidden_size
            )

    # -- model setup -------------------------------------------------------------------------------------------

    def _frozen_modules(self) -> list[torch.nn.Module]:
        names = self.family.frozen_modules
        return [m for m in (getattr(self.pipeline, n, None) for n in names) if m is not None]

    @property
    def needs_reference(self) -> bool:
        """Whether the loss compares with a reference model (False lets full fine-tuning skip the copy)."""
        return True

    def _setup_trainable_unet(self, unet, ref_model, args) -> torch.nn.Module | None:
        from diffusers.training_utils import cast_training_params

        if self.peft_config is not None:
            if getattr(unet, "peft_config", None):
                raise ValueError(
                    f"the pipeline's {self.family.denoiser} already has adapters; pass one without LoRA and a "
                    "peft_config"
                )
            # Frozen base weights in the mixed-precision dtype, trainable LoRA weights in float32 (as the
            # diffusers training scripts do): memory of a half-precision model, optimizer updates in full precision.
            if self.peft_config.target_modules is None:  # the family's default targets
                self.peft_config = copy.deepcopy(self.peft_config)
                self.peft_config.target_modules = set(self.family.lora_targets)
            unet.requires_grad_(False)
            cast_model(unet, self.weight_dtype)
            unet.add_adapter(self.peft_config)
            cast_training_params(unet, dtype=torch.float32)
            from peft.tuners.tuners_utils import BaseTunerLayer

            # Toggled directly for each reference pass: `unet.disable_adapters()` walks every module and re-checks
            # the PEFT version each call (~15-20 ms a step on the tiny models).
            self._lora_layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
            self._trainable_parameters = [p for p in unet.parameters() if p.requires_grad]
        else:
            cast_model(unet, torch.float32)
            unet.requires_grad_(True)
            self._lora_layers, self._trainable_parameters = [], list(unet.parameters())
            if ref_model is None and self.needs_reference:
                # Copied before any training step, so resuming can never hand half-trained weights to the reference.
                ref_model = copy.deepcopy(unet)
        unet.train()
        if ref_model is not None:
            ref_model.requires_grad_(False).eval()
            cast_model(ref_model, self.weight_dtype)
        return ref_model

    def _vae_dtype(self, args) -> torch.dtype:
        if args.vae_dtype != "auto":
            return getattr(torch, args.vae_dtype)
        if self.weight_dtype == torch.float16 and getattr(self.pipeline.vae.config, "force_upcast", False):
            return torch.float32
        return self.weight_dtype

    def _place_frozen_modules(self, device, args) -> None:
        cast_model(self.pipeline.vae, self._vae_dtype(args), device)
        for name in self.family.text_encoders:
            encoder = getattr(self.pipeline, name, None)
            if encoder is not None:
                encoder.to(device=device, dtype=self.weight_dtype)

    # -- hooks for subclasses ------------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset, name: str):
        return dataset

    def _default_data_collator(self):
        raise NotImplementedError(f"{type(self).__name__} must provide a data collator")

    # -- reference model ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module]:
        """Yields the module that computes reference predictions.

        With LoRA and no explicit `ref_model`, that is the trained UNet itself with its adapters disabled: no
        second copy in memory. Adapters are re-enabled afterwards even if the forward pass raises, and
        `requires_grad` is restored on the LoRA weights (PEFT's disable/enable may clear it).
        """
        if self.ref_model is not None:
            # Same train/eval mode as the policy: CPU kernels may round differently between the two modes, and
            # policy == reference must give identical predictions (first DPO loss exactly ln 2). SD UNets have
            # no dropout, so the mode changes nothing else; the copy goes back to eval afterwards.
            self.ref_model.train(self.model.training)
            try:
                yield self.ref_model
            finally:
                self.ref_model.eval()
            return
        unet = self._unwrapped_unet()
        if self.peft_config is None:
            raise RuntimeError(
                "full fine-tuning without a reference model; pass ref_model or use a loss that needs none"
            )
        _set_adapters_enabled(self._lora_layers, False)
        try:
            yield unet
        finally:
            _set_adapters_enabled(self._lora_layers, True)
            for param in self._trainable_parameters:  # PEFT's public toggle clears requires_grad: restore it
                if not param.requires_grad:
                    param.requires_grad_(True)

    def _unwrapped_unet(self):
        """The bare UNet behind `self.model`, cached: `accelerator.unwrap_model` walks the module tree each call."""
        cached = getattr(self, "_unwrapped_cache", None)
        if cached is None or cached[0] is not self.model:
            cached = (self.model, self.accelerator.unwrap_model(self.model))
            self._unwrapped_cache = cached
        return cached[1]

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, without re-walking every module to set train mode when it is already set."""
        if not model.training:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train = _already_training.__get__(model)  # an instance attribute shadows Module.train for one call
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            del model.train

    # -- the denoiser call -------------------------------------------------------------------------------------

    def unet_forward(self, unet, noisy_latents, timesteps, conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        """One denoiser prediction (UNet or transformer), `[B, C, h, w]`: see `DenoiserAdapter.predict`.

        The conditioning is the family's (`DenoiserFamily.encode_prompts`), e.g. SD 1.5: `prompt_embeds`; SDXL:
        `+ pooled_prompt_embeds, time_ids`; SD3 / FLUX: `prompt_embeds,
        pooled_prompt_embeds` (FLUX's packing, ids and guidance embedding are added by the adapter).
        """
        return self.model_adapter.predict(unet, noisy_latents, timesteps, conditioning)

    # -- metrics (TRL conventions) -----------------------------------------------------------------------------

    def _record_metric(self, mode: str, name: str, value: torch.Tensor) -> None:
        """Average `value` over this batch on all processes and store it for the next `log`.

        A 0-d `value` is one number of this process (a pair count, a time), averaged over all processes. Otherwise
        it holds one number per sample, gathered with `gather_for_metrics`, which drops the samples an uneven last
        batch repeats to fill every process; that cut, applied to one number per process, would keep process 0's.
        """
        per_process = value.dim() == 0
        value = value.detach().float().reshape(-1).to(self.accelerator.device)
        gathered = self.accelerator.gather(value) if per_process else self.accelerator.gather_for_metrics(value)
        self._metrics[mode][name].append(gathered.mean().item())

    def _record_pooled(self, mode: str, name: str, values: torch.Tensor, std: bool = False) -> None:
        """Record the mean of `values` pooled over all processes (`name`, or `name/mean` and `name/std`).

        Each process may hold any number of values, none included: sums, sums of squares and counts are
        all-reduced as one small tensor, so every process runs the same collective whatever its count (an
        all-gather of the values needs equal sizes). Every process must call this with the same names in the same
        order. Nothing is recorded when no process has a value.
        """
        mean, deviation, count = self._pooled_moments(values)
        if count == 0:
            return
        if std:
            self._metrics[mode][f"{name}/mean"].append(mean)
            self._metrics[mode][f"{name}/std"].append(deviation)
        else:
            self._metrics[mode][name].append(mean)

    def _pooled_moments(self, values: torch.Tensor) -> tuple[float, float, float]:
        """(mean, sample std, count) of `values` over every process: one all-reduce of sum, sum of squares, count."""
        values = values.detach().float().reshape(-1).to(self.accelerator.device)
        count = torch.tensor(float(values.numel()), device=values.device)
        moments = torch.stack([values.sum(), (values**2).sum(), count])
        total, total_sq, count = self.accelerator.reduce(moments, reduction="sum").tolist()
        if count == 0:
            return float("nan"), 0.0, 0.0
        return (*pooled_mean_and_std(total, total_sq, count), count)

    def _global_count(self, count: int) -> int:
        """`count` summed over all processes: one all-reduce of a one-element tensor (`count` itself with one process).

        Every process must call this at the same point of its step, as with `_record_pooled`.
        """
        local = torch.tensor([float(count)], device=self.accelerator.device)
        return int(round(self.accelerator.reduce(local, reduction="sum").item()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items() if val}
        if mode == "eval":
            metrics = {f"eval_{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def _set_signature_columns_if_needed(self):
        # The collator picks its columns; the UNet's forward signature says nothing about the dataset.
        if self._signature_columns is None:
            self._signature_columns = ["prompt"]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # -- saving and resuming -----------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """LoRA: `pytorch_lora_weights.safetensors` loadable with `pipe.load_lora_weights(output_dir)`.
        Full fine-tuning: a diffusers UNet folder `output_dir/unet`. Both with a model card."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        unet = self._unwrapped_unet()
        if self.peft_config is not None:
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, state_dict=state_dict))
            type(self.pipeline).save_lora_weights(
                output_dir,
                **self.model_adapter.lora_save_kwargs(lora_layers, unet.peft_config["default"].to_dict()),
                safe_serialization=True,
            )
        else:
            unet_dir = os.path.join(output_dir, self.family.denoiser)
            if state_dict is None:
                unet.save_pretrained(unet_dir, safe_serialization=True)
            else:  # gathered by the caller (DeepSpeed / FSDP)
                os.makedirs(unet_dir, exist_ok=True)
                unet.save_config(unet_dir)
                safetensors.torch.save_file(
                    {k: v.contiguous() for k, v in state_dict.items()},
                    os.path.join(unet_dir, "diffusion_pytorch_model.safetensors"),
                    metadata={"format": "pt"},
                )
        torch.save(_without_secrets(self.args), os.path.join(output_dir, TRAINING_ARGS_NAME))
        self._write_model_card(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Load the trained weights written by `_save` (LoRA or UNet) into the policy only.

        The reference is untouched by construction: with LoRA it is the base weights (adapters off) and
        only LoRA tensors are loaded; with full fine-tuning it is a separate frozen module.
        """
        unet = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.peft_config is not None:
            from diffusers.utils import convert_unet_state_dict_to_peft
            from peft.utils import set_peft_model_state_dict

            path = os.path.join(resume_from_checkpoint, LORA_WEIGHT_NAME)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"cannot resume from {resume_from_checkpoint!r}: no {LORA_WEIGHT_NAME} there")
            raw = safetensors.torch.load_file(path)
            prefix = f"{self.family.lora_prefix}."
            unet_sd = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
            result = set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_sd), adapter_name="default")
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(
                    f"{path} holds LoRA weights this {self.family.denoiser} does not have, e.g. {unexpected[:3]}"
                )
            if not unet_sd:
                raise ValueError(f"{path} holds no {self.family.denoiser} LoRA weights")
        else:
            state_dict = load_denoiser_state_dict(os.path.join(resume_from_checkpoint, self.family.denoiser))
            unet.load_state_dict(state_dict, strict=True)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        path = os.path.join(output_dir, f"rank_generator_{self.accelerator.process_index}.pth")
        torch.save(self.rank_generator.get_state(), path)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, f"rank_generator_{self.accelerator.process_index}.pth")
        if not os.path.isfile(path):
            logger.warning(f"{path} is missing: this process's noise and timestep stream restarts from its seed")
            return
        self.rank_generator.set_state(torch.load(path, weights_only=True))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, refusing to write over an earlier run's checkpoints or saved weights by accident.

        `resume_from_checkpoint` may be a checkpoint folder, `True`, or the strings `"true"` / `"last"` (what a
        command line passes): the last `checkpoint-*` under `output_dir`.
        """
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "last"):
            if not os.path.exists(resume_from_checkpoint):
                resume_from_checkpoint = True
        if not resume_from_checkpoint and self.args.should_save and os.path.isdir(self.args.output_dir):
            root = Path(self.args.output_dir)
            existing = sorted(p.name for p in root.glob("checkpoint-*") if p.is_dir())
            existing += [name for name in _SAVED_WEIGHTS if (root / name).exists()]
            if existing:
                raise FileExistsError(
                    f"{self.args.output_dir!r} already holds {existing[:3]} from an earlier run; continue it with "
                    "--resume_from_checkpoint true on the command line (resume_from_checkpoint=True in Python), "
                    "or choose another output_dir."
                )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    # -- model card --------------------------------------------------------------------------------------------

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None, **_
    ) -> None:
        """Write `README.md` (a diffusers model card) into `output_dir`, as TRL's trainers do."""
        if self.is_world_process_zero():
            self._write_model_card(self.args.output_dir, model_name=model_name, dataset_name=dataset_name, tags=tags)

    def _write_model_card(self, output_dir: str, model_name=None, dataset_name=None, tags=None) -> None:
        if isinstance(tags, str):
            tags = [tags]
        if dataset_name is None and self.train_dataset is not None:
            info = getattr(self.train_dataset, "info", None)
            dataset_name = getattr(info, "dataset_name", None) or None
        card = build_model_card(
            base_model=self.model_name_or_path,
            model_name=model_name or Path(output_dir).name,
            hub_model_id=self.args.hub_model_id,
            dataset_name=dataset_name,
            tags=[*self._tag_names, *(tags or [])],
            trainer_name=self._name,
            pipeline_class=type(self.pipeline).__name__,
            is_lora=self.peft_config is not None,
            hyperparameters=self._card_hyperparameters(),
            papers=self._papers(),
            log_history=self.state.log_history if getattr(self, "state", None) is not None else [],
            denoiser_class=type(denoiser_of(self.pipeline)).__name__,
        )
        card.save(os.path.join(output_dir, "README.md"))

    def _card_hyperparameters(self) -> dict[str, Any]:
        args = self.args
        params = {
            "learning_rate": args.learning_rate,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "total_train_batch_size": args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * max(args.world_size, 1),
            **({"max_steps": args.max_steps} if args.max_steps > 0 else {"num_train_epochs": args.num_train_epochs}),
            "optimizer": getattr(args.optim, "value", args.optim),
            "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
            "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
            "resolution": self.resolution,
            "prediction_type": self.prediction_type,
            "seed": args.seed,
        }
        if self.peft_config is not None:
            params.update(
                lora_r=self.peft_config.r,
                lora_alpha=self.peft_config.lora_alpha,
                lora_target_modules=sorted(self.peft_config.target_modules),
            )
        params.update({name: getattr(args, name) for name in self._card_method_fields})
        return params

    def _papers(self) -> list[dict[str, str]]:
        return [self._paper] if self._paper else []


def _set_adapters_enabled(layers: list, enabled: bool) -> None:
    """Switch PEFT LoRA layers on or off for a no-grad reference pass.

    Flips each layer's `_disable_adapters` flag, which its forward reads; PEFT's public `enable_adapters` also
    re-selects the adapter and resets `requires_grad` on every call (milliseconds per step on small UNets).
    Falls back to the public call where a PEFT version lacks the flag.
    """
    for layer in layers:
        if hasattr(layer, "_disable_adapters"):
            layer._disable_adapters = not enabled
        else:
            layer.enable_adapters(enabled)


def _already_training(self, mode: bool = True):
    if not mode:  # a real switch to eval mode: run the real thing
        return torch.nn.Module.train(self, mode)
    return self


# What `save_model` writes into `output_dir`: a new run must not silently replace it.
_SAVED_WEIGHTS = ("pytorch_lora_weights.safetensors", "unet", "transformer")


def _without_secrets(args):
    """A copy of the arguments with every `*_token` field cleared: checkpoints get pushed to the Hub."""
    safe = copy.copy(args)
    for name in vars(args):
        if name.endswith("_token") and getattr(args, name) is not None:
            setattr(safe, name, None)
    return safe
