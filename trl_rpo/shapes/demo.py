"""The shapes-world demo: every method of trl-rpo on the shipped base model, offline, on a CPU.

    trl-rpo demo [--quick] [--output-dir DIR]

Stages (a progress bar shows each):

1. evaluate the base model on held-out prompts with fixed seeds (`trl_rpo.evaluation.evaluate_pipeline`);
2. RPO pairs: `RichPreferenceDataBuilder` with the shapes critic and editor (and a reward-margin verifier) on
   `image_budget` generated images;
3. reward-labelled pairs for the *same* number of generated images: two samples per prompt, `alignment_score`
   picks the winner (`trl_rpo.data.build_reward_pairs`);
4. `DiffusionDPOTrainer` with LoRA on each pair set (same steps, same hyper-parameters);
5. `TailorPOTrainer` with `alignment_score` as the step-wise reward, and with `pairing="final"`;
6. evaluate each model like the base; write `results.json`, `grid.png` (methods x prompts, same seeds) and
   `curves.png` (training curves), and print a table.

The numbers are whatever the runs give; nothing is tuned to an outcome.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["DemoConfig", "METHODS", "pair_efficacy", "run_demo"]

METHODS = ("base", "dpo_reward_pairs", "dpo_rpo_pairs", "tailorpo", "tailorpo_final")


@dataclass
class DemoConfig:
    """Budgets of the demo. `DemoConfig.quick()` is the `--quick` preset."""

    model: str | None = field(default=None, metadata={"help": "Pipeline folder; default: the shipped base model."})
    seed: int = field(default=0, metadata={"help": "Seed of prompts, generation and training."})
    eval_prompts: int = field(default=48, metadata={"help": "Held-out prompts of each evaluation."})
    eval_seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "Seeds of each evaluation."})
    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps of evaluation and pair generation."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Classifier-free guidance scale."})
    image_budget: int = field(default=512, metadata={"help": "Generated images per pair set (RPO and reward)."})
    dpo_steps: int = field(default=150, metadata={"help": "DiffusionDPOTrainer optimizer steps per pair set."})
    dpo_batch_size: int = field(default=8, metadata={"help": "Pairs per DPO step."})
    dpo_learning_rate: float = field(
        default=5e-4, metadata={"help": "DPO LoRA learning rate (the diffusers DPO LoRA script's default)."}
    )
    dpo_beta: float = field(default=5000.0, metadata={"help": "Diffusion-DPO beta (the paper's SD 1.5 value)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank of every trained model."})
    tailorpo_steps: int = field(default=40, metadata={"help": "TailorPOTrainer optimizer steps per run."})
    tailorpo_batch_size: int = field(default=4, metadata={"help": "Prompts sampled per TailorPO step."})
    tailorpo_num_inference_steps: int = field(default=10, metadata={"help": "DDIM steps of TailorPO rollouts."})
    tailorpo_learning_rate: float = field(
        default=5e-4, metadata={"help": "TailorPO LoRA learning rate (the same as DPO's, for a like comparison)."}
    )
    num_candidates: int = field(default=2, metadata={"help": "TailorPO candidates per noisy parent."})
    grid_prompts: int = field(default=8, metadata={"help": "Held-out prompts (columns) of grid.png."})

    def __post_init__(self):
        self.eval_seeds = tuple(self.eval_seeds)
        for name in ("eval_prompts", "image_budget", "dpo_steps", "tailorpo_steps", "grid_prompts", "lora_r"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.eval_seeds:
            raise ValueError("eval_seeds must hold at least one seed")
        if self.image_budget < 2:
            raise ValueError(f"image_budget must be at least 2 (one reward-labelled pair), got {self.image_budget}")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """The `--quick` preset: the same stages with small budgets (a smoke test in about 3 minutes)."""
        values = dict(
            eval_prompts=16, eval_seeds=(0, 1), num_inference_steps=10, image_budget=64, dpo_steps=20,
            dpo_batch_size=4, tailorpo_steps=4, tailorpo_batch_size=2, tailorpo_num_inference_steps=6,
            grid_prompts=6,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)


def pair_efficacy(alignment: float, base_alignment: float, pairs: int) -> float | None:
    """Alignment gain per training pair, `(alignment - base) / pairs`; None without pairs."""
    return (alignment - base_alignment) / pairs if pairs > 0 else None


def _quiet_libraries() -> None:
    import datasets
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def _lora_config(r: int):
    from ..trainer import DiffusionModelConfig, get_peft_config

    # The command line's LoRA defaults (attention projections, alpha = r), as `trl-rpo dpo --use_peft` builds them.
    return get_peft_config(DiffusionModelConfig(use_peft=True, lora_r=r, lora_alpha=r))


def _curve(log_history: list[dict[str, float]], key: str) -> list[tuple[float, float]]:
    return [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]


def run_demo(
    config: DemoConfig,
    output_dir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage, write `results.json`, `grid.png` and `curves.png` under `output_dir`; return the results.

    `output_dir` must be new or empty: nothing a previous run wrote is overwritten.
    """
    import torch
    from datasets import Dataset
    from tqdm.auto import tqdm
    from transformers import PrinterCallback

    from ..data import RewardMarginVerifier, RichPreferenceConfig, RichPreferenceDataBuilder, build_reward_pairs
    from ..evaluation import evaluate_pipeline, image_grid, line_chart
    from ..trainer import DiffusionDPOConfig, DiffusionDPOTrainer, TailorPOConfig, TailorPOTrainer
    from .critic import Critic
    from .editor import Editor
    from .evaluate import alignment_score
    from .model import load_pipeline
    from .world import prompts as shape_prompts

    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} exists and is not empty; the demo writes only into a new folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    _quiet_libraries()
    torch.manual_seed(config.seed)
    sampling = {"num_inference_steps": config.num_inference_steps, "guidance_scale": config.guidance_scale}
    eval_prompts = shape_prompts(config.eval_prompts, seed=config.seed, split="held_out")
    train_prompts = shape_prompts(config.image_budget, seed=config.seed, split="train")
    stages = ["base", "rpo pairs", "reward pairs", *METHODS[1:]]
    bar = tqdm(total=len(stages), desc="demo", disable=not progress, unit="stage")
    rows: list[dict[str, Any]] = []
    images: dict[str, list] = {}
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {"dpo": {}, "tailorpo": {}}

    def evaluate(method: str, pipeline, pairs: int, seconds: float, **extra: Any) -> None:
        bar.set_postfix_str(f"evaluating {method}")
        start = time.perf_counter()
        pipeline.set_progress_bar_config(disable=True)
        result = evaluate_pipeline(pipeline, eval_prompts, alignment_score, seeds=config.eval_seeds,
                                   batch_size=16, return_images=True, **sampling)  # fmt: skip
        images[method] = result.images[0][: config.grid_prompts]
        ci = result.ci["alignment_score"]
        rows.append({
            "method": method,
            "alignment": round(result.mean["alignment_score"], 4),
            "alignment_ci": None if math.isnan(ci) else round(ci, 4),
            "pairs": int(pairs),
            "seconds": round(seconds, 1),
            "eval_seconds": round(time.perf_counter() - start, 1),
            **extra,
        })  # fmt: skip
        bar.update(1)

    def common_args(name: str) -> dict[str, Any]:
        return dict(output_dir=str(output_dir / "runs" / name), report_to=[], save_strategy="no", disable_tqdm=True,
                    seed=config.seed, lr_scheduler_type="constant", logging_steps=1)  # fmt: skip

    # 1. base
    bar.set_description("base")
    base = load_pipeline(config.model)
    evaluate("base", base, pairs=0, seconds=0.0)
    base_alignment = rows[0]["alignment"]

    # 2. RPO pairs: critic + editor on one image per prompt, kept when the edit scores higher.
    bar.set_description("rpo pairs")
    start = time.perf_counter()
    builder = RichPreferenceDataBuilder(
        generator=base,
        critic=Critic(),
        editor=Editor(),
        verifier=RewardMarginVerifier(alignment_score),
        args=RichPreferenceConfig(output_dir=str(output_dir / "rpo_pairs"), images_per_prompt=1, batch_size=16,
                                  seed=config.seed, disable_tqdm=True, **sampling),  # fmt: skip
    )
    rpo_pairs = builder.build(train_prompts)
    rpo_seconds = time.perf_counter() - start
    rpo_stats = {k: v for k, v in builder.stats.items() if isinstance(v, (int, float))}
    bar.update(1)

    # 3. Reward-labelled pairs: the same image budget, two samples per prompt, the evaluator picks the winner.
    bar.set_description("reward pairs")
    start = time.perf_counter()
    reward_pairs, reward_counts = build_reward_pairs(
        base, train_prompts[: config.image_budget // 2], alignment_score, images_per_prompt=2, seed=config.seed,
        batch_size=16, **sampling,
    )  # fmt: skip
    reward_pairs.save_to_disk(str(output_dir / "reward_pairs"))
    reward_seconds = time.perf_counter() - start
    bar.update(1)

    # 4. Diffusion-DPO with LoRA on each pair set.
    for method, pairs, build_seconds, extra in (
        ("dpo_reward_pairs", reward_pairs, reward_seconds, {"images": reward_counts["images"],
                                                            "ties": reward_counts["ties"]}),
        ("dpo_rpo_pairs", rpo_pairs, rpo_seconds, {"images": config.image_budget, "builder": rpo_stats}),
    ):  # fmt: skip
        bar.set_description(method)
        if len(pairs) == 0:
            evaluate(method, base, 0, build_seconds, note="no pairs were built: the base model is reported", **extra)
            continue
        start = time.perf_counter()
        trainer = DiffusionDPOTrainer(
            model=load_pipeline(config.model),
            args=DiffusionDPOConfig(
                max_steps=config.dpo_steps, per_device_train_batch_size=min(config.dpo_batch_size, len(pairs)),
                learning_rate=config.dpo_learning_rate, beta=config.dpo_beta, precompute_latents=True,
                **common_args(method),
            ),
            train_dataset=pairs.select_columns(["prompt", "chosen", "rejected"]),
            peft_config=_lora_config(config.lora_r),
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # the demo's own bar and table report progress
        trainer.train()
        seconds = build_seconds + time.perf_counter() - start
        curves["dpo"][method] = _curve(trainer.state.log_history, "loss")
        trainer.pipeline.unet.eval()
        evaluate(method, trainer.pipeline, len(pairs), seconds, build_seconds=round(build_seconds, 1), **extra)
        del trainer

    # 5. TailorPO with the evaluator as reward, step-wise and with final-image pairing.
    prompt_dataset = Dataset.from_dict({"prompt": shape_prompts(900, seed=config.seed, split="train")})
    for method, pairing in (("tailorpo", "best_worst"), ("tailorpo_final", "final")):
        bar.set_description(method)
        start = time.perf_counter()
        trainer = TailorPOTrainer(
            model=load_pipeline(config.model),
            reward_funcs=alignment_score,
            args=TailorPOConfig(
                max_steps=config.tailorpo_steps, per_device_train_batch_size=config.tailorpo_batch_size,
                learning_rate=config.tailorpo_learning_rate, num_inference_steps=config.tailorpo_num_inference_steps,
                guidance_scale=config.guidance_scale, num_candidates=config.num_candidates, pairing=pairing,
                **common_args(method),
            ),
            train_dataset=prompt_dataset,
            peft_config=_lora_config(config.lora_r),
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        seconds = time.perf_counter() - start
        history = trainer.state.log_history
        pairs = round(sum(value for _, value in _curve(history, "pairs/count")))
        curves["tailorpo"][method] = _curve(history, "rewards/alignment_score/mean")
        trainer.pipeline.unet.eval()
        evaluate(method, trainer.pipeline, pairs, seconds)
        del trainer
    bar.close()

    # 6. Report.
    by_method = {row["method"]: row for row in rows}
    base_ci = rows[0]["alignment_ci"]
    for row in rows[1:]:
        row["gain"] = round(row["alignment"] - base_alignment, 4)
        # Conservative: a gain counts only when the two 95% intervals do not overlap.
        cis = (row["alignment_ci"], base_ci)
        row["distinguishable_from_base"] = None if None in cis else abs(row["gain"]) > sum(cis)
    efficacy = {
        method: pair_efficacy(by_method[method]["alignment"], base_alignment, by_method[method]["pairs"])
        for method in ("dpo_reward_pairs", "dpo_rpo_pairs")
    }
    reference = efficacy["dpo_reward_pairs"]
    relative = None
    if efficacy["dpo_rpo_pairs"] is not None and reference is not None and reference > 0:
        relative = round(100.0 * (efficacy["dpo_rpo_pairs"] / reference - 1.0), 1)
    measurable = any(by_method[m].get("distinguishable_from_base") for m in ("dpo_reward_pairs", "dpo_rpo_pairs"))
    results = {
        "rows": rows,
        "pair_efficacy": {
            "dpo_reward_pairs": efficacy["dpo_reward_pairs"],
            "dpo_rpo_pairs": efficacy["dpo_rpo_pairs"],
            "rpo_vs_reward_percent": relative,
            "gains_measurable": measurable,
            "note": "alignment gain over base per training pair; the RPO paper reports +42% for RPO pairs on SDXL. "
            "rpo_vs_reward_percent is null when reward pairs gave no positive gain (a ratio would mislead).",
        },
        "config": dataclasses.asdict(config),
        "eval_prompts": eval_prompts,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    grid = image_grid([images[m] for m in METHODS], row_labels=list(METHODS),
                      column_labels=eval_prompts[: config.grid_prompts], cell_size=96)  # fmt: skip
    grid.save(output_dir / "grid.png")
    charts = [
        line_chart(curves["dpo"], title="Diffusion-DPO loss (LoRA)"),
        line_chart(curves["tailorpo"], title="TailorPO rollout alignment (final images)"),
    ]
    canvas = Image.new("RGB", (sum(c.width for c in charts), max(c.height for c in charts)), "white")
    x = 0
    for chart in charts:
        canvas.paste(chart, (x, 0))
        x += chart.width
    canvas.save(output_dir / "curves.png")
    log(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table, with the pair-efficacy line."""
    lines = [f"{'method':<18} {'alignment':>10} {'± 95% CI':>9} {'gain':>7} {'pairs':>7} {'seconds':>8}"]
    for row in results["rows"]:
        ci = "n/a" if row["alignment_ci"] is None else f"{row['alignment_ci']:.3f}"
        gain = f"{row['gain']:+.3f}" if "gain" in row else ""
        mark = "*" if row.get("distinguishable_from_base") else " "
        lines.append(
            f"{row['method']:<18} {row['alignment']:>10.3f} {ci:>9} {gain:>7}{mark}"
            f"{row['pairs']:>6} {row['seconds']:>8.1f}"
        )
    eff = results["pair_efficacy"]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.5f}"

    lines.append(
        f"pair efficacy (alignment gain per pair): reward pairs {fmt(eff['dpo_reward_pairs'])}, "
        f"RPO pairs {fmt(eff['dpo_rpo_pairs'])}"
        + ("" if eff["rpo_vs_reward_percent"] is None else f" ({eff['rpo_vs_reward_percent']:+.1f}%; paper: +42%)")
    )
    lines.append(
        "* = the 95% intervals of the method and the base do not overlap."
        + ("" if eff.get("gains_measurable", True) else " No DPO gain is measurable, so the efficacy ratio is noise.")
    )
    return "\n".join(lines)
