"""The shapes world's sweeps of the online methods (TailorPO, its final-image baseline, GRPO, DiffusionNFT), on dev.

`run_online_sweep` asks whether the online methods move with more steps than the demo gives them;
`run_online_recipe_sweep` chooses each online method's recipe over training seeds. Both are re-exported by
`trl_rpo.shapes.sweep` and run by `examples/shapes/dev_sweep.py --stage online` / `--stage online-recipes`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .demo import DemoConfig
from .online_rounds import (  # the rounds' declarations, re-exported where they always were
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
)
from .stages import (
    TAILORPO_PAIRINGS,
    _curve,
    _quiet_libraries,
    _Scorer,
    base_at,
    online_guidance,
    row_config,
    train_grpo,
    train_nft,
    train_tailorpo,
)
from .sweep_files import _dev_gain, _new_folder, _write_sweep

__all__ = [
    "ONLINE_METHODS",
    "ONLINE_BATCH_RECIPES",
    "ONLINE_BATCH_SEEDS",
    "ONLINE_RECIPES",
    "ONLINE_REWARD_RECIPES",
    "ONLINE_REWARD_SEEDS",
    "ONLINE_STEPS_RECIPES",
    "ONLINE_STEPS_SEEDS",
    "TAILORPO_BATCH_RECIPES",
    "TAILORPO_BATCH_SEEDS",
    "NFT_CFG_FREE_RECIPES",
    "NFT_CFG_FREE_SEEDS",
    "NFT_GUIDANCE2_RECIPES",
    "NFT_GUIDANCE2_SEEDS",
    "NFT_CONFIRM_RECIPES",
    "NFT_CONFIRM_SEEDS",
    "NFT_LR_RECIPES",
    "NFT_LR_SEEDS",
    "NFT_POWER_RECIPES",
    "NFT_POWER_SEEDS",
    "NFT_NOISE_PER_PROMPT",
    "NFT_NOISE_RECIPES",
    "NFT_NOISE_SEEDS",
    "NFT_ROLLOUT_RECIPES",
    "NFT_ROLLOUT_SEEDS",
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
    "format_online_recipe_sweep",
    "format_online_sweep",
    "rescore_train_prompts",
    "rollout_rise",
    "run_online_recipe_sweep",
    "run_online_sweep",
]

ONLINE_METHODS = ("tailorpo", "tailorpo_final", "grpo")


def _fifths(history: list[dict[str, Any]], key: str, name: str) -> dict[str, float]:
    """`{name}_first` / `{name}_last`: the mean of a logged metric over the first and the last fifth of training."""
    values = [value for _, value in _curve(history, key)]
    fifth = max(1, len(values) // 5)
    return {f"{name}_first": sum(values[:fifth]) / fifth, f"{name}_last": sum(values[-fifth:]) / fifth}


def run_online_sweep(
    config: DemoConfig,
    output_dir: str | Path,
    steps: Sequence[int] = (40, 160),
    dev_prompts: int = 60,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Does the online methods' budget limit them? Each trained for each of `steps` optimizer steps; on dev.

    TailorPO (step-wise pairs), its `pairing="final"` baseline and GRPO are trained as the demo trains them
    (`DemoConfig.tailorpo_*`, with `tailorpo_steps` replaced), scored on dev prompts by the paired gain over the
    base, with their rollout alignment over the first and last fifth of training (does the reward they optimize
    rise at all?), and compared with each other at each budget. Writes online_sweep.json/.md.
    """
    from .model import load_pipeline
    from .world import prompts as shape_prompts

    if not steps or min(steps) <= 0:
        raise ValueError(f"run_online_sweep needs positive step counts, got {list(steps)}")
    output_dir = _new_folder(output_dir)
    _quiet_libraries()
    scorer = _Scorer(config, {"dev": (shape_prompts(dev_prompts, seed=config.seed, split="dev"), config.eval_seeds)})
    scorer("base", load_pipeline(config.model))
    rows, comparisons = [], []
    for count in steps:
        variant = dataclasses.replace(config, tailorpo_steps=int(count))
        for method in ONLINE_METHODS:
            name = f"{method}-{count}"
            start = time.perf_counter()
            if method == "grpo":
                trainer = train_grpo(variant, output_dir, name)
            else:
                trainer = train_tailorpo(variant, output_dir, name, TAILORPO_PAIRINGS[method])
            seconds = time.perf_counter() - start
            rollout = _fifths(trainer.state.log_history, "rewards/alignment_score/mean", "rollout")
            optimizer_steps = trainer.state.global_step
            scorer(name, trainer.pipeline)
            del trainer
            rows.append({"method": method, "steps": int(count), "optimizer_steps": optimizer_steps,
                         "seconds": round(seconds, 1), **rollout, **_dev_gain(scorer, name)})  # fmt: skip
            log(format_online_sweep({"rows": rows[-1:], "comparisons": []}).splitlines()[-1])
        for a, b in (("tailorpo", "tailorpo_final"), ("tailorpo", "grpo")):
            comparisons.append({"a": a, "b": b, "steps": int(count),
                                **_dev_gain(scorer, f"{a}-{count}", f"{b}-{count}")})  # fmt: skip
    results = {"rows": rows, "comparisons": comparisons, "base_dev_alignment": scorer.mean("base", "dev"),
               "config": dataclasses.asdict(config)}  # fmt: skip
    return _write_sweep(output_dir, "online_sweep", results, format_online_sweep(results), log)


def format_online_sweep(results: dict[str, Any]) -> str:
    """The online-budget sweep as Markdown: per method and step count, the dev gain and the rollout reward."""

    def gain(entry: dict[str, Any]) -> str:
        low, high = entry["gain_ci"]
        return f"{entry['gain']:+.3f} [{low:+.3f}, {high:+.3f}], p = {entry['p_value']:.2g}"

    lines = ["| method | steps | dev gain [95% CI] | rollout alignment, first -> last fifth | seconds |",
             "|---|---:|---|---|---:|"]  # fmt: skip
    for row in results["rows"]:
        lines.append(f"| {row['method']} | {row['steps']} | {gain(row)} | {row['rollout_first']:.3f} -> "
                     f"{row['rollout_last']:.3f} | {row['seconds']:.0f} |")  # fmt: skip
    if results["comparisons"]:
        lines += ["", "| a vs b | steps | dev difference [95% CI] |", "|---|---:|---|"]
        lines += [f"| {c['a']} vs {c['b']} | {c['steps']} | {gain(c)} |" for c in results["comparisons"]]
    return "\n".join(lines)


_ONLINE_TRAINERS = {**{method: functools.partial(train_tailorpo, pairing=pairing)
                       for method, pairing in TAILORPO_PAIRINGS.items()},
                    "grpo": train_grpo, "nft": train_nft}  # fmt: skip


def _run_name(method: str, recipe_index: int, seed: int | str) -> str:
    """A recipe sweep run's folder under `runs/`: the method, its recipe's index among the method's, the seed."""
    return f"{method}-{recipe_index}-seed{seed}"


def run_online_recipe_sweep(
    config: DemoConfig,
    output_dir: str | Path,
    recipes: dict[str, dict[str, dict[str, Any]]] = ONLINE_RECIPES,
    seeds: Sequence[int] = (0, 1, 2),
    dev_prompts: int = 60,
    log: Callable[[str], None] = print,
    train_prompts: int = 0,
    dev2_prompts: int = 0,
) -> dict[str, Any]:
    """Choose each online method's recipe on dev prompts, over training seeds; write online_recipes.json/.md.

    Each `recipes[method]` entry overrides `DemoConfig` fields; every recipe is trained with every seed (LoRA
    initialization, prompt order, rollout noise) and scored on the dev prompts by its paired gain over the base, with
    its rollout alignment in the first and last fifth of training and its seconds. **Choice rule (fixed before the
    sweep runs): per method, the recipe whose lowest gain over the seeds is highest** (it penalises spread between
    trainings; ties go to the first listed, the demo's). Test prompts are never scored here. With `train_prompts`,
    each run is also scored on that many of the prompts it trains on (`train_gain`: does the reward rise where it
    trains?), drawn from `config.online_prompt_split` (the train split by default; with "dev2", no dev2 prompt may
    join dev, since dev2 is then what the runs train on; with "dev2_a" or "dev2_b", the dev and dev2 prompts are the
    other half's, `dev_b` / `dev2_b` or `dev_a` / `dev2_a`: pairs the runs never saw).
    Each seed's entry keeps its per-image dev scores (`dev_scores`, `[noise][prompt]`; the base's in
    `base_dev_scores`), and each row gives the gain over all its seeds at once with the study's two-level bootstrap
    (`pooled_gain`, `pooled_ci`, `pooled_p`): a report, not part of the rule. With `dev2_prompts`, that many prompts
    of the `dev2` split (the old test split, no longer a reporting one) join the dev prompts: one set, more power.
    """
    from .model import load_pipeline
    from .world import SPLIT_SIZES, unseen_pair_splits
    from .world import prompts as shape_prompts

    if not recipes or not seeds or not all(recipes.values()):
        raise ValueError("run_online_recipe_sweep needs at least one recipe per method and one seed")
    unknown = [m for m in recipes if m not in _ONLINE_TRAINERS]
    if unknown:
        raise ValueError(f"unknown online methods {unknown}; choose among {list(_ONLINE_TRAINERS)}")
    pool = config.online_prompt_split
    for method, variants in recipes.items():
        for name, overrides in variants.items():
            split = row_config(dataclasses.replace(config, **overrides), method).online_prompt_split
            if {"online_prompt_split", "nft_prompt_split"} & set(overrides) or split != pool:
                raise ValueError(f"every run rolls out on config.online_prompt_split ({pool!r}); {method} recipe "
                                 f"{name!r} would roll out on {split!r}: set the split on config (and "
                                 f"nft_prompt_split to None), for the whole sweep")  # fmt: skip
    if pool == "dev2" and dev2_prompts:
        raise ValueError(f"the runs roll out on dev2 prompts (config.online_prompt_split), so none may be scored as "
                         f"dev: dev2_prompts must be 0, got {dev2_prompts}")  # fmt: skip
    # Rolling out on one half of the held-out pairs (dev2_a / dev2_b), dev is the other half's scenes: pairs unseen.
    # (Rolling out on dev2, dev shares its pairs: the rounds that did so measured those pairs, docs/shapes.md.)
    dev_split, dev2_split = ("dev", "dev2") if pool == "dev2" else unseen_pair_splits(pool)
    for count, split in ((dev_prompts, dev_split), (dev2_prompts, dev2_split), (train_prompts, pool)):
        if count > SPLIT_SIZES[split]:  # more would repeat prompts
            raise ValueError(f"{split} holds {SPLIT_SIZES[split]} scenes; cannot score {count} distinct prompts")
    output_dir = _new_folder(output_dir)
    _quiet_libraries()
    dev = shape_prompts(dev_prompts, seed=config.seed, split=dev_split)
    if dev2_prompts:
        dev += shape_prompts(dev2_prompts, seed=config.seed, split=dev2_split)
    sets = {"dev": (dev, config.eval_seeds)}
    if train_prompts:
        sets["train"] = (shape_prompts(train_prompts, seed=config.seed, split=pool), config.eval_seeds)
    scorer = _Scorer(config, sets)
    scorer("base", load_pipeline(config.model))
    rows: list[dict[str, Any]] = []
    chosen: dict[str, str] = {}
    for method, variants in recipes.items():
        first = len(rows)
        for name, overrides in variants.items():
            row: dict[str, Any] = {"method": method, "recipe": name, "overrides": dict(overrides), "by_seed": {}}
            # A CFG-free recipe samples its models as it trains them, and is also paired with the base sampled so.
            guidance = online_guidance(row_config(dataclasses.replace(config, **overrides), method))
            same = _base_at(scorer, load_pipeline, guidance) if guidance != config.guidance_scale else None
            for seed in seeds:
                variant = dataclasses.replace(config, seed=int(seed), **overrides)
                run = _run_name(method, len(rows) - first, seed)
                start = time.perf_counter()
                trainer = _ONLINE_TRAINERS[method](variant, output_dir, run)
                seconds = time.perf_counter() - start
                history = trainer.state.log_history
                curves = {**_fifths(history, "rewards/alignment_score/mean", "rollout"),
                          **_fifths(history, "reward", "reward")}  # the weighted reward: the one it optimizes
                scorer(run, trainer.pipeline, guidance)
                del trainer
                entry = row["by_seed"][str(seed)] = {**_dev_gain(scorer, run), "seconds": round(seconds, 1), **curves,
                                                     "dev_scores": scorer.scores[run]["dev"]}  # fmt: skip
                if train_prompts:
                    train = scorer.compare(run, "base", "train").to_dict()
                    entry.update(train_gain=train["gain"], train_gain_ci=train["gain_ci"],
                                 train_scores=scorer.scores[run]["train"])  # fmt: skip
                if same:
                    entry["same_guidance"] = {"guidance_scale": guidance}
                    for prompt_set in sets:
                        gain = scorer.compare(run, same, prompt_set).to_dict()
                        entry["same_guidance"].update({f"{prompt_set}_{k}": gain[k] for k in ("gain", "gain_ci")})
            gains = [e["gain"] for e in row["by_seed"].values()]
            row.update(mean_gain=round(sum(gains) / len(gains), 4), min_gain=min(gains), max_gain=max(gains),
                       **_pooled_gain(row, scorer.scores["base"]["dev"]))  # fmt: skip
            if train_prompts:
                row.update(_pooled_gain(row, scorer.scores["base"]["train"], "train"))
            if same:
                row["same_guidance"] = {"guidance_scale": guidance, **{
                    key: value for prompt_set in sets
                    for key, value in _pooled_gain(row, scorer.scores[same][prompt_set], prompt_set, "same").items()
                }}  # fmt: skip
            row.update(rollout_rise(row["by_seed"].values()))
            rows.append(row)
            log(format_online_recipe_sweep({"rows": [row], "chosen": {}}).splitlines()[-1])
        best = max(range(first, len(rows)), key=lambda i: (rows[i]["min_gain"], -i))
        chosen[method] = rows[best]["recipe"]
    results = {"rows": rows, "chosen": chosen, "seeds": [int(s) for s in seeds], "rule": "max over recipes of the "
               "min over seeds of the dev gain", "base_dev_alignment": scorer.mean("base", "dev"),
               "base_dev_scores": scorer.scores["base"]["dev"], "dev_prompts": sets["dev"][0],
               "config": dataclasses.asdict(config)}  # fmt: skip
    if train_prompts:
        results.update(base_train_scores=scorer.scores["base"]["train"], train_prompts=sets["train"][0])
    others = {name: scorer.scores[name] for name in scorer.scores if name.startswith("base@")}
    if others:  # the base sampled at a CFG-free recipe's guidance, per set
        results["base_at_guidance"] = {name: {"alignment": {s: scorer.mean(name, s) for s in sets}, "scores": scores}
                                       for name, scores in others.items()}  # fmt: skip
    return _write_sweep(output_dir, "online_recipes", results, format_online_recipe_sweep(results), log)


def rescore_train_prompts(
    folder: str | Path, num_inference_steps: int | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Score a finished online recipe sweep's saved models again on its train prompts and noises, with
    `num_inference_steps` sampler steps (default: the sweep's own, which reproduces its `train_scores`).

    A diagnosis of "does the reward rise where it trains?": e.g. with the rollouts' step count
    (`DemoConfig.tailorpo_num_inference_steps`) instead of the evaluation's. Per run, the paired train-prompt gain;
    per recipe, the gain over its seeds with the study's two-level bootstrap (`pooled_train_*`). Writes nothing.
    """
    from ..evaluation import load_trained_pipeline
    from .model import load_pipeline

    folder = Path(folder)
    path = folder / "online_recipes.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the folder of a finished run_online_recipe_sweep")
    results = json.loads(path.read_text(encoding="utf-8"))
    _quiet_libraries()
    if "train_prompts" not in results:
        raise ValueError(f"{path}: the sweep scored no train prompts (train_prompts=0), so there are none to rescore")
    config = DemoConfig(**results["config"])
    if num_inference_steps is not None:
        config = dataclasses.replace(config, num_inference_steps=num_inference_steps)
    scorer = _Scorer(config, {"train": (results["train_prompts"], config.eval_seeds)})
    scorer("base", load_pipeline(config.model))
    base = load_pipeline(config.model)  # each LoRA on an unscored copy, as the sweep loaded them (scoring converts)
    rows, index = [], {}
    for row in results["rows"]:
        number = index[row["method"]] = index.get(row["method"], -1) + 1  # run names as the sweep gave them
        out: dict[str, Any] = {"method": row["method"], "recipe": row["recipe"], "by_seed": {}}
        for seed in row["by_seed"]:
            run = _run_name(row["method"], number, seed)
            scorer(run, load_trained_pipeline(folder / "runs" / run, base))
            out["by_seed"][seed] = {"train_gain": round(scorer.compare(run, "base", "train").gain, 4),
                                    "train_scores": scorer.scores[run]["train"]}  # fmt: skip
        out.update(_pooled_gain(out, scorer.scores["base"]["train"], "train"))
        log(f"{out['method']} {out['recipe']}: train gain over seeds {out['pooled_train_gain']:+.4f} "
            f"{out['pooled_train_ci']} at {config.num_inference_steps} steps")  # fmt: skip
        rows.append(out)
    return {"num_inference_steps": config.num_inference_steps, "base_train_alignment": scorer.mean("base", "train"),
            "rows": rows}  # fmt: skip


def _pooled_gain(
    row: dict[str, Any], base_scores: list[list[float]], prompts: str = "dev", prefix: str = "pooled"
) -> dict[str, Any]:
    """A recipe's gain over all its training seeds at once on the `prompts` set ("dev" or "train"): the study's
    two-level bootstrap over seeds and prompts (`trl_rpo.statistics.hierarchical_bootstrap`), on the per-image
    scores each seed's entry keeps (`pooled_*`; `pooled_train_*` for the train prompts; another `prefix` for
    another base, e.g. the base sampled at a CFG-free recipe's guidance)."""
    from ..statistics import hierarchical_bootstrap

    runs = [entry[f"{prompts}_scores"] for entry in row["by_seed"].values()]
    result = hierarchical_bootstrap(runs, [base_scores] * len(runs), seed=0)
    prefix = prefix if prompts == "dev" else f"{prefix}_{prompts}"
    return {f"{prefix}_gain": round(result.gain, 4), f"{prefix}_ci": [round(v, 4) for v in result.ci],
            f"{prefix}_p": round(result.p_value, 4)}  # fmt: skip


def _base_at(scorer: _Scorer, load_pipeline: Callable, guidance: float) -> str:
    """The name under which `scorer` holds the base sampled at `guidance` ('base@1'), scored on first use."""
    name = base_at(guidance)
    if name not in scorer.scores:
        scorer(name, load_pipeline(scorer.config.model), guidance)
    return name


def rollout_rise(entries: Iterable[dict[str, Any]], confidence_level: float = 0.95) -> dict[str, Any]:
    r"""Did the reward of a recipe's own rollouts rise over training? Over its training seeds $s = 1..S$, the rise
    $d_s = \bar r_s^{\text{last fifth}} - \bar r_s^{\text{first fifth}}$ of each run's rollout `alignment_score`, with
    the Student-t interval of its mean and the one-sample t-test's p-value (`rollout_rise`, `rollout_rise_ci`,
    `rollout_rise_p`; the interval and p are None below two seeds).

    Each seed draws its own prompts for every step, so over seeds the prompts a fifth happens to hold average out; a
    single run's rise mixes learning with which prompts fell in which fifth.
    """
    from scipy import stats

    from ..evaluation import confidence_interval

    rises = [entry["rollout_last"] - entry["rollout_first"] for entry in entries]
    if not rises:
        raise ValueError("rollout_rise needs at least one run with rollout_first and rollout_last")
    mean = sum(rises) / len(rises)
    out: dict[str, Any] = {"rollout_rise": round(mean, 4), "rollout_rise_ci": None, "rollout_rise_p": None}
    if len(rises) >= 2:
        half = confidence_interval(rises, confidence_level)
        # Identical rises leave the t statistic undefined: p is then 1 for no rise and 0 for any other.
        p_value = float(stats.ttest_1samp(rises, 0.0).pvalue) if max(rises) > min(rises) else float(mean == 0)
        out.update(rollout_rise_ci=[round(mean - half, 4), round(mean + half, 4)], rollout_rise_p=round(p_value, 4))
    return out


def format_online_recipe_sweep(results: dict[str, Any]) -> str:
    """The online recipe sweep as Markdown: per recipe, dev gain per seed, min and mean, rollout reward, seconds."""
    lines = ["| method | recipe | dev gain per seed | min / mean [over seeds, 95% CI] | rollout first -> last fifth "
             "(mean; rise over seeds [95% CI]) | optimized reward, first -> last fifth | seconds |",
             "|---|---|---|---|---|---|---:|"]  # fmt: skip

    def mean(entries: list[dict[str, Any]], key: str) -> float | None:
        values = [e[key] for e in entries if key in e]  # sweeps written before the column have no reward_*
        return sum(values) / len(values) if values else None

    for row in results["rows"]:
        entries = list(row["by_seed"].values())
        cells = ", ".join(f"{e['gain']:+.3f} [{e['gain_ci'][0]:+.3f}, {e['gain_ci'][1]:+.3f}]" for e in entries)
        first, last = mean(entries, "reward_first"), mean(entries, "reward_last")
        optimized = "" if first is None else f"{first:.3f} -> {last:.3f}"
        mark = " **(chosen)**" if results["chosen"].get(row["method"]) == row["recipe"] else ""
        if all("train_gain" in e for e in entries):  # the paired gain on train prompts, per seed
            cells += "; train: " + ", ".join(f"{e['train_gain']:+.3f}" for e in entries)
            if "pooled_train_ci" in row:
                low, high = row["pooled_train_ci"]
                cells += f" (over seeds {row['pooled_train_gain']:+.3f} [{low:+.3f}, {high:+.3f}])"
        if row.get("same_guidance"):  # a CFG-free recipe: its gains over the base sampled as it is, over the seeds
            same = row["same_guidance"]
            cells += f"; against the base at guidance {same['guidance_scale']:g}: dev {same['same_gain']:+.3f} " \
                     f"[{same['same_ci'][0]:+.3f}, {same['same_ci'][1]:+.3f}]"
            if "same_train_gain" in same:
                low, high = same["same_train_ci"]
                cells += f", train {same['same_train_gain']:+.3f} [{low:+.3f}, {high:+.3f}]"
        pooled = ""
        if "pooled_ci" in row:  # sweeps written before the pooled interval have none
            low, high = row["pooled_ci"]
            pooled = f" [{low:+.3f}, {high:+.3f}]"
        rise = ""
        if row.get("rollout_rise_ci"):  # sweeps written before the rise's interval have none
            low, high = row["rollout_rise_ci"]
            rise = f" ({row['rollout_rise']:+.3f} [{low:+.3f}, {high:+.3f}])"
        lines.append(f"| {row['method']} | {row['recipe']}{mark} | {cells} | {row['min_gain']:+.3f} / "
                     f"{row['mean_gain']:+.3f}{pooled} | {mean(entries, 'rollout_first'):.3f} -> "
                     f"{mean(entries, 'rollout_last'):.3f}{rise} | {optimized} | "
                     f"{mean(entries, 'seconds'):.0f} |")  # fmt: skip
    return "\n".join(lines)
