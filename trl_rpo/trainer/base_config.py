"""Configuration fields shared by every trl-rpo diffusion trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

VAE_DTYPES = ("auto", "float32", "float16", "bfloat16")


def _has_pinnable_accelerator() -> bool:
    """Whether pinned host memory can speed anything up here (a CUDA or XPU device to copy batches to)."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


@dataclass
class BaseDiffusionConfig(TrainingArguments):
    r"""
    Fields shared by [`DiffusionDPOConfig`] and [`TailorPOConfig`], on top of [`~transformers.TrainingArguments`].

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for `diffusers.DiffusionPipeline.from_pretrained`, used when the trainer's `model`
            argument is a model id or a local path (e.g. `{"variant": "fp16", "revision": "main"}`).
        vae_model_name_or_path (`str`, *optional*):
            A VAE to use instead of the pipeline's, e.g. `"madebyollin/sdxl-vae-fp16-fix"` for fp16 SDXL.
        vae_dtype (`str`, *optional*, defaults to `"auto"`):
            Dtype of the frozen VAE: `"auto"` keeps it in float32 under fp16 when the VAE's config asks for
            `force_upcast` (SDXL's VAE overflows in fp16; bf16 has the range, so it stays bf16) and uses the
            mixed-precision dtype otherwise; or one of `"float32"`,
            `"float16"`, `"bfloat16"`.
        prediction_type (`str`, *optional*):
            Override the scheduler's `prediction_type` (`"epsilon"` or `"v_prediction"`). By default the
            scheduler's own value is used, which is what the pipeline was trained with.
        resolution (`int`, *optional*):
            Side of the square training images in pixels. Defaults to the denoiser's native size
            (`sample_size * vae_scale_factor`: 512 for SD 1.5, 1024 for SDXL, SD3 and FLUX.1).
        max_sequence_length (`int`, *optional*):
            Families with a T5 or LLM text encoder (SD3, FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]): text tokens of
            the prompt embedding (the diffusers SD3 script trains with 77; FLUX.1-dev accepts up to 512). Defaults to
            the pipeline's own (256 for SD3, 512 for the others); Qwen-Image, Z-Image and FLUX.2 [klein] prompts are
            padded to it, so set it to what the prompts need (e.g. 128).
        embedded_guidance_scale (`float`, *optional*, defaults to `3.5`):
            FLUX.1-dev only (a transformer with `guidance_embeds=True`): the value of the guidance embedding during
            training, as the diffusers FLUX scripts' `--guidance_scale` (3.5). Ignored by other models.

        > Parameters that control validation images

        validation_prompts (`list[str]`, *optional*):
            Prompts whose images are generated with the current weights every `validation_steps` steps, saved
            under `output_dir/validation/` and logged to the trackers in `report_to` (TensorBoard, W&B).
        validation_steps (`int`, *optional*, defaults to `100`):
            Number of optimizer steps between two rounds of validation images.
        num_validation_images (`int`, *optional*, defaults to `1`):
            Images per validation prompt.
        validation_num_inference_steps (`int`, *optional*, defaults to `25`):
            Denoising steps for validation images.
        validation_guidance_scale (`float`, *optional*, defaults to `5.0`):
            Classifier-free guidance scale for validation images.

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `remove_unused_columns`: Defaults to `False`: the collator, not a model signature, chooses columns.
    > - `ddp_find_unused_parameters`: Defaults to `False` (every trainable UNet parameter gets a gradient).
    > - `dataloader_pin_memory`: Defaults to `None`, which means `True` where a CUDA or XPU device exists and
    >   `False` otherwise (pinned memory only speeds up copies to an accelerator; on CPU torch warns about it).
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs"]

    logging_steps: float = field(
        default=10,
        metadata={"help": "Log every X update steps (an integer, or a float in [0,1) for a ratio of total steps)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Kept False: diffusion trainers select their columns in the data collator."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Passed to DistributedDataParallel; False because every trainable UNet weight is used."},
    )
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={"help": "Pin DataLoader memory; default: only where a CUDA or XPU accelerator exists."},
    )

    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `DiffusionPipeline.from_pretrained` when `model` is an id or a path, "
            'e.g. \'{"variant": "fp16"}\'.'
        },
    )
    vae_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Replacement VAE, e.g. 'madebyollin/sdxl-vae-fp16-fix' for fp16 SDXL training."},
    )
    vae_dtype: str = field(
        default="auto",
        metadata={
            "help": "Dtype of the frozen VAE: 'auto' (float32 when the VAE config sets force_upcast, as SDXL's "
            "overflows in fp16; else the mixed-precision dtype), 'float32', 'float16' or 'bfloat16'.",
            "choices": list(VAE_DTYPES),
        },
    )
    prediction_type: str | None = field(
        default=None,
        metadata={
            "help": "Override the scheduler's prediction type ('epsilon' or 'v_prediction'); default: scheduler's.",
            "choices": ["epsilon", "v_prediction"],
        },
    )
    resolution: int | None = field(
        default=None,
        metadata={"help": "Training image side in pixels; default: the denoiser's native size (512 SD 1.5, 1024 the "
                  "other families)."},
    )

    max_sequence_length: int | None = field(
        default=None,
        metadata={"help": "SD3, FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]: prompt tokens of the T5 / LLM encoder "
                  "(default: the pipeline's, 256 SD3 / 512 others)."},
    )
    embedded_guidance_scale: float = field(
        default=3.5,
        metadata={"help": "FLUX.1-dev: guidance-embedding value during training and sampling (diffusers' 3.5)."},
    )

    validation_prompts: list[str] | None = field(
        default=None,
        metadata={"help": "Prompts rendered every `validation_steps` steps, saved and logged to the trackers."},
    )
    validation_steps: int = field(default=100, metadata={"help": "Optimizer steps between validation images."})
    num_validation_images: int = field(default=1, metadata={"help": "Images per validation prompt."})
    validation_num_inference_steps: int = field(
        default=25, metadata={"help": "Denoising steps for validation images."}
    )
    validation_guidance_scale: float = field(default=5.0, metadata={"help": "CFG scale for validation images."})

    def __post_init__(self):
        super().__post_init__()
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = not self.use_cpu and _has_pinnable_accelerator()
        if self.vae_dtype not in VAE_DTYPES:
            raise ValueError(f"vae_dtype must be one of {VAE_DTYPES}, got {self.vae_dtype!r}")
        if self.prediction_type not in (None, "epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if self.resolution is not None and self.resolution <= 0:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= 512:
            raise ValueError(
                f"max_sequence_length must be in [1, 512] (text-encoder tokens), got {self.max_sequence_length}"
            )
        if self.validation_steps <= 0:
            raise ValueError(f"validation_steps must be positive, got {self.validation_steps}")
        if isinstance(self.validation_prompts, str):
            self.validation_prompts = [self.validation_prompts]
