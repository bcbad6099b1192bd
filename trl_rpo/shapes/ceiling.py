"""The supervised ceiling (issue 28): how far does fine-tuning on the *correct* images of a prompt set raise the
shapes base's alignment on those very prompts?

Every online method learns from images the model samples and a reward; Diffusion-DPO from pairs. Both can at best
teach the model what plain supervised fine-tuning on perfect images would (`render(prompt)` scores 1.0). So each
variant here fine-tunes the base on every scene of a split, rendered as pretraining renders it (`images_per_scene`
layouts each), with the pretraining objective (`pretrain.denoising_target`, no loss weighting), then samples the
split's scored prompts at each guidance, paired image for image with the base sampled alike. If these gains are
small at a budget, no preference or reward method trained for that budget has room to show one.

Only the splits online rows may train on (`ONLINE_PROMPT_SPLITS`: train, dev2) are allowed: fitting dev or final
renders would be training on the prompts recipes are chosen or reported on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .demo import ONLINE_PROMPT_SPLITS, DemoConfig
from .stages import _quiet_libraries, _Scorer, base_at
from .sweep_files import _new_folder, _write_sweep

__all__ = ["CEILING_VARIANTS", "CeilingVariant", "format_supervised_ceiling", "run_supervised_ceiling"]


@dataclasses.dataclass(frozen=True)
class CeilingVariant:
    """One supervised fine-tuning: `params` "lora" (the demo's LoRA: rank `DemoConfig.lora_r` on the attention
    projections, as every trained row) or "full" (every UNet weight), AdamW at a constant `learning_rate`, `steps`
    steps of `batch_size` images, each image's prompt replaced by the empty one with `empty_prompt_probability`
    (pretraining's 0.1: classifier-free guidance samples the unconditional prediction too; 0 trains the conditional
    one alone, as every trained row of the demo does)."""

    steps: int
    learning_rate: float
    params: str = "lora"
    batch_size: int = 16
    empty_prompt_probability: float = 0.1

    def __post_init__(self):
        if self.params not in ("lora", "full"):
            raise ValueError(f"params must be 'lora' or 'full', got {self.params!r}")
        if not 0.0 <= self.empty_prompt_probability < 1.0:
            raise ValueError(f"empty_prompt_probability must be in [0, 1), got {self.empty_prompt_probability}")
        if self.steps < 0 or self.learning_rate <= 0 or self.batch_size < 1:
            raise ValueError(f"steps must be >= 0, learning_rate > 0 and batch_size >= 1, got {self}")


# The diagnostic of 2026-12-07 (docs/shapes.md, "The supervised ceiling"): the demo's LoRA at 3e-4 for 800 and 2000
# steps, and the whole UNet at 1e-4, each with pretraining's empty prompts; the demo's LoRA without them, as the
# demo's rows train.
CEILING_VARIANTS: dict[str, CeilingVariant] = {
    "LoRA, lr 3e-4, 800 steps": CeilingVariant(800, 3e-4),
    "LoRA, lr 3e-4, 2000 steps": CeilingVariant(2000, 3e-4),
    "full UNet, lr 1e-4, 800 steps": CeilingVariant(800, 1e-4, "full"),
    "LoRA, lr 3e-4, 800 steps, no empty prompts": CeilingVariant(800, 3e-4, empty_prompt_probability=0.0),
}


def _renders(split: str, image_size: int, images_per_scene: int):
    """Every scene of `split` x `images_per_scene` layouts (seeds 0..n-1, as pretraining's seed 0 renders them), as
    [-1, 1] pixels with their prompts."""
    import numpy as np
    import torch

    from .render import render
    from .world import all_scenes, prompt_text

    scenes = all_scenes(split)
    arrays = [np.asarray(render(s, size=image_size, seed=k)) for s in scenes for k in range(images_per_scene)]
    prompts = [prompt_text(s) for s in scenes for _ in range(images_per_scene)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0, prompts


def fine_tune_on_renders(pipeline, pixels, prompts: Sequence[str], variant: CeilingVariant, lora_r: int,
                         seed: int = 0) -> list[float]:  # fmt: skip
    """Fine-tune `pipeline.unet` in place on (`pixels`, `prompts`) with the pretraining objective; returns the
    per-step losses. The VAE and text encoder stay frozen (their outputs are computed once)."""
    import torch
    import torch.nn.functional as F

    from ..families.base import DEFAULT_LORA_TARGETS
    from .pretrain import denoising_target
    from .stages import _lora_config

    unet, vae, scheduler = pipeline.unet, pipeline.vae, pipeline.scheduler
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i : i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
        latents = latents * vae.config.scaling_factor
        unique = [*sorted(set(prompts)), ""]  # the empty prompt last
        ids = pipeline.tokenizer(unique, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids  # fmt: skip
        hidden_of = pipeline.text_encoder(ids)[0]
        row_of = {text: i for i, text in enumerate(unique)}
        rows = torch.tensor([row_of[p] for p in prompts])
    unet.requires_grad_(False)
    if variant.params == "lora":
        lora = _lora_config(lora_r)
        lora.target_modules = list(DEFAULT_LORA_TARGETS)
        unet.add_adapter(lora)
    else:
        unet.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=variant.learning_rate)
    unet.train()
    losses = []
    for _ in range(variant.steps):
        index = torch.randint(len(latents), (variant.batch_size,), generator=generator)
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
        chosen = rows[index].clone()
        chosen[torch.rand(len(chosen), generator=generator) < variant.empty_prompt_probability] = len(unique) - 1
        prediction = unet(scheduler.add_noise(x0, noise, timesteps), timesteps, hidden_of[chosen]).sample
        target, _ = denoising_target(scheduler, x0, noise, timesteps, None)
        loss = F.mse_loss(prediction, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    unet.eval()
    unet.requires_grad_(False)
    return losses


def run_supervised_ceiling(
    config: DemoConfig,
    output_dir: str | Path,
    split: str = "dev2",
    variants: dict[str, CeilingVariant] = CEILING_VARIANTS,
    scored_prompts: int = 60,
    guidance_scales: Sequence[float] = (5.0, 2.0),
    images_per_scene: int = 8,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune the base on renders of every `split` scene with each variant; score `scored_prompts` of that split
    at each guidance against the base sampled alike (paired 95% BCa interval); write ceiling.json/.md.

    The scored prompts are `prompts(scored_prompts, seed=config.seed, split=split)` with `config.eval_seeds`
    noises each; each variant trains with seed `config.seed`. The first guidance must be `config.guidance_scale`.
    """
    import torch

    from .model import load_pipeline
    from .world import prompts as shape_prompts

    if split not in ONLINE_PROMPT_SPLITS:
        raise ValueError(f"split must be one of {list(ONLINE_PROMPT_SPLITS)} (never dev, where recipes are chosen, or "
                         f"final, where they are reported), got {split!r}")  # fmt: skip
    if not variants or not guidance_scales or float(guidance_scales[0]) != config.guidance_scale:
        raise ValueError(f"run_supervised_ceiling needs a variant and guidance_scales starting with the config's "
                         f"{config.guidance_scale}, got {list(variants)} and {list(guidance_scales)}")  # fmt: skip
    output_dir = _new_folder(output_dir)
    _quiet_libraries()
    base = load_pipeline(config.model)
    size = base.unet.config.sample_size * base.vae_scale_factor  # the resolution the pipeline samples at
    pixels, prompts = _renders(split, size, images_per_scene)
    scored = shape_prompts(scored_prompts, seed=config.seed, split=split)
    scorer = _Scorer(config, {split: (scored, config.eval_seeds)})
    bases = {float(g): "base" if float(g) == config.guidance_scale else base_at(g) for g in guidance_scales}
    for guidance, name in bases.items():
        scorer(name, base, None if name == "base" else guidance)
    rows = []
    for name, variant in variants.items():
        torch.manual_seed(config.seed)
        pipeline = load_pipeline(config.model)
        start = time.perf_counter()
        losses = fine_tune_on_renders(pipeline, pixels, prompts, variant, config.lora_r, seed=config.seed)
        row = {"variant": name, **dataclasses.asdict(variant), "seconds": round(time.perf_counter() - start, 1),
               "loss_first": _mean(losses[:50]), "loss_last": _mean(losses[-50:]), "by_guidance": {}}  # fmt: skip
        for guidance, base in bases.items():
            run = f"{name}@{guidance:g}"
            scorer(run, pipeline, guidance)
            gain = scorer.compare(run, base, split).to_dict()
            row["by_guidance"][f"{guidance:g}"] = {"base": round(scorer.mean(base, split), 4), "gain": gain["gain"],
                                                   "gain_ci": gain["gain_ci"], "p_value": gain["p_value"]}  # fmt: skip
        rows.append(row)
        log(format_supervised_ceiling({"rows": [row], "split": split}).splitlines()[-1])
    results = {"split": split, "rows": rows, "scored_prompts": scored, "eval_seeds": list(config.eval_seeds),
               "training_images": len(pixels), "guidance_scales": [float(g) for g in guidance_scales],
               "scores": {name: by_set[split] for name, by_set in scorer.scores.items()},  # [noise][prompt]
               "config": dataclasses.asdict(config)}  # fmt: skip
    return _write_sweep(output_dir, "ceiling", results, format_supervised_ceiling(results), log)


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def format_supervised_ceiling(results: dict[str, Any]) -> str:
    """The ceiling as Markdown: per variant, the gain over the base sampled alike at each guidance."""
    lines = [f"| fine-tuned on every {results['split']} render | loss, first -> last 50 steps | gain at each guidance "
             "(base) [paired 95% CI] | seconds |", "|---|---|---|---:|"]  # fmt: skip
    for row in results["rows"]:
        gains = "; ".join(f"g{g}: {v['gain']:+.3f} [{v['gain_ci'][0]:+.3f}, {v['gain_ci'][1]:+.3f}] ({v['base']:.3f})"
                          for g, v in row["by_guidance"].items())  # fmt: skip
        loss = f"{row['loss_first']:.3f} -> {row['loss_last']:.3f}" if row["loss_first"] is not None else "-"
        lines.append(f"| {row['variant']} | {loss} | {gains} | {row['seconds']:.0f} |")
    return "\n".join(lines)
