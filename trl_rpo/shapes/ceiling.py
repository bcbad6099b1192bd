"""The supervised ceiling (issue 28): how far does fine-tuning on the *correct* images of a prompt set raise the
shapes base's alignment on those very prompts?

Every online method learns from images the model samples and a reward; Diffusion-DPO from pairs. Both can at best
teach the model what plain supervised fine-tuning on perfect images would (`render(prompt)` scores 1.0). So each
variant here fine-tunes the base on every scene of a split, rendered as pretraining renders it (`images_per_scene`
layouts each), with the pretraining objective (`pretrain.denoising_target`, no loss weighting), then samples the
split's scored prompts at each guidance, paired image for image with the base sampled alike. If these gains are
small at a budget, no preference or reward method trained for that budget has room to show one.

Only the splits online rows may train on (`ONLINE_PROMPT_SPLITS`: train, dev2 and its halves dev2_a / dev2_b) are
allowed: fitting dev or final renders would be training on the prompts recipes are chosen or reported on. Fitting
one half of the held-out pairs (dev2_a) also scores the other half's dev and dev2 scenes, pairs never fitted: the
ceiling of transfer to unseen compositions, which is what final measures.
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

__all__ = [
    "CEILING_VARIANTS",
    "TRANSFER_CEILING_SEEDS",
    "TRANSFER_CEILING_VARIANTS",
    "CeilingVariant",
    "format_supervised_ceiling",
    "run_supervised_ceiling",
]


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

# The transfer ceiling (declared 2026-12-07 in docs/shapes.md before it ran): the variant with room on dev2 (the whole
# UNet at lr 1e-4, 800 steps) fitted on half a's dev2 renders (`split="dev2_a"`) on three training seeds, scored on
# its own 54 scenes and on the 90 scenes of half b's unseen pairs.
TRANSFER_CEILING_VARIANTS: dict[str, CeilingVariant] = {
    "full UNet, lr 1e-4, 800 steps": CeilingVariant(800, 1e-4, "full"),
}
TRANSFER_CEILING_SEEDS: tuple[int, ...] = (0, 1, 2)


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
    guidance_scales: Sequence[float] | None = None,
    images_per_scene: int = 8,
    training_seeds: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune the base on renders of every `split` scene with each variant; score `scored_prompts` of that split
    at each guidance against the base sampled alike (paired 95% BCa interval); write ceiling.json/.md.

    The scored prompts are `prompts(scored_prompts, seed=config.seed, split=split)` with `config.eval_seeds`
    noises each; each variant trains once per `training_seeds` (default: `config.seed` alone). The first guidance
    must be `config.guidance_scale` (default: it, then 2, where the base had room at the earlier demo's 5). With
    `split` "dev2_a" or "dev2_b" (one half of the held-out pairs), every model is also scored on all of the other
    half's dev and dev2 scenes (`unseen`: pairs it never saw; does perfect supervision transfer?). With several
    training seeds, `pooled` gives each variant's gain over them at each guidance, on each prompt set, by the
    study's two-level bootstrap over seeds and prompts.
    """
    import torch

    from ..statistics import hierarchical_bootstrap
    from .model import load_pipeline
    from .world import SPLIT_SIZES, all_scenes, prompt_text, unseen_pair_splits
    from .world import prompts as shape_prompts

    if split not in ONLINE_PROMPT_SPLITS:
        raise ValueError(f"split must be one of {list(ONLINE_PROMPT_SPLITS)} (never dev, where recipes are chosen, or "
                         f"final, where they are reported), got {split!r}")  # fmt: skip
    if guidance_scales is None:
        guidance_scales = tuple(dict.fromkeys((config.guidance_scale, 2.0)))
    if not variants or not guidance_scales or float(guidance_scales[0]) != config.guidance_scale:
        raise ValueError(f"run_supervised_ceiling needs a variant and guidance_scales starting with the config's "
                         f"{config.guidance_scale}, got {list(variants)} and {list(guidance_scales)}")  # fmt: skip
    if scored_prompts > SPLIT_SIZES[split]:  # more would score some prompts twice
        raise ValueError(f"{split} holds {SPLIT_SIZES[split]} scenes; cannot score {scored_prompts} distinct prompts")
    seeds = [int(s) for s in (training_seeds if training_seeds is not None else (config.seed,))]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"training_seeds must be distinct and not empty, got {training_seeds}")
    output_dir = _new_folder(output_dir)
    _quiet_libraries()
    base = load_pipeline(config.model)
    size = base.unet.config.sample_size * base.vae_scale_factor  # the resolution the pipeline samples at
    pixels, prompts = _renders(split, size, images_per_scene)
    scored = shape_prompts(scored_prompts, seed=config.seed, split=split)
    sets = {split: (scored, config.eval_seeds)}
    if split in ("dev2_a", "dev2_b"):
        unseen = [prompt_text(s) for part in unseen_pair_splits(split) for s in all_scenes(part)]
        sets["unseen"] = (unseen, config.eval_seeds)
    scorer = _Scorer(config, sets)
    bases = {float(g): "base" if float(g) == config.guidance_scale else base_at(g) for g in guidance_scales}
    for guidance, name in bases.items():
        scorer(name, base, None if name == "base" else guidance)
    rows = []
    for name, variant in variants.items():
        for seed in seeds:
            torch.manual_seed(seed)
            pipeline = load_pipeline(config.model)
            start = time.perf_counter()
            losses = fine_tune_on_renders(pipeline, pixels, prompts, variant, config.lora_r, seed=seed)
            row = {"variant": name, **dataclasses.asdict(variant), "seed": seed,
                   "seconds": round(time.perf_counter() - start, 1), "loss_first": _mean(losses[:50]),
                   "loss_last": _mean(losses[-50:]), "by_guidance": {}}  # fmt: skip
            for guidance, base in bases.items():
                run = _run_name(name, seed, guidance, several=len(seeds) > 1)
                scorer(run, pipeline, guidance)
                entry = row["by_guidance"][f"{guidance:g}"] = _gain(scorer, run, base, split)
                if "unseen" in sets:
                    entry["unseen"] = _gain(scorer, run, base, "unseen")
            rows.append(row)
            log(format_supervised_ceiling({"rows": [row], "split": split}).splitlines()[-1])
    pooled = []
    if len(seeds) > 1:
        for name in variants:
            for guidance, base in bases.items():
                for prompt_set in sets:
                    runs = [scorer.scores[_run_name(name, s, guidance, True)][prompt_set] for s in seeds]
                    result = hierarchical_bootstrap(runs, [scorer.scores[base][prompt_set]] * len(runs), seed=0)
                    pooled.append({"variant": name, "guidance_scale": guidance, "prompts": prompt_set,
                                   "gain": round(result.gain, 4), "gain_ci": [round(v, 4) for v in result.ci],
                                   "p_value": round(result.p_value, 4)})  # fmt: skip
    results = {"split": split, "rows": rows, "pooled": pooled, "training_seeds": seeds, "scored_prompts": scored,
               "unseen_prompts": sets["unseen"][0] if "unseen" in sets else [], "eval_seeds": list(config.eval_seeds),
               "training_images": len(pixels), "guidance_scales": [float(g) for g in guidance_scales],
               "scores": {name: by_set[split] for name, by_set in scorer.scores.items()},  # [noise][prompt]
               "unseen_scores": {n: by_set["unseen"] for n, by_set in scorer.scores.items() if "unseen" in by_set},
               "config": dataclasses.asdict(config)}  # fmt: skip
    return _write_sweep(output_dir, "ceiling", results, format_supervised_ceiling(results), log)


def _run_name(variant: str, seed: int, guidance: float, several: bool) -> str:
    """The scorer's name for a fine-tuned model: "variant@g", or "variant (seed s)@g" when seeds are several."""
    return f"{variant} (seed {seed})@{guidance:g}" if several else f"{variant}@{guidance:g}"


def _gain(scorer: _Scorer, run: str, base: str, prompt_set: str) -> dict[str, Any]:
    gain = scorer.compare(run, base, prompt_set).to_dict()
    return {"base": round(scorer.mean(base, prompt_set), 4), "gain": gain["gain"], "gain_ci": gain["gain_ci"],
            "p_value": gain["p_value"]}  # fmt: skip


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def format_supervised_ceiling(results: dict[str, Any]) -> str:
    """The ceiling as Markdown: per variant (and training seed), the gain over the base sampled alike at each
    guidance on the split it fits and, for a half of the held-out pairs, on the other half's unseen pairs; then
    the gains pooled over the training seeds."""

    def cell(v: dict[str, Any]) -> str:
        return f"{v['gain']:+.3f} [{v['gain_ci'][0]:+.3f}, {v['gain_ci'][1]:+.3f}]"

    lines = [f"| fine-tuned on every {results['split']} render | seed | loss, first -> last 50 steps | gain on "
             f"{results['split']} at each guidance (base) [paired 95% CI] | gain on the unseen pairs | seconds |",
             "|---|---:|---|---|---|---:|"]  # fmt: skip
    for row in results["rows"]:
        gains = "; ".join(f"g{g}: {cell(v)} ({v['base']:.3f})" for g, v in row["by_guidance"].items())
        unseen = "; ".join(f"g{g}: {cell(v['unseen'])} ({v['unseen']['base']:.3f})"
                           for g, v in row["by_guidance"].items() if "unseen" in v) or "-"  # fmt: skip
        loss = f"{row['loss_first']:.3f} -> {row['loss_last']:.3f}" if row["loss_first"] is not None else "-"
        lines.append(f"| {row['variant']} | {row.get('seed', '')} | {loss} | {gains} | {unseen} | "
                     f"{row['seconds']:.0f} |")  # fmt: skip
    if results.get("pooled"):
        lines += ["", "| variant | guidance | prompts | gain over the training seeds [95% CI] | p |",
                  "|---|---:|---|---|---:|"]  # fmt: skip
        lines += [f"| {p['variant']} | {p['guidance_scale']:g} | {p['prompts']} | {cell(p)} | {p['p_value']:.3f} |"
                  for p in results["pooled"]]  # fmt: skip
    return "\n".join(lines)
