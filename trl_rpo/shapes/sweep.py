"""The dev sweep that chooses the demo's Diffusion-DPO recipe, on *dev* prompts only.

    python examples/shapes/dev_sweep.py --output-dir outputs/dev-sweep

Both pair sets of the demo (RPO pairs and reward-labelled pairs, the same image budget) are built once; each
recipe (learning rate, beta, steps, LoRA or full fine-tuning, and an SFT control on the chosen images) trains on
each set and is scored on the dev split (held-out scenes disjoint from the demo's final prompts) by its paired gain
over the base model, and by its implicit-reward accuracy on RPO pairs built from dev prompts (does the model rank
unseen pairs correctly, even where sampling does not change?). The Diffusion-DPO recipe with the best mean dev gain
over the two pair sets is the one to put in `DemoConfig`; `sweep.md` is the table docs/shapes.md quotes. Test
prompts are never evaluated here.

`run_pair_sweep` then chooses the RPO refinement strength, and `run_seed_sweep` chooses between masked and plain
Diffusion-DPO on the mean over training seeds (one model's interval hides the spread between trainings), and,
with `MASKED_RECIPE_VARIANTS`, whether any one change to the masked recipe does better, and with
`SFT_VARIANTS`, whether adding the denoising loss on the chosen images does. `run_online_sweep` asks whether the
online methods (TailorPO, its final-image baseline, GRPO) move the model with more steps than the demo gives them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .demo import DemoConfig
from .stages import (
    _quiet_libraries,
    _sampling,
    _Scorer,
    build_pair_sets,
    build_rpo_pairs,
    pair_prompts,
    train_dpo,
)
from .sweep_files import _dev_gain, _new_folder, _write_sweep

__all__ = [
    "DEFAULT_RECIPES",
    "DEFAULT_SEED_VARIANTS",
    "MASKED_RECIPE_VARIANTS",
    "ONLINE_METHODS",
    "ONLINE_BATCH_RECIPES",
    "ONLINE_BATCH_SEEDS",
    "TAILORPO_BATCH_RECIPES",
    "TAILORPO_BATCH_SEEDS",
    "TAILORPO_LOOKAHEAD_RECIPES",
    "TAILORPO_LOOKAHEAD_SEEDS",
    "TAILORPO_WINDOW_RECIPES",
    "TAILORPO_WINDOW_SEEDS",
    "TAILORPO_FINAL_VBASE_RECIPES",
    "TAILORPO_FINAL_VBASE_SEEDS",
    "ONLINE_LR_VBASE_RECIPES",
    "ONLINE_LR_VBASE_SEEDS",
    "VBASE_RECIPES",
    "VBASE_SEEDS",
    "as_declared",
    "best_guidance",
    "probe_guidance",
    "ONLINE_RECIPES",
    "ONLINE_REWARD_RECIPES",
    "ONLINE_REWARD_SEEDS",
    "NFT_CONFIRM_RECIPES",
    "NFT_CONFIRM_SEEDS",
    "NFT_LR_RECIPES",
    "NFT_POWER_RECIPES",
    "NFT_POWER_SEEDS",
    "NFT_CFG_FREE_RECIPES",
    "NFT_CFG_FREE_SEEDS",
    "NFT_GUIDANCE2_RECIPES",
    "NFT_GUIDANCE2_SEEDS",
    "NFT_NOISE_PER_PROMPT",
    "NFT_NOISE_RECIPES",
    "NFT_NOISE_SEEDS",
    "NFT_LR_SEEDS",
    "NFT_ROLLOUT_RECIPES",
    "NFT_ROLLOUT_SEEDS",
    "ONLINE_STEPS_RECIPES",
    "ONLINE_STEPS_SEEDS",
    "SFT_VARIANTS",
    "TIMESTEP_VARIANTS",
    "edit_survival",
    "format_online_recipe_sweep",
    "format_online_sweep",
    "format_pair_sweep",
    "format_seed_sweep",
    "format_sweep",
    "rescore_train_prompts",
    "rollout_rise",
    "run_dev_sweep",
    "run_online_recipe_sweep",
    "run_online_sweep",
    "run_pair_sweep",
    "run_seed_sweep",
]

# The diffusers DPO LoRA script's defaults (lr 5e-4 for LoRA, beta 5000 in our convention), a higher learning
# rate and, from it, one change at a time (lower beta lets the model move further before the sigmoid saturates;
# more steps), plus full fine-tuning at a lower learning rate.
DEFAULT_RECIPES: tuple[dict[str, Any], ...] = (
    {"use_lora": True, "learning_rate": 5e-4, "beta": 5000.0, "max_steps": 150},
    {"use_lora": True, "learning_rate": 2e-3, "beta": 5000.0, "max_steps": 150},
    {"use_lora": True, "learning_rate": 2e-3, "beta": 500.0, "max_steps": 150},
    {"use_lora": True, "learning_rate": 2e-3, "beta": 5000.0, "max_steps": 300},
    {"use_lora": False, "learning_rate": 1e-4, "beta": 5000.0, "max_steps": 150},
    {"use_lora": True, "learning_rate": 5e-4, "beta": 5000.0, "max_steps": 150, "loss_type": "sft"},
)


def best_guidance(base_dev_alignment: dict[float, float]) -> float:
    """The dev sweep's guidance rule: the classifier-free guidance scale at which the *base* scores highest on the
    dev prompts (ties go to the first listed). Guidance is a sampling hyper-parameter, so dev chooses it like the
    others, and on the base alone, so no trained recipe leans on the choice."""
    if not base_dev_alignment:
        raise ValueError("best_guidance needs the base's dev alignment at one guidance scale or more")
    return max(base_dev_alignment, key=base_dev_alignment.get)


def probe_guidance(
    config: DemoConfig, base, guidance_scales: Sequence[float], make_scorer: Callable[[DemoConfig], _Scorer],
    label: str, log: Callable[[str], None] = print,
) -> tuple[_Scorer, dict[float, float]]:  # fmt: skip
    """Score the base with `make_scorer(config at each guidance)` and pick a scale by `best_guidance`: returns the
    chosen scale's scorer (its base scores kept as the sweep's baseline, not re-rendered; its `config` is the one to
    run everything after at) and the base's dev alignment by scale."""
    probes: dict[float, _Scorer] = {}
    for scale in guidance_scales:
        probes[float(scale)] = make_scorer(dataclasses.replace(config, guidance_scale=float(scale)))
        probes[float(scale)]("base", base)
        log(f"{label}: base dev alignment {probes[float(scale)].mean('base', 'dev'):.4f} at guidance {scale:g}")
    by_scale = {scale: probe.mean("base", "dev") for scale, probe in probes.items()}
    return probes[best_guidance(by_scale)], by_scale


def run_dev_sweep(
    config: DemoConfig,
    output_dir: str | Path,
    recipes: Sequence[dict[str, Any]] = DEFAULT_RECIPES,
    dev_prompts: int = 60,
    log: Callable[[str], None] = print,
    guidance_scales: Sequence[float] = (),
) -> dict[str, Any]:
    """Train every recipe on both pair sets, score each on dev prompts against the base; write sweep.json/.md.

    With `guidance_scales`, the base model is first scored on the dev prompts at each classifier-free guidance
    scale and the best one is used for everything after (pairs, training, evaluation): guidance is a sampling
    hyper-parameter, so it is chosen on dev like the others.
    """
    from .model import load_pipeline
    from .world import prompts as shape_prompts

    output_dir = _new_folder(output_dir)
    _quiet_libraries()
    dev = shape_prompts(dev_prompts, seed=config.seed, split="dev")
    base = load_pipeline(config.model)
    guidance: dict[float, float] = {}
    if guidance_scales:
        def dev_scorer(probe_config: DemoConfig) -> _Scorer:
            return _Scorer(probe_config, {"dev": (dev, probe_config.eval_seeds)})

        scorer, guidance = probe_guidance(config, base, guidance_scales, dev_scorer, "dev sweep", log)
        config = scorer.config
    else:
        scorer = _Scorer(config, {"dev": (dev, config.eval_seeds)})
        scorer("base", base)
    built = build_pair_sets(config, base, output_dir)
    rpo_pairs, reward_pairs = built["rpo_pairs"], built["reward_pairs"]
    dev_pairs, _ = build_rpo_pairs(config, base, shape_prompts(max(8, dev_prompts), seed=config.seed + 1, split="dev"),
                                   output_dir / "dev_pairs")  # fmt: skip
    dev_pairs = dev_pairs.select_columns(["prompt", "chosen", "rejected"])
    log(f"dev sweep: {len(rpo_pairs)} RPO pairs, {len(reward_pairs)} reward pairs, base dev alignment "
        f"{scorer.mean('base', 'dev'):.3f}")  # fmt: skip
    # The recipe sweep came before loss masking (the seed sweep chose it later): both pair sets train plain here.
    plain = dataclasses.replace(config, mask_weight_outside=1.0)
    rows = []
    for k, recipe in enumerate(recipes):
        row: dict[str, Any] = {"recipe": dict(recipe)}
        for label, pairs in (("rpo_pairs", rpo_pairs), ("reward_pairs", reward_pairs)):
            if len(pairs) == 0:
                raise RuntimeError(f"the dev sweep built no {label}; raise the image budget")
            start = time.perf_counter()
            trainer = train_dpo(plain, pairs, output_dir, f"recipe{k}-{label}", **recipe)
            method = f"recipe{k}-{label}"
            scorer(method, trainer.pipeline)
            accuracy = None
            if len(dev_pairs):
                metrics = trainer.evaluate(eval_dataset=dev_pairs)
                accuracy = metrics.get("eval_rewards/accuracies")
            del trainer
            result = scorer.compare(method, "base", "dev").to_dict()
            row[label] = {key: result[key] for key in ("gain", "gain_ci", "win_rate", "p_value")}
            row[label]["dev_pair_accuracy"] = None if accuracy is None else round(float(accuracy), 3)
            row[label]["seconds"] = round(time.perf_counter() - start, 1)
        row["mean_gain"] = round((row["rpo_pairs"]["gain"] + row["reward_pairs"]["gain"]) / 2, 4)
        rows.append(row)
        log(format_sweep({"rows": [row]}).splitlines()[-1])
    # The SFT control is a diagnosis, not a candidate for the demo's Diffusion-DPO recipe.
    candidates = [i for i, row in enumerate(rows) if row["recipe"].get("loss_type", "sigmoid") != "sft"] or [0]
    best = max(candidates, key=lambda i: rows[i]["mean_gain"])
    results = {"rows": rows, "best": best, "dev_prompts": dev, "base_dev_alignment": scorer.mean("base", "dev"),
               "guidance_scale": config.guidance_scale, "base_dev_alignment_by_guidance": guidance,
               "pairs": {"rpo_pairs": len(rpo_pairs), "reward_pairs": len(reward_pairs), "dev_pairs": len(dev_pairs)},
               "config": {k: v for k, v in vars(config).items()}}  # fmt: skip
    return _write_sweep(output_dir, "sweep", results, format_sweep(results), log)


def format_sweep(results: dict[str, Any]) -> str:
    """The sweep as a Markdown table: one row per recipe, dev gain over base [95% CI] and dev-pair accuracy."""

    def cell(entry: dict[str, Any]) -> str:
        low, high = entry["gain_ci"]
        accuracy = entry.get("dev_pair_accuracy")
        text = f"{entry['gain']:+.3f} [{low:+.3f}, {high:+.3f}]"
        return text if accuracy is None else f"{text}, acc {accuracy:.2f}"

    lines = [
        "| # | loss | tuning | lr | beta | steps | RPO pairs: dev gain [95% CI], dev-pair acc "
        "| reward pairs: dev gain [95% CI], dev-pair acc | mean gain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, row in enumerate(results["rows"]):
        recipe = row["recipe"]
        best = " **(chosen)**" if results.get("best") == k else ""
        lines.append(
            f"| {k} | {recipe.get('loss_type', 'sigmoid')} | {'LoRA' if recipe['use_lora'] else 'full'} "
            f"| {recipe['learning_rate']:g} | {recipe['beta']:g} | {recipe['max_steps']} | {cell(row['rpo_pairs'])} "
            f"| {cell(row['reward_pairs'])} | {row['mean_gain']:+.3f}{best} |"
        )
    return "\n".join(lines)


def run_pair_sweep(
    config: DemoConfig,
    output_dir: str | Path,
    refine_strengths: Sequence[float] = (0.1, 0.2, 0.3),
    mask_weights: Sequence[float] = (1.0, 0.0),
    dev_prompts: int = 60,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Choose the RPO pair builder's refinement strength on dev prompts; write pair_sweep.json/.md.

    The base model's SDEdit refinement pulls each edit back onto the model's own manifold, but the stronger it is
    the more it undoes the edit and the more pairs the verifier rejects. For each strength the RPO pairs are built
    from the same train prompts and image budget, `config`'s DPO recipe trains on them with each
    `mask_weights` entry as the weight of the denoising error outside the edit masks (1.0: plain Diffusion-DPO,
    0.0: masked), and each model's paired gain over the base is measured on dev prompts. The strength with
    the best mean dev gain over the mask weights (both variants train on the same pairs) is chosen.
    """
    from .model import load_pipeline
    from .world import prompts as shape_prompts

    if not refine_strengths or not mask_weights:
        raise ValueError("run_pair_sweep needs at least one refine strength and one mask weight")
    output_dir = _new_folder(output_dir)
    _quiet_libraries()
    dev = shape_prompts(dev_prompts, seed=config.seed, split="dev")
    base = load_pipeline(config.model)
    scorer = _Scorer(config, {"dev": (dev, config.eval_seeds)})
    scorer("base", base)
    train_prompts = pair_prompts(config)
    rows = []
    for strength in refine_strengths:
        start = time.perf_counter()
        pair_config = dataclasses.replace(config, refine_strength=float(strength))
        pairs, builder = build_rpo_pairs(pair_config, base, train_prompts, output_dir / f"rpo_pairs_{strength:g}")
        stats = {k: v for k, v in builder.stats.items() if isinstance(v, (int, float))}
        seconds = round(time.perf_counter() - start, 1)
        row: dict[str, Any] = {"refine_strength": float(strength), "pairs": len(pairs), "builder": stats,
                               "build_seconds": seconds, "by_mask_weight": {}}  # fmt: skip
        for weight in mask_weights:
            method = f"refine{strength:g}-mask{weight:g}"
            if len(pairs) == 0:
                row["by_mask_weight"][f"{weight:g}"] = None
                continue
            trainer = train_dpo(dataclasses.replace(pair_config, mask_weight_outside=float(weight)), pairs,
                                output_dir, method)  # fmt: skip
            scorer(method, trainer.pipeline)
            del trainer
            row["by_mask_weight"][f"{weight:g}"] = _dev_gain(scorer, method)
        gains = [entry["gain"] for entry in row["by_mask_weight"].values() if entry is not None]
        row["mean_gain"] = round(sum(gains) / len(gains), 4) if gains else None
        rows.append(row)
        log(format_pair_sweep({"rows": [row]}).splitlines()[-1])
    scored = [i for i, row in enumerate(rows) if row["mean_gain"] is not None]
    if not scored:
        raise RuntimeError("no refine strength kept any RPO pair; raise the image budget")
    best = max(scored, key=lambda i: rows[i]["mean_gain"])
    results = {"rows": rows, "best": best, "refine_strength": rows[best]["refine_strength"], "dev_prompts": dev,
               "base_dev_alignment": scorer.mean("base", "dev"), "mask_weights": [float(w) for w in mask_weights],
               "config": dataclasses.asdict(config)}  # fmt: skip
    return _write_sweep(output_dir, "pair_sweep", results, format_pair_sweep(results), log)


def format_pair_sweep(results: dict[str, Any]) -> str:
    """The refinement-strength sweep as a Markdown table: pairs kept and dev gain [95% CI] per mask weight."""
    weights = list(results["rows"][0]["by_mask_weight"]) if results["rows"] else []
    header = " | ".join(f"outside-mask weight {w}: dev gain [95% CI]" for w in weights)
    lines = [f"| refine strength | pairs kept | rejected | {header} | mean gain |",
             "|---|---|---|" + "---|" * len(weights) + "---|"]  # fmt: skip
    for k, row in enumerate(results["rows"]):
        cells = []
        for w in weights:
            entry = row["by_mask_weight"][w]
            cells.append("n/a" if entry is None else
                         f"{entry['gain']:+.3f} [{entry['gain_ci'][0]:+.3f}, {entry['gain_ci'][1]:+.3f}]")  # fmt: skip
        mean = "n/a" if row["mean_gain"] is None else f"{row['mean_gain']:+.3f}"
        best = " **(chosen)**" if results.get("best") == k else ""
        lines.append(f"| {row['refine_strength']:g} | {row['pairs']} | {row['builder'].get('rejected', 0)} | "
                     + " | ".join(cells) + f" | {mean}{best} |")  # fmt: skip
    return "\n".join(lines)


DEFAULT_SEED_VARIANTS: dict[str, dict[str, Any]] = {
    "masked": {"mask_weight_outside": 0.0},
    "plain": {"mask_weight_outside": 1.0},
}

# After the seed sweep chose masked DPO (whose recipe the plain-DPO recipe sweep had chosen), one change at a time
# to that recipe, each over the same training seeds: a softer and a sharper beta, half the learning rate, and some
# weight outside the edit masks (the unedited context still anchors the pair).
MASKED_RECIPE_VARIANTS: dict[str, dict[str, Any]] = {
    "masked": {"mask_weight_outside": 0.0},
    "masked, beta 2500": {"mask_weight_outside": 0.0, "dpo_beta": 2500.0},
    "masked, beta 10000": {"mask_weight_outside": 0.0, "dpo_beta": 10000.0},
    "masked, lr 1e-3": {"mask_weight_outside": 0.0, "dpo_learning_rate": 1e-3},
    "outside-mask weight 0.2": {"mask_weight_outside": 0.2},
}

# Then Diffusion-DPO plus the denoising loss on the chosen images (TRL's `loss_type=["sigmoid", "sft"]`), at two
# weights: a sigmoid term's gradient reaches beta / 2 = 2500, so the SFT weight must be in the hundreds to count.
SFT_VARIANTS: dict[str, dict[str, Any]] = {
    "masked": {"mask_weight_outside": 0.0},
    "masked + sft 250": {"mask_weight_outside": 0.0, "dpo_sft_weight": 250.0},
    "masked + sft 1000": {"mask_weight_outside": 0.0, "dpo_sft_weight": 1000.0},
}

# Then where in the noise schedule the masked recipe's gain comes from: Diffusion-DPO draws t uniformly; these train
# only on the less noisy half (t < 500), the less noisy quarter (t < 250) or the noisier half (t >= 500), with
# DiffusionDPOConfig's timestep bias (diffusers' SDXL script's: the biased timesteps get weight 0).
TIMESTEP_VARIANTS: dict[str, dict[str, Any]] = {
    "masked": {"mask_weight_outside": 0.0, "dpo_timestep_bias_strategy": "none"},
    "masked, t < 500": {"mask_weight_outside": 0.0, "dpo_timestep_bias_strategy": "later",
                        "dpo_timestep_bias_portion": 0.5, "dpo_timestep_bias_multiplier": 0.0},
    "masked, t < 250": {"mask_weight_outside": 0.0, "dpo_timestep_bias_strategy": "later",
                        "dpo_timestep_bias_portion": 0.75, "dpo_timestep_bias_multiplier": 0.0},
    "masked, t >= 500": {"mask_weight_outside": 0.0, "dpo_timestep_bias_strategy": "earlier",
                         "dpo_timestep_bias_portion": 0.5, "dpo_timestep_bias_multiplier": 0.0},
}  # fmt: skip


def run_seed_sweep(
    config: DemoConfig,
    output_dir: str | Path,
    variants: dict[str, dict[str, Any]] = DEFAULT_SEED_VARIANTS,
    seeds: Sequence[int] = (0, 1, 2),
    dev_prompts: int = 60,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run-to-run spread of Diffusion-DPO on the demo's RPO pairs: each variant trained with each seed; on dev.

    One trained model's interval is over prompts and hides the spread between trainings (LoRA initialization,
    batch order, noise and timesteps all follow the seed). Each `variants` entry overrides `DemoConfig` fields
    (e.g. `mask_weight_outside`, `dpo_steps`); the RPO pairs are built once, as the demo builds them, and the
    variant with the best gain averaged over seeds is chosen. Writes seed_sweep.json/.md.
    """
    from .model import load_pipeline
    from .world import prompts as shape_prompts

    if not variants or not seeds:
        raise ValueError("run_seed_sweep needs at least one variant and one seed")
    output_dir = _new_folder(output_dir)
    _quiet_libraries()
    base = load_pipeline(config.model)
    scorer = _Scorer(config, {"dev": (shape_prompts(dev_prompts, seed=config.seed, split="dev"), config.eval_seeds)})
    scorer("base", base)
    pairs, _ = build_rpo_pairs(config, base, pair_prompts(config), output_dir / "rpo_pairs")  # the demo's RPO pairs
    if len(pairs) == 0:
        raise RuntimeError("the seed sweep built no RPO pairs; raise the image budget")
    rows = []
    for name, overrides in variants.items():
        variant = dataclasses.replace(config, **overrides)
        row: dict[str, Any] = {"variant": name, "overrides": dict(overrides), "by_seed": {}}
        for seed in seeds:
            method = f"{name}-seed{seed}"
            trainer = train_dpo(dataclasses.replace(variant, seed=int(seed)), pairs, output_dir, method)
            scorer(method, trainer.pipeline)
            del trainer
            row["by_seed"][str(seed)] = _dev_gain(scorer, method)
        gains = [entry["gain"] for entry in row["by_seed"].values()]
        row["mean_gain"] = round(sum(gains) / len(gains), 4)
        row["min_gain"], row["max_gain"] = min(gains), max(gains)
        rows.append(row)
        log(format_seed_sweep({"rows": [row]}).splitlines()[-1])
    best = max(range(len(rows)), key=lambda i: rows[i]["mean_gain"])
    results = {"rows": rows, "best": best, "seeds": [int(s) for s in seeds], "pairs": len(pairs),
               "base_dev_alignment": scorer.mean("base", "dev"), "config": dataclasses.asdict(config)}  # fmt: skip
    return _write_sweep(output_dir, "seed_sweep", results, format_seed_sweep(results), log)


def format_seed_sweep(results: dict[str, Any]) -> str:
    """The training-seed sweep as a Markdown table: dev gain [95% CI] per seed, and the mean over seeds."""
    seeds = list(results["rows"][0]["by_seed"]) if results["rows"] else []
    lines = ["| variant | " + " | ".join(f"seed {s}: dev gain [95% CI]" for s in seeds) + " | mean over seeds |",
             "|---|" + "---|" * len(seeds) + "---|"]  # fmt: skip
    for k, row in enumerate(results["rows"]):
        cells = [f"{e['gain']:+.3f} [{e['gain_ci'][0]:+.3f}, {e['gain_ci'][1]:+.3f}]" for e in row["by_seed"].values()]
        best = " **(chosen)**" if results.get("best") == k else ""
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + f" | {row['mean_gain']:+.3f}{best} |")
    return "\n".join(lines)


def edit_survival(
    config: DemoConfig,
    num_prompts: int = 128,
    refine_strengths: Sequence[float] = (0.1, 0.3),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """How much of the editor's improvement survives on the way to a training pair: a diagnosis of RPO pairs.

    On `num_prompts` train prompts (one base-model image each), the images the critic wants
    to change are edited and scored with `alignment_score` at each stage: the pixel edit itself, the edit after a
    VAE round trip (encode, decode: what Diffusion-DPO's latents can hold) and after the base model's refinement
    at each strength (what the builder's verifier sees). Returns, per stage, the mean alignment and how many
    edits still score above their original, next to the originals' mean and their own VAE round trip.
    """
    import numpy as np
    import torch

    from ..data import Img2ImgRefiner
    from ..data.transforms import to_tensor
    from ..evaluation import generate_images
    from ..pipelines import decode_latents, encode_images, tensor_to_pil
    from .critic import Critic
    from .editor import Editor
    from .evaluate import alignment_score
    from .model import load_pipeline
    from .world import prompts as shape_prompts

    _quiet_libraries()
    base = load_pipeline(config.model)
    prompts = shape_prompts(num_prompts, seed=config.seed, split="train")
    images = []
    for start in range(0, len(prompts), 16):
        images += generate_images(base, prompts[start : start + 16], seed=config.seed + start, batch_size=16,
                                  **_sampling(config))  # fmt: skip
    critiques = Critic()(images, prompts)
    todo = [i for i, c in enumerate(critiques) if c.instructions]
    editor = Editor()
    edited = editor([images[i] for i in todo], [critiques[i].instructions for i in todo], [prompts[i] for i in todo])
    kept = [(i, e, m) for i, e, m in zip(todo, edited, editor.last_masks) if e is not None]
    index, edits, masks = [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept]
    batch_prompts = [prompts[i] for i in index]
    original = np.asarray(alignment_score([images[i] for i in index], batch_prompts))

    def round_trip(pictures):
        pixels = torch.stack([to_tensor(p.convert("RGB")) for p in pictures])
        with torch.no_grad():
            latents = encode_images(base.vae, pixels, torch.Generator().manual_seed(config.seed))
            return tensor_to_pil(decode_latents(base.vae, latents))

    stages = {"edit": edits, "edit after VAE round trip": round_trip(edits)}
    for strength in refine_strengths:
        refiner = Img2ImgRefiner(base, strength=float(strength), seed=config.seed, batch_size=16,
                                 mask_dilation=2 / 32, **_sampling(config))  # fmt: skip
        stages[f"edit refined at {strength:g}"] = refiner(edits, batch_prompts, masks)
    result: dict[str, Any] = {
        "images": len(prompts), "edited": len(index), "original_alignment": round(float(original.mean()), 4),
        "original_after_vae_round_trip": round(float(np.mean(alignment_score(
            round_trip([images[i] for i in index]), batch_prompts))), 4),
        "stages": {},
    }  # fmt: skip
    for name, pictures in stages.items():
        scores = np.asarray(alignment_score(pictures, batch_prompts))
        result["stages"][name] = {"alignment": round(float(scores.mean()), 4),
                                  "better_than_original": int((scores > original).sum())}  # fmt: skip
        log(f"{name}: alignment {scores.mean():.3f}, better than the original in {(scores > original).sum()} "
            f"of {len(index)} (originals {original.mean():.3f})")  # fmt: skip
    return result


# The online-method sweeps live in `online_sweep`; re-exported here, where callers always found them.
from .online_sweep import (  # noqa: E402
    NFT_CFG_FREE_RECIPES,
    NFT_CFG_FREE_SEEDS,
    NFT_CONFIRM_RECIPES,
    NFT_CONFIRM_SEEDS,
    NFT_GUIDANCE2_RECIPES,
    NFT_GUIDANCE2_SEEDS,
    NFT_LR_RECIPES,
    NFT_LR_SEEDS,
    NFT_NOISE_PER_PROMPT,
    NFT_NOISE_RECIPES,
    NFT_NOISE_SEEDS,
    NFT_POWER_RECIPES,
    NFT_POWER_SEEDS,
    NFT_ROLLOUT_RECIPES,
    NFT_ROLLOUT_SEEDS,
    ONLINE_BATCH_RECIPES,
    ONLINE_BATCH_SEEDS,
    ONLINE_LR_VBASE_RECIPES,
    ONLINE_LR_VBASE_SEEDS,
    ONLINE_METHODS,
    ONLINE_RECIPES,
    ONLINE_REWARD_RECIPES,
    ONLINE_REWARD_SEEDS,
    ONLINE_STEPS_RECIPES,
    ONLINE_STEPS_SEEDS,
    TAILORPO_BATCH_RECIPES,
    TAILORPO_BATCH_SEEDS,
    TAILORPO_FINAL_VBASE_RECIPES,
    TAILORPO_FINAL_VBASE_SEEDS,
    TAILORPO_LOOKAHEAD_RECIPES,
    TAILORPO_LOOKAHEAD_SEEDS,
    TAILORPO_WINDOW_RECIPES,
    TAILORPO_WINDOW_SEEDS,
    VBASE_RECIPES,
    VBASE_SEEDS,
    as_declared,
    format_online_recipe_sweep,
    format_online_sweep,
    rescore_train_prompts,
    rollout_rise,
    run_online_recipe_sweep,
    run_online_sweep,
)
