"""Does the LoRA rank change the in-distribution drop? (issue 27, item 6: the one factor the arm sweep left out)

    python examples/shapes/dev_sweep.py --stage ranks --arm-sweep outputs/arm-sweep --output-dir outputs/rank-check

The arm sweep trained every run at LoRA rank 8 and found the in-distribution drop growing with steps x learning
rate (docs/shapes.md). Here each chosen arm's chosen recipe is retrained at other ranks on *the arm sweep's own
pairs and training seeds* (read back from its `work/seed-S/pairs`, so only the rank differs), scored by the same
scorer (dev and in-distribution prompts, the same evaluation seeds), and set beside the sweep's rank-8 run of the
same arm, recipe and seed. A diagnosis, not a choice: nothing is chosen from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .arm_sweep import CHOSEN_ARMS, arm_recipe_config, read_runs, sweep_scorer, train_and_score
from .demo import DemoConfig
from .stages import _quiet_libraries

__all__ = ["format_rank_check", "load_pair_sets", "run_rank_check"]


def load_pair_sets(folder: str | Path) -> dict[str, Any]:
    """The pair sets `build_pair_sets` wrote for one seed (`rpo_pairs` as the builder's shards, the reward-labelled
    sets as `save_to_disk` folders), read back as datasets."""
    from ..data.builder.shards import load_built_dataset
    from ..data.formats import load_saved_dataset

    folder = Path(folder)
    return {"rpo_pairs": load_built_dataset(folder / "rpo_pairs"),
            "reward_pairs": load_saved_dataset(folder / "reward_pairs"),
            "best_of_4_pairs": load_saved_dataset(folder / "best_of_4_pairs")}  # fmt: skip



def _declared_config(declared: dict[str, Any]) -> DemoConfig:
    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in declared["config"].items() if k in fields}
    return DemoConfig(**values)


def run_rank_check(
    arm_sweep_dir: str | Path,
    output_dir: str | Path,
    ranks: Sequence[int] = (4, 16),
    arms: Sequence[str] = ("dpo_reward_pairs", "dpo_rpo_pairs"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Retrain each of `arms`' chosen recipe at each of `ranks` on a finished arm sweep's pairs and seeds; write
    rank_check.json / .md with the dev and in-distribution gains of every run beside the sweep's rank-8 run."""
    from .model import load_pipeline

    sweep_dir, output_dir = Path(arm_sweep_dir), Path(output_dir)
    results_path = sweep_dir / "arm_sweep.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} is missing: run the arm sweep to the end first")
    sweep = json.loads(results_path.read_text(encoding="utf-8"))
    declared = sweep["declared"]
    bad = [a for a in arms if a not in CHOSEN_ARMS or a not in sweep["arms"]]
    if bad or not ranks:
        raise ValueError(f"arms {bad} have no chosen recipe in {results_path}; choose among {list(CHOSEN_ARMS)}")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; the rank check writes only into a new folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    config = _declared_config(declared)
    sweep_runs = read_runs(sweep_dir / "runs.jsonl")
    _quiet_libraries()
    scorer = sweep_scorer(config, declared["dev_prompts"])
    scorer("base", load_pipeline(config.model))
    rows = []
    for seed in declared["seeds"]:
        pair_sets = load_pair_sets(sweep_dir / "work" / f"seed-{seed}" / "pairs")
        for arm in arms:
            recipe = sweep["arms"][arm]["chosen"]
            reference = sweep_runs[(arm, recipe, int(seed))]
            for rank in ranks:
                run_config = dataclasses.replace(arm_recipe_config(config, arm, recipe), seed=int(seed),
                                                 lora_r=int(rank))  # fmt: skip
                scored = train_and_score(run_config, pair_sets, output_dir / "work", arm,
                                         f"{arm}-r{rank}-seed{seed}", scorer)  # fmt: skip
                row = {"arm": arm, "recipe": recipe, "rank": int(rank), "seed": int(seed), **scored,
                       "rank_8_gain": reference["gain"],
                       "rank_8_in_distribution_gain": reference["in_distribution_gain"]}  # fmt: skip
                rows.append(row)
                log(f"{arm} r={rank} seed {seed}: dev {row['gain']:+.4f} (r=8 {row['rank_8_gain']:+.4f}), "
                    f"in-distribution {row['in_distribution_gain']:+.4f} "
                    f"(r=8 {row['rank_8_in_distribution_gain']:+.4f})")  # fmt: skip
    results = {"arm_sweep": str(sweep_dir), "ranks": [int(r) for r in ranks], "arms": list(arms), "rows": rows,
               "summary": _summarise(rows, arms, ranks)}  # fmt: skip
    (output_dir / "rank_check.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = format_rank_check(results)
    (output_dir / "rank_check.md").write_text(table + "\n", encoding="utf-8")
    log(table)
    return results


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def _summarise(rows: list[dict[str, Any]], arms: Sequence[str], ranks: Sequence[int]) -> list[dict[str, Any]]:
    """Per arm and rank: the mean gains and the mean paired difference to rank 8 (same pairs and seed) +- SE."""
    summary = []
    for arm in arms:
        for rank in ranks:
            mine = [r for r in rows if r["arm"] == arm and r["rank"] == rank]
            entry = {"arm": arm, "rank": int(rank), "seeds": [r["seed"] for r in mine]}
            for key in ("gain", "in_distribution_gain"):
                entry[key] = _mean_se([r[key] for r in mine])
                entry[f"{key}_minus_rank_8"] = _mean_se([r[key] - r[f"rank_8_{key}"] for r in mine])
            summary.append(entry)
    return summary


def format_rank_check(results: dict[str, Any]) -> str:
    """The rank check as Markdown: per arm and rank, dev and in-distribution gains and their change from rank 8."""
    keys = ("gain", "gain_minus_rank_8", "in_distribution_gain", "in_distribution_gain_minus_rank_8")
    lines = ["| arm | rank | dev gain | minus rank 8 | in-distribution gain | minus rank 8 |",
             "|---|---:|---|---|---|---|"]  # fmt: skip
    for e in results["summary"]:
        cells = [f"{e[k][0]:+.3f} +- {e[k][1]:.3f}" for k in keys]
        lines.append(f"| `{e['arm']}` | {e['rank']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
