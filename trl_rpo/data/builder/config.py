"""What the builder builds: `RichPreferenceConfig` and the columns of its output (`BUILDER_FEATURES`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from datasets import Features, List, Value
from datasets import Image as ImageFeature

__all__ = ["BUILDER_FEATURES", "RichPreferenceConfig"]

BUILDER_FEATURES = Features(
    {
        "prompt": Value("string"),
        "chosen": ImageFeature(),
        "rejected": ImageFeature(),
        "critique": Value("string"),
        "instructions": List(
            {
                "instruction": Value("string"),
                "kind": Value("string"),
                "target": Value("string"),
                "region": List(Value("float32")),
                "params": Value("string"),  # JSON: editors' parameters have no fixed schema
            }
        ),
        "edit_method": Value("string"),
        "scores": List({"name": Value("string"), "value": Value("float64")}),
        "provenance": {
            "generator": Value("string"),
            "critic": Value("string"),
            "editors": List(Value("string")),
            "verifiers": List(Value("string")),
            "seed": Value("int64"),
            "prompt_index": Value("int64"),
            "image_index": Value("int32"),
        },
        "mask": ImageFeature(),
    }
)

# Fields that do not change what is built; every other field must match to resume an output_dir.
_RUNTIME_FIELDS = ("output_dir", "batch_size", "device", "disable_tqdm", "overlap_generation")
# Fields added after outputs were first written: recorded only when set, so those outputs still resume.
_RECORDED_WHEN_SET = ("max_sequence_length",)


@dataclass
class RichPreferenceConfig:
    r"""Configuration of `RichPreferenceDataBuilder`.

    Parameters:
        output_dir (`str`, defaults to `"rpo-pairs"`):
            Folder holding the shards, `manifest.json` and `stats.json`. Re-running with the same folder resumes.
        images_per_prompt (`int`, defaults to `2`):
            Images generated (and critiqued) per prompt, each with its own seed.
        shard_size (`int`, defaults to `256`):
            Prompts per shard: the unit of work that is written atomically (a crash loses at most one shard).
        batch_size (`int`, defaults to `8`):
            Images per call of each stage (generate, critique, edit, verify). Does not change the result.
        num_inference_steps (`int`, defaults to `30`):
            Denoising steps of a diffusers generator.
        guidance_scale (`float`, defaults to `5.0`):
            Classifier-free guidance scale of a diffusers generator.
        resolution (`int` or `None`, defaults to `None`):
            Height and width of generated images; `None` uses the pipeline's default.
        negative_prompt (`str` or `None`, defaults to `None`):
            Negative prompt of a diffusers generator. Refused (`ValueError`) for a pipeline that would ignore it, such
            as FLUX.1, which applies one only with `true_cfg_scale > 1`.
        max_sequence_length (`int` or `None`, defaults to `None`):
            T5 prompt length of a generator that takes one (SD3, FLUX.1: `max_sequence_length`); `None` keeps the
            pipeline's default. Refused for a pipeline without the argument.
        seed (`int`, defaults to `0`):
            Base seed: image `j` of prompt `i` is generated with seed `seed + i * images_per_prompt + j`, whatever
            the process count, batch size or resumption.
        torch_dtype (`str` or `None`, defaults to `None`):
            dtype a generator given as a Hub id or folder is loaded in, e.g. `"float16"`.
        device (`str` or `None`, defaults to `None`):
            Device a generator given as a Hub id or folder is moved to; `None` uses the accelerate process's device.
        disable_tqdm (`bool`, defaults to `False`):
            Hide the progress bar.
        overlap_generation (`bool`, defaults to `False`):
            Generate the next batch in a background thread while the current one is critiqued, edited and
            verified, so a slow critic (a VLM server) or editor does not leave the generator idle. Does not change
            the result (every image has its own seed).
    """

    output_dir: str = field(
        default="rpo-pairs",
        metadata={"help": "Folder of the shards, manifest.json and stats.json; re-running with it resumes."},
    )
    images_per_prompt: int = field(default=2, metadata={"help": "Images generated per prompt, each seeded."})
    shard_size: int = field(
        default=256, metadata={"help": "Prompts per shard (written atomically; a crash loses at most one)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per call of each stage; does not change results."})
    num_inference_steps: int = field(default=30, metadata={"help": "Denoising steps of a diffusers generator."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Guidance scale of a diffusers generator."})
    resolution: int | None = field(
        default=None, metadata={"help": "Height and width of generated images (default: the pipeline's)."}
    )
    negative_prompt: str | None = field(default=None, metadata={"help": "Negative prompt of a diffusers generator."})
    max_sequence_length: int | None = field(
        default=None, metadata={"help": "T5 prompt length of an SD3 / FLUX.1 generator (default: the pipeline's)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Base seed; image j of prompt i uses seed + i * images_per_prompt + j."}
    )
    torch_dtype: str | None = field(
        default=None, metadata={"help": "dtype of a generator loaded from a Hub id or folder, e.g. float16."}
    )
    device: str | None = field(
        default=None, metadata={"help": "Device of a generator loaded by id (default: the process's device)."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})
    overlap_generation: bool = field(
        default=False,
        metadata={"help": "Generate the next batch while the current one is critiqued and edited (same result)."},
    )

    def __post_init__(self):
        for name in ("images_per_prompt", "shard_size", "batch_size", "num_inference_steps", "max_sequence_length"):
            value = getattr(self, name)
            if name == "max_sequence_length" and value is None:  # optional: the pipeline's default
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RichPreferenceConfig.{name} must be a positive integer, got {value!r}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"RichPreferenceConfig.resolution must be a multiple of 8, got {self.resolution}")

    def fingerprint(self) -> dict[str, Any]:
        """The fields that decide what is built (all but output_dir, batch_size, device and disable_tqdm)."""
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in _RUNTIME_FIELDS and not (k in _RECORDED_WHEN_SET and v is None)
        }
