"""The registry's entry type, :class:`DenoiserFamily`, and the registry itself (`FAMILIES`, `register_family`).

A family says everything that differs between model families, as data (which pipeline attribute is trained, its
text encoders, its noise process, its LoRA save keyword and default targets) and as a few methods on a pipeline
(how to detect it, encode prompts, call the denoiser, and set the rollout sampler's schedule). Trainers, rollouts,
validation, the memory guide and the LoRA round trip go through :class:`~trl_rpo.models.DenoiserAdapter`, which
reads the family; none of them names a family. `docs/adding_a_model.md` walks through adding one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "FAMILIES",
    "DenoiserFamily",
    "detect_family",
    "find_family",
    "guidance_call_kwargs",
    "register_family",
    "sdedit_start",
    "unregister_family",
]

DEFAULT_LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


def sdedit_start(steps: int, strength: float) -> int:
    """The first step of a `steps`-step schedule that SDEdit at `strength` runs, as diffusers' img2img pipelines
    (`get_timesteps`): `int(N - N s)`, so the last `N - int(N - N s)` steps (`N s` rounded up) are run."""
    return int(max(steps - min(steps * strength, steps), 0))


@dataclass(frozen=True)
class DenoiserFamily(ABC):
    """One model family: what differs between families, as data and as methods on a pipeline.

    Attributes:
        name: the registry key: `"sd"`, `"sdxl"`, `"sd3"`, `"flux"`, `"qwen_image"`, `"z_image"`, `"flux2_klein"`.
        denoiser: the pipeline attribute holding the trained network (`"unet"` or `"transformer"`).
        flow_matching: rectified flow (`x = (1-s) x0 + s eps`, target `eps - x0`) instead of DDPM noising.
        text_encoders: the pipeline attributes of its (frozen) text encoders.
        denoiser_classes: class names of the denoiser that identify the family (:meth:`matches`).
        guidance_distilled: guided by an embedding, not by classifier-free guidance: its pipeline runs no
            unconditional branch unless true CFG is asked for (FLUX.1's `true_cfg_scale`, 1 by default).
        uniform_sampling_sigmas: its pipeline samples on `sigmas = linspace(1, 1/N, N)` (then shifted), not on the
            scheduler's own `set_timesteps(N)` grid (FLUX.1, Qwen-Image, Z-Image, FLUX.2 [klein]).
        packed_latents: the denoiser takes 2x2 latent patches folded into channels (`in_channels = 4 C`).
        lora_targets: default LoRA target modules (the attention projections).
        takes_sequence_length: its pipeline call takes `max_sequence_length` (a T5 / LLM text encoder).
        micro_conditioning_keys: conditioning entries built from image sizes, not prompts (SDXL's `time_ids`).
    """

    name: str
    denoiser: str
    flow_matching: bool
    text_encoders: tuple[str, ...]
    denoiser_classes: tuple[str, ...] = ()
    guidance_distilled: bool = False
    uniform_sampling_sigmas: bool = False
    packed_latents: bool = False
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    takes_sequence_length: bool = False
    micro_conditioning_keys: tuple[str, ...] = ()

    # -- identity ------------------------------------------------------------------------------------------------

    @property
    def lora_prefix(self) -> str:
        """Key prefix of the denoiser's layers in a diffusers LoRA file (`unet.` / `transformer.`)."""
        return self.denoiser

    @property
    def frozen_modules(self) -> tuple[str, ...]:
        """The pipeline attributes that stay frozen: the VAE and the text encoders."""
        return ("vae", *self.text_encoders)

    def matches(self, pipeline: Any) -> bool:
        """Whether `pipeline` belongs to this family: by default, its denoiser's class is in `denoiser_classes`."""
        return type(getattr(pipeline, self.denoiser, None)).__name__ in self.denoiser_classes

    # -- the model -----------------------------------------------------------------------------------------------

    def latent_channels(self, denoiser: torch.nn.Module) -> int:
        """Channels of the unpacked latents `[B, C, h, w]` the trainers work in."""
        channels = int(denoiser.config.in_channels)
        return channels // 4 if self.packed_latents else channels

    def hidden_size(self, denoiser: torch.nn.Module) -> int:
        """The denoiser's widest feature size (DeepSpeed's bucket sizes are derived from it)."""
        config = denoiser.config
        if getattr(config, "block_out_channels", None):
            return int(max(config.block_out_channels))
        if getattr(config, "num_attention_heads", None) and getattr(config, "attention_head_dim", None):
            return int(config.num_attention_heads * config.attention_head_dim)
        return int(getattr(config, "dim", None) or config.hidden_size)

    def latent_side(self, pixels: int, vae_scale_factor: int) -> int:
        """Side of the trainers' latents for an image side of `pixels` (by default, the VAE factor's fraction)."""
        return pixels // vae_scale_factor

    def image_seq_len(self, latent_height: int, latent_width: int) -> int:
        """Image tokens of a latent `h x w` (2x2 patches), for the dynamic shift of the sampling schedule."""
        return (latent_height // 2) * (latent_width // 2)

    # -- prompts -------------------------------------------------------------------------------------------------

    @abstractmethod
    def encode_prompts(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """The text conditioning of `prompts`, exactly as the pipeline computes it at inference.

        Every value is a tensor with one row per prompt and the same shape for any batch of prompts (pad variable
        lengths to a fixed one, with a mask), so conditionings can be cached, concatenated and indexed.
        """

    def encode_prompts_with_negative(
        self, pipeline: Any, prompts: list[str], max_sequence_length: int | None = None, resolution: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(conditional, unconditional) conditioning for classifier-free guidance: by default the empty prompt's."""
        cond = self.encode_prompts(pipeline, prompts, max_sequence_length)
        return cond, self.encode_prompts(pipeline, [""] * len(prompts), max_sequence_length)

    def micro_conditioning(
        self, original_sizes: torch.Tensor, crop_top_lefts: torch.Tensor, resolution: int
    ) -> dict[str, torch.Tensor]:
        """Conditioning from image sizes and crops (the keys of `micro_conditioning_keys`); none by default."""
        return {}

    # -- images --------------------------------------------------------------------------------------------------

    def encode_images(self, vae: Any, pixel_values: torch.Tensor, generator=None) -> torch.Tensor:
        """Scaled (and shifted) VAE latents `[B, C, h, w]` of images in [-1, 1]."""
        from ..pipelines import encode_images

        return encode_images(vae, pixel_values, generator)

    def decode_latents(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (`[B, 3, H, W]`, float32) from latents `[B, C, h, w]`; differentiable."""
        from ..pipelines import decode_latents

        return decode_latents(vae, latents)

    # -- the denoiser call ---------------------------------------------------------------------------------------

    @abstractmethod
    def predict(
        self,
        model: Any,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditioning: dict[str, torch.Tensor],
        num_train_timesteps: int,
        guidance: torch.Tensor | None,
    ) -> torch.Tensor:
        """One denoiser prediction `[B, C, h, w]` (the layout of `noisy_latents`) at timesteps in `[0, N]`.

        `guidance` is the guidance-embedding value per sample (None when the denoiser has no such embedding). Flow
        families return the velocity `eps - x0`, whatever sign and timestep convention the denoiser itself uses.
        """

    def guidance_active(self, scale: float, pipeline: Any = None) -> bool:
        """Whether `pipeline` runs its unconditional branch at CFG scale `scale` (by default: above 1)."""
        return scale > 1.0

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guidance as the pipeline combines its two branches: `uncond + s (cond - uncond)`."""
        return uncond + scale * (cond - uncond)

    # -- sampling ------------------------------------------------------------------------------------------------

    def sampling_sigmas(self, steps: int) -> np.ndarray | None:
        """The sigmas the pipeline passes to its scheduler's `set_timesteps` (None: the scheduler's own grid)."""
        return np.linspace(1.0, 1.0 / steps, steps) if self.uniform_sampling_sigmas else None

    def set_sampling_timesteps(
        self, scheduler: Any, steps: int, latent_height: int, latent_width: int, device: Any = None
    ) -> None:
        """`set_timesteps` on the rollout sampler exactly as the pipeline calls it (sigmas, dynamic shift `mu`)."""
        if not self.flow_matching:
            scheduler.set_timesteps(steps, device=device)
            return
        kwargs: dict[str, Any] = {}
        sigmas = None if scheduler.config.get("use_flow_sigmas", False) else self.sampling_sigmas(steps)
        if sigmas is not None:
            kwargs["sigmas"] = sigmas
        if scheduler.config.get("use_dynamic_shifting", False):
            from diffusers.pipelines.flux.pipeline_flux import calculate_shift

            c = scheduler.config
            seq_len = self.image_seq_len(latent_height, latent_width)
            kwargs["mu"] = calculate_shift(
                seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                c.get("base_shift", 0.5), c.get("max_shift", 1.15),
            )  # fmt: skip
        scheduler.set_timesteps(steps, device=device, **kwargs)

    def pipeline_call_kwargs(
        self, max_sequence_length: int | None, guidance_scale: float | None = None, num_prompts: int = 1
    ) -> dict[str, Any]:
        """Keywords of the pipeline's `__call__` for a text length (families that take one) and a CFG scale (for a
        call on `num_prompts` prompts)."""
        kwargs: dict[str, Any] = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
        if self.takes_sequence_length and max_sequence_length is not None:
            kwargs["max_sequence_length"] = max_sequence_length
        return kwargs

    # -- img2img -------------------------------------------------------------------------------------------------

    def img2img(self, pipeline: Any) -> Callable[..., Any] | None:
        """SDEdit on `pipeline` where diffusers has no img2img pipeline for it (`AutoPipelineForImage2Image` maps it
        to itself): a callable taking the img2img pipelines' keywords (`prompt`, `image`, `strength`,
        `num_inference_steps`, `generator`, `height`, `width`; the rest go to the pipeline's call) and returning
        the pipeline's output. None (the default): the family refines through its diffusers img2img pipeline."""
        return None

    # -- saving --------------------------------------------------------------------------------------------------

    def lora_save_kwargs(self, lora_layers: dict[str, torch.Tensor], metadata: dict) -> dict[str, Any]:
        """Keywords of the pipeline class's `save_lora_weights` for the denoiser's LoRA layers and their config."""
        prefix = self.lora_prefix
        return {f"{prefix}_lora_layers": lora_layers, f"{prefix}_lora_adapter_metadata": metadata}


FAMILIES: dict[str, DenoiserFamily] = {}


def register_family(family: DenoiserFamily, *, before: str | None = None) -> DenoiserFamily:
    """Add `family` to the registry (detection tries families in registration order; `before` puts it ahead of
    that family, for a family whose pipelines another's `matches` would also accept). Returns `family`."""
    if not isinstance(family, DenoiserFamily):
        raise TypeError(f"register_family takes a DenoiserFamily, got {type(family).__name__}")
    if family.name in FAMILIES:
        raise ValueError(f"a family named {family.name!r} is already registered")
    if before is not None and before not in FAMILIES:
        raise KeyError(f"no registered family {before!r} to insert before; registered: {sorted(FAMILIES)}")
    items = list(FAMILIES.items())
    index = [name for name, _ in items].index(before) if before is not None else len(items)
    items.insert(index, (family.name, family))
    FAMILIES.clear()
    FAMILIES.update(items)
    return family


def unregister_family(name: str) -> DenoiserFamily:
    """Remove the family `name` from the registry and return it (for tests that register a toy family)."""
    return FAMILIES.pop(name)


def find_family(pipeline: Any) -> DenoiserFamily | None:
    """The registered family of `pipeline`, or None (a callable, an editing pipeline no family trains)."""
    return next((family for family in FAMILIES.values() if family.matches(pipeline)), None)


def guidance_call_kwargs(pipeline: Any, guidance_scale: float, num_prompts: int) -> dict[str, Any]:
    """The keywords that ask `pipeline` for CFG scale `guidance_scale` in its family's convention (Qwen-Image:
    `true_cfg_scale` and an empty negative prompt); `{"guidance_scale": ...}` for a pipeline of no family."""
    family = find_family(pipeline)
    if family is None:
        return {"guidance_scale": guidance_scale}
    return family.pipeline_call_kwargs(None, guidance_scale, num_prompts)


def detect_family(pipeline: Any) -> DenoiserFamily:
    """The registered family of a diffusers pipeline: the first whose `matches` accepts it."""
    family = find_family(pipeline)
    if family is not None:
        return family
    unet, transformer = getattr(pipeline, "unet", None), getattr(pipeline, "transformer", None)
    if unet is None and transformer is None:
        raise TypeError(
            f"{type(pipeline).__name__} has neither a `unet` nor a `transformer`: expected the pipeline of a "
            f"registered family ({', '.join(FAMILIES)})"
        )
    denoiser = type(transformer if transformer is not None else unet).__name__
    known = sorted({c for f in FAMILIES.values() for c in f.denoiser_classes})
    raise TypeError(
        f"{type(pipeline).__name__} has a {denoiser}, which no registered family accepts (known denoisers: "
        f"{', '.join(known)}); see docs/adding_a_model.md to add one"
    )
