"""Model and LoRA command-line arguments for diffusion pipelines (TRL's `ModelConfig`, for a UNet)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class DiffusionModelConfig:
    """
    Which pipeline to load and whether to train LoRA adapters on its UNet.

    Field names follow TRL's `ModelConfig` (`--model_name_or_path`, `--use_peft`, `--lora_r`, `--lora_alpha`,
    `--lora_target_modules`), with defaults of the diffusers DPO scripts (attention projections, `lora_alpha = r`).
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder of a diffusers pipeline of a registered family (SD 1.5, SDXL, SD3, "
                  "FLUX.1, Qwen-Image)."},
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model on the Hub."})
    variant: str | None = field(default=None, metadata={"help": "Weights variant to load, e.g. 'fp16'."})
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of the full denoiser."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": f"Denoiser modules to adapt (default: the model family's, {DEFAULT_LORA_TARGETS} for all "
                  "built-in families)."},
    )
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling (alpha / sqrt(r))."})

    def __post_init__(self):
        if self.lora_r <= 0:
            raise ValueError(f"lora_r must be positive, got {self.lora_r}")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments for `DiffusionPipeline.from_pretrained`."""
        kwargs = {"revision": self.model_revision}
        if self.variant:
            kwargs["variant"] = self.variant
        return kwargs


def get_peft_config(model_args: DiffusionModelConfig):
    """A `peft.LoraConfig` for a UNet from the command-line arguments, or None without `--use_peft`.

    Unlike TRL's `get_peft_config`, no causal-LM `task_type` is set: the adapter goes on a diffusers UNet via
    `unet.add_adapter`.
    """
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        init_lora_weights="gaussian",
        # None: the trainer fills in the model family's default targets (`DenoiserFamily.lora_targets`).
        target_modules=model_args.lora_target_modules or None,
        use_dora=model_args.use_dora,
        use_rslora=model_args.use_rslora,
    )
