"""The shapes-world demo: every method of trl-rpo on the shipped base model, offline, on a CPU.

    trl-rpo demo [--quick] [--output-dir DIR]

A single-seed view: one training run per method (`trl-rpo study` trains several seeds and is where claims come
from). Protocol (`trl_rpo.shapes.world`): pairs and rollouts use *train* scenes; every Diffusion-DPO row's recipe
(learning rate, beta, steps, timestep range; the RPO arm's edit mask) was chosen on *dev* prompts by
`examples/shapes/dev_sweep.py` with the same sweep and rule for every arm, GRPO's and DiffusionNFT's by the online
recipe sweep (docs/shapes.md); TailorPO's settings were set by hand, not chosen by a sweep. The guidance (1: no
classifier-free guidance) was chosen on dev too, by the base's alignment there. The results are reported
on *final* prompts, held-out compositions the base model never saw and no recipe was chosen on, and on
in-distribution prompts (train scenes, seeds never used to build pairs).

Stages (a progress bar shows each):

1. evaluate the base model (`trl_rpo.evaluation.evaluate_pipeline`, fixed seeds);
2. RPO pairs: `RichPreferenceDataBuilder` with the shapes critic and editor, the base model itself refining each
   edit inside its mask (`Img2ImgRefiner`, so the chosen image looks like the model's own), and a reward-margin
   verifier, on `image_budget` generated images;
3. reward-labelled pairs for the *same* number of generated images: two samples per prompt, `alignment_score`
   picks the winner, and best vs worst of four samples per prompt (`trl_rpo.data.build_reward_pairs`);
4. `DiffusionDPOTrainer` on each pair set, each with its own dev-chosen recipe, and on RPO pairs with the reward
   pairs' recipe (the ablation that separates the data from the recipe);
5. `TailorPOTrainer` step-wise and with `pairing="final"`, GRPO and DiffusionNFT, each on its dev-chosen reward
   (`soft_alignment_score` or `alignment_score`);
6. evaluate each model on the same prompts and seeds as the base, compare image for image
   (`trl_rpo.evaluation.compare_with_base`, the function behind `trl-rpo eval`: bootstrap over prompts), write
   `results.json`, `readme_table.md`, `grid.png`, `curves.png` and `gains.png`, and print a table. Each trained model
   is saved in `runs/METHOD` (a LoRA folder), so `trl-rpo eval --model runs/METHOD --base shapes ...` re-checks it.

The numbers are whatever the runs give; nothing is tuned on the final prompts.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compute import gain_per_minute
from .report import format_table
from .stages import (
    DPO_ARMS,
    ONLINE_ROWS,
    TAILORPO_PAIRINGS,
    _curve,
    _quiet_libraries,
    _Scorer,
    build_pair_sets,
    evaluation_guidance,
    format_dpo_recipe,
    online_guidance,
    parse_dpo_recipe,
    row_config,
    same_guidance_base,
    train_dpo_arm,
    train_grpo,
    train_nft,
    train_tailorpo,
)

__all__ = [
    "COMPARISONS",
    "DemoConfig",
    "METHODS",
    "efficacy_comparison",
    "format_table",
    "pair_efficacy",
    "quick_dpo_recipes",
    "run_demo",
]

METHODS = ("base", "dpo_reward_pairs", "dpo_best_of_4", "dpo_rpo_pairs", "dpo_rpo_pairs_reward_recipe", "tailorpo",
           "tailorpo_final", "grpo", "nft")  # fmt: skip
# Paired comparisons reported besides "each method vs base": (a, b) means a - b.
COMPARISONS = (("dpo_rpo_pairs", "dpo_reward_pairs"), ("dpo_rpo_pairs", "dpo_best_of_4"),
               ("dpo_rpo_pairs_reward_recipe", "dpo_reward_pairs"), ("tailorpo", "tailorpo_final"),
               ("tailorpo", "grpo"), ("tailorpo", "nft"))  # fmt: skip
# Seeds of the in-distribution evaluation start this far past every seed the pair builders use
# (`seed + i` for i < image_budget), so no training image is evaluated again.
IN_DISTRIBUTION_SEED_OFFSET = 10_000
# The choices of `DemoConfig.tailorpo_reward` / `grpo_reward` / `nft_reward` (functions of `trl_rpo.shapes.evaluate`).
ONLINE_REWARDS = ("alignment_score", "soft_alignment_score")
# Where the online rows may roll out: the pretraining scenes, or the scenes of the held-out pairs that no recipe is
# chosen on (dev2, or its scenes of one half of those pairs, so dev can score the other half's unseen pairs); never
# dev (where recipes are chosen) or final (where they are reported).
ONLINE_PROMPT_SPLITS = ("train", "dev2", "dev2_a", "dev2_b")


@dataclass
class DemoConfig:
    """Budgets and the recipe of the demo. `DemoConfig.quick()` is the `--quick` preset.

    The guidance and each Diffusion-DPO arm's recipe are the third arm sweep's choices on dev (docs/shapes.md: the
    base scores highest on dev at guidance 1, and each arm's least harmful recipe there); GRPO's and NFT's recipes
    are the online recipe sweep's, kept by its second round (NFT's learning rate also by the seventh); TailorPO's
    learning rate and steps were set by hand, its 16 prompts per step chosen by the third online round (which kept
    the learning rate against twice it). The online rows roll out and are sampled at the demo's guidance unless
    `online_guidance_scale` says otherwise. The image budget is the same for every pair-building method.
    """

    model: str | None = field(default=None, metadata={"help": "Pipeline folder; default: the shipped base model."})
    seed: int = field(default=0, metadata={"help": "Seed of prompts, generation and training."})
    eval_prompts: int = field(
        default=180, metadata={"help": "Final-split prompts (held-out compositions) per evaluation; 180: all."}
    )
    in_distribution_prompts: int = field(
        default=20, metadata={"help": "Train-scene prompts (unseen seeds) per evaluation; 0 skips them."}
    )
    eval_seeds: tuple[int, ...] = field(default=(0, 1), metadata={"help": "Seeds of each evaluation."})
    per_image_noise: bool = field(
        default=True,
        metadata={"help": "Evaluation noise per image (seed x prompt, as the study's); False: one noise per seed, "
                          "shared by every prompt (the dev rounds before the seventh)."},
    )  # fmt: skip
    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps of evaluation and pair generation."})
    # Chosen on dev among 5 (the earlier demo's), 1, 2 and 3 by the base's dev alignment (the third arm sweep,
    # 2026-12-07); earlier rounds and studies are pinned to 5 and their recipes (`dev_sweep.py`'s STAGE_DEFAULTS).
    guidance_scale: float = field(
        default=1.0, metadata={"help": "Classifier-free guidance scale (1: none; the third arm sweep's choice)."}
    )
    online_guidance_scale: float | None = field(
        default=None,
        metadata={"help": "Guidance of the online rows' rollouts and of their trained models' images; None: "
                          "guidance_scale. 1.0 trains and samples CFG-free, as DiffusionNFT does."},
    )  # fmt: skip
    online_prompt_split: str = field(
        default="train",
        metadata={"help": "Split the online rows roll out on: 'train' (the scenes the base was pretrained on) or "
                          "'dev2' (scenes of the held-out (shape, color) pairs, prompts of the distribution scored, "
                          "as online RL is run; recipes are then chosen on dev, and final's pairs stay unseen), or "
                          "'dev2_a' / 'dev2_b' (dev2's scenes of one half of the held-out pairs: a sweep then scores "
                          "the other half's, pairs the runs never saw)."},
    )  # fmt: skip
    online_lora: bool = field(
        default=True,
        metadata={"help": "Online rows train a LoRA of rank lora_r (True) or the whole UNet against a frozen copy "
                          "(False: the room the supervised ceiling found, docs/shapes.md)."},
    )  # fmt: skip
    image_budget: int = field(
        default=512, metadata={"help": "Generated images per pair set (RPO, reward-labelled, best-of-4)."}
    )
    refine_strength: float = field(
        default=0.1, metadata={"help": "SDEdit strength of the refinement of RPO edits (pair sweep); 0: none."}
    )
    dpo_steps: int = field(default=150, metadata={"help": "RPO-pair DPO: optimizer steps (arm sweep's choice)."})
    dpo_batch_size: int = field(default=8, metadata={"help": "Pairs per DPO step (every DPO row)."})
    dpo_learning_rate: float = field(default=5e-4, metadata={"help": "RPO-pair DPO learning rate (arm sweep's)."})
    dpo_beta: float = field(default=5000.0, metadata={"help": "RPO-pair Diffusion-DPO beta (arm sweep's choice)."})
    # Every arm's recipe: the third arm sweep's choice at guidance 1 on the base shipped since 2026-12-07
    # (docs/shapes.md): the least harmful of the second sweep's candidates, as 44 of its 45 runs fell below the base
    # on dev; it kept best-of-4's recipe and gave reward pairs and RPO pairs lr 5e-4 for 150 steps.
    reward_pairs_recipe: str = field(
        default="lr=5e-4 beta=5000 steps=150 t=all",
        metadata={"help": "Reward-labelled pairs' DPO recipe, 'lr= beta= steps= t=all|<500' (arm sweep's choice); "
                          "also the ablation row's (RPO pairs, no mask)."},
    )  # fmt: skip
    best_of_4_recipe: str = field(
        default="lr=2e-3 beta=5000 steps=150 t=all",
        metadata={"help": "Best-of-4 pairs' DPO recipe, as reward_pairs_recipe (arm sweep's choice)."},
    )
    dpo_use_lora: bool = field(default=True, metadata={"help": "LoRA (True) or full fine-tuning of the UNet."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of every trained model."})
    tailorpo_steps: int = field(default=40, metadata={"help": "TailorPOTrainer optimizer steps per run."})
    tailorpo_batch_size: int = field(
        default=16, metadata={"help": "Prompts sampled per TailorPO step (the third online round's choice)."}
    )
    tailorpo_num_inference_steps: int = field(default=10, metadata={"help": "DDIM steps of TailorPO rollouts."})
    tailorpo_learning_rate: float = field(default=5e-4, metadata={"help": "TailorPO LoRA learning rate."})
    num_candidates: int = field(default=2, metadata={"help": "TailorPO candidates per noisy parent."})
    mask_weight_outside: float = field(
        default=0.0, metadata={"help": "RPO-pair DPO: error weight outside edit masks (0: seed sweep; 1: plain)."}
    )
    dpo_sft_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the denoising loss on chosen images added to Diffusion-DPO (loss_type "
                          "['sigmoid', 'sft']); 0: Diffusion-DPO alone."},
    )  # fmt: skip
    # The RPO arm's recipe (lr 5e-4, 150 steps, uniform t, masked) is the third arm sweep's choice (lr 1e-3 and 300
    # steps were the first two sweeps', at guidance 5); the first base's timestep sweep had chosen t < 500, which
    # `--dpo_timestep_bias_strategy later` restores (with the portion 0.5 and multiplier 0 below).
    dpo_timestep_bias_strategy: str = field(
        default="none", metadata={"help": "RPO-pair DPO: DiffusionDPOConfig.timestep_bias_strategy (none: uniform)."}
    )
    dpo_timestep_bias_portion: float = field(default=0.5, metadata={"help": "RPO-pair DPO: the bias's portion."})
    dpo_timestep_bias_multiplier: float = field(default=0.0, metadata={"help": "RPO-pair DPO: its multiplier."})
    grpo_num_generations: int = field(
        default=8, metadata={"help": "GRPO and DiffusionNFT group size (images per prompt); TailorPO's steps."}
    )
    tailorpo_window_start: float = field(
        default=0.6,
        metadata={"help": "TailorPO pairs only on steps from this fraction of the trajectory (the fifth online "
                          "round's 0.6: steps 6-9 of 10; 0 and window end 1: 5 random steps)."},
    )
    tailorpo_window_end: float = field(
        default=1.0,
        metadata={"help": "TailorPO pairs only on steps before this fraction of the trajectory (1: 5 random steps)."},
    )
    # GRPO's and DiffusionNFT's recipes: the online recipe sweep's choices (dev, seeds 0-2, the highest lowest-seed
    # gain; docs/shapes.md). TailorPO's stayed the demo's.
    grpo_learning_rate: float = field(default=3e-4, metadata={"help": "GRPO LoRA learning rate."})
    grpo_batch_size: int = field(default=16, metadata={"help": "GRPO images per step (a multiple of the group size)."})
    grpo_timestep_fraction: float = field(default=0.5, metadata={"help": "GRPO: fraction of the steps trained."})
    grpo_timestep_sampling: str = field(
        default="first", metadata={"help": "GRPO: which steps ('random' or 'first', the noisiest)."}
    )
    nft_learning_rate: float = field(default=3e-4, metadata={"help": "DiffusionNFT LoRA learning rate."})
    nft_batch_size: int = field(
        default=16, metadata={"help": "DiffusionNFT images per step (groups of grpo_num_generations)."}
    )
    # Each online method's reward: the fifth online round's choices (dev, seeds 400-402; docs/shapes.md). Every row is
    # scored with alignment_score whatever its method optimizes.
    tailorpo_reward: str = field(
        default="soft_alignment_score",
        metadata={"help": "The reward TailorPO (and its final-image baseline) optimizes: 'alignment_score' (six "
                          "pass/fail checks) or 'soft_alignment_score' (the checks as graded credit; rollouts still "
                          "log alignment_score)."},
    )  # fmt: skip
    tailorpo_step_reward_estimate: str = field(
        default="x0",
        metadata={"help": "TailorPO's candidate ranking: 'x0' (one-step prediction) or 'ode_lookahead'."},
    )
    grpo_reward: str = field(default="soft_alignment_score", metadata={"help": "The reward GRPO optimizes."})
    nft_reward: str = field(default="alignment_score", metadata={"help": "The reward DiffusionNFT optimizes."})
    # DiffusionNFT's budget: the ninth online round's choice (dev, seeds 800-802): more rollouts in the same seconds.
    nft_steps: int = field(default=165, metadata={"help": "DiffusionNFT optimizer steps per run (the ninth round's)."})
    nft_timestep_fraction: float = field(
        default=0.5, metadata={"help": "DiffusionNFT: fraction of the rollout's timesteps each image is trained at."}
    )
    nft_num_iterations: int = field(default=1, metadata={"help": "DiffusionNFT optimizer steps per rollout."})
    nft_old_policy_decay: float = field(
        default=0.0, metadata={"help": "DiffusionNFT: old (sampling) policy <- decay * old + (1 - decay) * current."}
    )
    nft_guided_loss: bool = field(
        default=False, metadata={"help": "DiffusionNFT: train the guided prediction its rollouts sample."}
    )
    # DiffusionNFT's own operating point, over the shared online fields (each None: the shared one).
    nft_lora: bool | None = field(default=None, metadata={
        "help": "DiffusionNFT trains a LoRA (True) or the whole UNet (False); None: online_lora."})
    nft_guidance_scale: float | None = field(default=None, metadata={
        "help": "Guidance of DiffusionNFT's rollouts and images; None: online_guidance_scale."})
    nft_prompt_split: str | None = field(default=None, metadata={
        "help": "Split DiffusionNFT rolls out on; None: online_prompt_split."})
    grid_prompts: int = field(default=8, metadata={"help": "Test prompts (columns) of grid.png."})

    def __post_init__(self):
        self.eval_seeds = tuple(self.eval_seeds)
        for name in ("eval_prompts", "image_budget", "dpo_steps", "tailorpo_steps", "nft_steps", "grid_prompts",
                     "lora_r"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        from .world import SPLIT_SIZES

        if not 2 <= self.eval_prompts <= SPLIT_SIZES["final"]:
            raise ValueError(f"eval_prompts must be 2-{SPLIT_SIZES['final']} (the final split's distinct scenes), got "
                             f"{self.eval_prompts}")  # fmt: skip
        if not 0 <= self.in_distribution_prompts <= SPLIT_SIZES["train"]:
            count, most = self.in_distribution_prompts, SPLIT_SIZES["train"]
            raise ValueError(f"in_distribution_prompts must be 0-{most} (the train scenes), got {count}")
        for name in ("reward_pairs_recipe", "best_of_4_recipe"):
            try:  # a clear error now, not after the pairs are built
                parse_dpo_recipe(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        if not self.eval_seeds:
            raise ValueError("eval_seeds must hold at least one seed")
        from ..trainer.tailorpo_config import STEP_REWARD_ESTIMATES

        if self.tailorpo_step_reward_estimate not in STEP_REWARD_ESTIMATES:  # a clear error now, not after the pairs
            raise ValueError(f"tailorpo_step_reward_estimate must be one of {list(STEP_REWARD_ESTIMATES)}, got "
                             f"{self.tailorpo_step_reward_estimate!r}")  # fmt: skip
        for name in ("tailorpo_reward", "grpo_reward", "nft_reward"):
            if getattr(self, name) not in ONLINE_REWARDS:
                raise ValueError(f"{name} must be one of {list(ONLINE_REWARDS)}, got {getattr(self, name)!r}")
        if not 0.0 < self.nft_timestep_fraction <= 1.0 or self.nft_num_iterations < 1:
            raise ValueError(f"nft_timestep_fraction must be in (0, 1] and nft_num_iterations >= 1, got "
                             f"{self.nft_timestep_fraction} and {self.nft_num_iterations}")  # fmt: skip
        if not 0.0 <= self.nft_old_policy_decay < 1.0:
            raise ValueError(f"nft_old_policy_decay must be in [0, 1), got {self.nft_old_policy_decay}")
        for name, allowed in (("online_prompt_split", ONLINE_PROMPT_SPLITS),
                              ("nft_prompt_split", (None, *ONLINE_PROMPT_SPLITS))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("online_guidance_scale", "nft_guidance_scale"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive or None, got {getattr(self, name)}")
        if self.image_budget < 2:
            raise ValueError(f"image_budget must be at least 2 (one reward-labelled pair), got {self.image_budget}")
        if not 0.0 <= self.refine_strength <= 1.0:
            raise ValueError(f"refine_strength must be in [0, 1], got {self.refine_strength}")
        if self.refine_strength and int(self.refine_strength * self.num_inference_steps) < 1:
            steps = f"refine_strength {self.refine_strength} x num_inference_steps {self.num_inference_steps}"
            raise ValueError(f"{steps} runs no refinement step; raise either, or use 0 for none")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """The `--quick` preset: the same stages with small budgets (a smoke test in about 3 minutes)."""
        values = dict(
            eval_prompts=16, in_distribution_prompts=8, eval_seeds=(0, 1), num_inference_steps=10, image_budget=64,
            dpo_steps=20, dpo_batch_size=4, tailorpo_steps=4, nft_steps=4, tailorpo_batch_size=2,
            tailorpo_num_inference_steps=6,
            grpo_batch_size=4, nft_batch_size=4, grpo_num_generations=4, grid_prompts=6,
        )  # fmt: skip
        values.update(overrides)
        for name, recipe in quick_dpo_recipes(values["dpo_steps"]).items():  # every DPO row at the preset's steps
            values.setdefault(name, recipe)
        return cls(**values)


def quick_dpo_recipes(steps: int) -> dict[str, str]:
    """`reward_pairs_recipe` and `best_of_4_recipe` at their defaults but for `steps` optimizer steps: the quick
    presets' DPO budget reaches the reward-labelled rows (and the ablation row), not only the RPO arm's `dpo_steps`."""
    defaults = DemoConfig()
    return {name: format_dpo_recipe(dataclasses.replace(
                defaults, **{**parse_dpo_recipe(getattr(defaults, name)), "dpo_steps": int(steps)}))
            for name in ("reward_pairs_recipe", "best_of_4_recipe")}  # fmt: skip


def pair_efficacy(alignment: float, base_alignment: float, pairs: int) -> float | None:
    """Alignment gain per training pair, `(alignment - base) / pairs`; None without pairs."""
    return (alignment - base_alignment) / pairs if pairs > 0 else None


def efficacy_comparison(
    gains_a: Sequence[float],
    gains_b: Sequence[float],
    pairs_a: int,
    pairs_b: int,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    r"""Pair efficacy (gain per pair) of two pair sets, and how much more efficient a is than b, with CIs.

    `gains_a[p]`, `gains_b[p]` are the per-prompt gains over the same base (same prompts). Efficacy
    $e = \bar g / n_{pairs}$, its interval the gain's bootstrap interval over prompts divided by $n_{pairs}$.
    The relative efficacy $e_a / e_b - 1$ (the RPO paper's "+42%") is bootstrapped over prompts with the two
    gains resampled together; it is None unless b's gain is positive with an interval excluding 0 (a ratio to
    noise means nothing), both pair counts are positive and there are at least two prompts. The difference
    $e_a - e_b$ is always defined: its interval is the paired bootstrap over prompts of $g_a/n_a - g_b/n_b$.
    """
    import numpy as np
    from scipy import stats

    from ..evaluation import paired_comparison

    a, b = np.asarray(gains_a, dtype=float), np.asarray(gains_b, dtype=float)
    out: dict[str, Any] = {}
    for key, gains, pairs in (("a", a, pairs_a), ("b", b, pairs_b)):
        result = paired_comparison(gains, np.zeros_like(gains), confidence_level=confidence_level, seed=seed)
        out[key] = {
            "pairs": pairs,
            "efficacy": result.gain / pairs if pairs else None,
            "efficacy_ci": [v / pairs for v in result.gain_ci] if pairs else None,
            "gain_ci_excludes_zero": result.significant,
        }
    out["difference"] = out["difference_ci"] = None
    if pairs_a and pairs_b:
        result = paired_comparison(a / pairs_a, b / pairs_b, confidence_level=confidence_level, seed=seed)
        out["difference"], out["difference_ci"] = result.gain, list(result.gain_ci)
    out["relative_percent"] = out["relative_percent_ci"] = None
    if pairs_a and pairs_b and len(a) >= 2 and out["b"]["gain_ci_excludes_zero"] and b.mean() > 0:

        def relative(x, y, axis=-1):
            return 100.0 * ((x.mean(axis=axis) / pairs_a) / (y.mean(axis=axis) / pairs_b) - 1.0)

        ci = stats.bootstrap(
            (a, b), relative, paired=True, vectorized=True, confidence_level=confidence_level, method="percentile",
            random_state=np.random.default_rng(seed),
        ).confidence_interval
        out["relative_percent"] = float(relative(a, b))
        out["relative_percent_ci"] = [float(ci.low), float(ci.high)]
    return out


def run_demo(
    config: DemoConfig,
    output_dir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage, write `results.json`, `grid.png`, `curves.png` and `gains.png`; return the results.

    `output_dir` must be new or empty: nothing a previous run wrote is overwritten.
    """
    import torch
    from tqdm.auto import tqdm

    from .model import load_pipeline
    from .world import prompts as shape_prompts

    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} exists and is not empty; the demo writes only into a new folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    _quiet_libraries()
    torch.manual_seed(config.seed)
    final_prompts = shape_prompts(config.eval_prompts, seed=config.seed, split="final")
    sets = {"final": (final_prompts, config.eval_seeds)}
    if config.in_distribution_prompts:
        sets["in_distribution"] = (
            shape_prompts(config.in_distribution_prompts, seed=config.seed + 1, split="train"),
            tuple(config.seed + config.image_budget + IN_DISTRIBUTION_SEED_OFFSET + s for s in config.eval_seeds),
        )
    scorer = _Scorer(config, sets)
    stages = ["base", "pairs", *METHODS[1:]]
    bar = tqdm(total=len(stages), desc="demo", disable=not progress, unit="stage")
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {
        "Diffusion-DPO loss": {}, "DPO implicit accuracy": {}, "online rollout alignment": {},
    }  # fmt: skip

    def evaluate(method: str, pipeline, pairs: int, seconds: float, **extra: Any) -> None:
        bar.set_postfix_str(f"evaluating {method}")
        # The online rows sample their trained models as their rollouts did (`online_guidance_scale`).
        eval_seconds = scorer(method, pipeline, evaluation_guidance(config, method))
        rows.append({"method": method, "alignment": round(scorer.mean(method, "final"), 4), "pairs": int(pairs),
                     "seconds": round(seconds, 1), "eval_seconds": round(eval_seconds, 1), **extra})  # fmt: skip
        bar.update(1)

    # 1. base
    bar.set_description("base")
    base = load_pipeline(config.model)
    evaluate("base", base, pairs=0, seconds=0.0)

    # 2. RPO pairs (critic + editor + the base model's refinement, verified), reward-labelled pairs (the evaluator
    # picks the better of each prompt's two samples) and best-of-4 pairs, each from `image_budget` generated images.
    bar.set_description("pairs")
    built = build_pair_sets(config, base, output_dir)
    rpo_stats = {k: v for k, v in built["builder"].stats.items() if isinstance(v, (int, float))}
    bar.update(1)
    extras = {
        "dpo_reward_pairs": {"images": built["reward_counts"]["images"], "ties": built["reward_counts"]["ties"],
                             "recipe": config.reward_pairs_recipe},
        "dpo_best_of_4": {"images": built["best_of_4_counts"]["images"], "ties": built["best_of_4_counts"]["ties"],
                          "recipe": config.best_of_4_recipe},
        "dpo_rpo_pairs": {"images": built["images"], "builder": rpo_stats,
                          "mask_weight_outside": config.mask_weight_outside},
        "dpo_rpo_pairs_reward_recipe": {"images": built["images"], "recipe": config.reward_pairs_recipe},
    }  # fmt: skip

    # 3. Diffusion-DPO on each pair set with its arm's recipe (`stages.DPO_ARMS`); on RPO pairs the loss is weighted
    # by each pair's edit mask (`mask_weight_outside`), which reward-labelled pairs do not have. The ablation row
    # trains the RPO pairs with the reward pairs' recipe and no mask. Build seconds are the pair set's.
    for method, extra in extras.items():
        bar.set_description(method)
        pair_set = DPO_ARMS[method][0]
        pairs, build_seconds = built[pair_set], built["seconds"][pair_set]
        if len(pairs) == 0:
            evaluate(method, base, 0, build_seconds, note="no pairs were built: the base model is reported", **extra)
            continue
        start = time.perf_counter()
        trainer = train_dpo_arm(config, built, output_dir, method)
        seconds = build_seconds + time.perf_counter() - start
        curves["Diffusion-DPO loss"][method] = _curve(trainer.state.log_history, "loss")
        curves["DPO implicit accuracy"][method] = _curve(trainer.state.log_history, "rewards/accuracies")
        evaluate(method, trainer.pipeline, len(pairs), seconds, build_seconds=round(build_seconds, 1), **extra)
        del trainer

    # 5. TailorPO with the evaluator as reward, step-wise and with final-image pairing.
    for method, pairing in TAILORPO_PAIRINGS.items():
        bar.set_description(method)
        start = time.perf_counter()
        trainer = train_tailorpo(config, output_dir, method, pairing=pairing)
        seconds = time.perf_counter() - start
        history = trainer.state.log_history
        pairs = round(sum(value for _, value in _curve(history, "pairs/count")))
        curves["online rollout alignment"][method] = _curve(history, "rewards/alignment_score/mean")
        evaluate(method, trainer.pipeline, pairs, seconds)
        del trainer

    # 6. GRPO, the online baseline: its reward, TailorPO's steps and DDIM steps, groups of `grpo_num_generations`
    # images per prompt, `grpo_batch_size` images per step, its learning rate and steps (the online recipe sweep's).
    bar.set_description("grpo")
    start = time.perf_counter()
    trainer = train_grpo(config, output_dir)
    seconds = time.perf_counter() - start
    curves["online rollout alignment"]["grpo"] = _curve(trainer.state.log_history, "rewards/alignment_score/mean")
    images = trainer.state.global_step * trainer.args.per_device_train_batch_size  # its batch counts images
    evaluate("grpo", trainer.pipeline, 0, seconds, images=images)
    del trainer

    # 7. DiffusionNFT: its reward and steps, GRPO's images, deterministic rollouts, the forward-process loss.
    bar.set_description("nft")
    start = time.perf_counter()
    trainer = train_nft(config, output_dir)
    seconds = time.perf_counter() - start
    curves["online rollout alignment"]["nft"] = _curve(trainer.state.log_history, "rewards/alignment_score/mean")
    images = trainer.state.global_step * trainer.args.per_device_train_batch_size
    evaluate("nft", trainer.pipeline, 0, seconds, images=images)
    del trainer
    # The base sampled as each online row is (`online_guidance_scale`, NFT's own): each row is also compared with it.
    for same, method in {same_guidance_base(config, m): m for m in ONLINE_ROWS}.items():
        if same:
            bar.set_postfix_str(f"evaluating {same}")
            scorer(same, base, online_guidance(row_config(config, method)))
    bar.close()

    results = _report(config, scorer, rows)
    results["eval_prompts"] = {name: prompts for name, (prompts, _) in sets.items()}
    results["eval_seeds"] = {name: list(seeds) for name, (_, seeds) in sets.items()}
    # Every image's score (method -> prompt set -> [seed][prompt]), so any other statistic can be recomputed.
    results["scores"] = scorer.scores
    # The independent judge (trl_rpo.shapes.judge) on the same final images: an extra field.
    results["independent_judge"] = scorer.judge_report("final")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    from .report import readme_table  # the README's table (`examples/shapes/readme_table.py` splices it in)

    (output_dir / "readme_table.md").write_text(readme_table(results) + "\n", encoding="utf-8")
    _figures(config, scorer, results, curves, final_prompts, output_dir)
    log(format_table(results))
    return results


def _report(config: DemoConfig, scorer: _Scorer, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method paired statistics against the base, the method comparisons and the pair efficacy."""
    for row in rows[1:]:
        method = row["method"]
        for name in scorer.sets:
            prefix = "" if name == "final" else f"{name}_"
            result = scorer.compare(method, "base", name).to_dict()
            if name != "final":
                row[f"{prefix}alignment"] = round(scorer.mean(method, name), 4)
            row.update({f"{prefix}{key}": result[key] for key in ("gain", "gain_ci", "win_rate", "win_rate_ci",
                                                                  "p_value")})  # fmt: skip
        row.update(gain_per_minute(row["gain"], row["seconds"], row["gain_ci"]))
    if "in_distribution" in scorer.sets:
        rows[0]["in_distribution_alignment"] = round(scorer.mean("base", "in_distribution"), 4)
    comparisons = []
    same = {m: same_guidance_base(config, m) for m in ONLINE_ROWS}  # each online row against the base sampled alike
    for a, b in (*COMPARISONS, *((m, same[m]) for m in ONLINE_ROWS if same[m])):
        for name in scorer.sets:
            comparisons.append({"a": a, "b": b, "prompts": name, **scorer.compare(a, b, name).to_dict()})
    by_method = {row["method"]: row for row in rows}
    efficacy = efficacy_comparison(
        scorer.per_prompt_gain("dpo_rpo_pairs", "base"), scorer.per_prompt_gain("dpo_reward_pairs", "base"),
        by_method["dpo_rpo_pairs"]["pairs"], by_method["dpo_reward_pairs"]["pairs"], seed=config.seed,
    )  # fmt: skip
    return {
        "rows": rows,
        "comparisons": comparisons,
        "base_at_guidance": {b: {name: round(scorer.mean(b, name), 4) for name in scorer.sets}
                             for b in sorted(set(same.values()) - {None})},
        "pair_efficacy": {
            "dpo_rpo_pairs": efficacy["a"],
            "dpo_reward_pairs": efficacy["b"],
            "rpo_minus_reward": efficacy["difference"],
            "rpo_minus_reward_ci": efficacy["difference_ci"],
            "rpo_vs_reward_percent": efficacy["relative_percent"],
            "rpo_vs_reward_percent_ci": efficacy["relative_percent_ci"],
            "note": "alignment gain over base per training pair on the final prompts; the RPO paper reports +42% "
            "for RPO pairs on SDXL. rpo_minus_reward: the difference of the two efficacies. The relative figure "
            "is null unless reward pairs' own gain is distinguishable from zero (a ratio to noise would mislead).",
        },
        "statistics": "gain = mean over images of (method - base) on the same prompts and seeds; gain_ci: 95% BCa "
        "bootstrap over prompts; p_value: paired t-test over per-prompt differences; win_rate: ties count half.",
        "config": dataclasses.asdict(config),
    }


def _figures(config, scorer: _Scorer, results, curves, final_prompts, output_dir: Path) -> None:
    from ..evaluation import image_grid, plot_curves, plot_gains

    methods = [m for m in METHODS if m in scorer.images]
    grid = image_grid([scorer.images[m] for m in methods], row_labels=methods,
                      column_labels=final_prompts[: config.grid_prompts], cell_size=128)  # fmt: skip
    grid.save(output_dir / "grid.png")
    plot_curves(curves).savefig(output_dir / "curves.png", dpi=110)
    gains = {row["method"]: (row["gain"], row["gain_ci"]) for row in results["rows"][1:]}
    plot_gains(gains, title="alignment gain over base, final prompts, one training seed (95% CI)").savefig(
        output_dir / "gains.png", dpi=110
    )

