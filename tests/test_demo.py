"""`trl-rpo demo`: every method on the shapes world's base model, end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from trl_rpo.cli import demo_arguments_class
from trl_rpo.shapes import prompts
from trl_rpo.shapes.demo import (
    COMPARISONS,
    METHODS,
    DemoConfig,
    efficacy_comparison,
    format_table,
    pair_efficacy,
    run_demo,
)
from trl_rpo.shapes.stages import parse_dpo_recipe

SHAPES_EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "shapes"


def _parse(*argv):
    from trl import TrlParser

    (args,) = TrlParser((demo_arguments_class(),)).parse_args_and_config(args=list(argv))
    return args


def test_quick_preset_keeps_explicit_overrides():
    args = _parse("--quick", "--dpo_steps", "50", "--eval_seeds", "3", "4")
    assert args.quick and args.dpo_steps == 50 and args.eval_seeds == [3, 4] and args.image_budget is None
    config = DemoConfig.quick(dpo_steps=args.dpo_steps, eval_seeds=args.eval_seeds)
    assert config.dpo_steps == 50 and config.eval_seeds == (3, 4)
    assert config.image_budget == DemoConfig.quick().image_budget


def test_the_quick_preset_trains_every_dpo_row_at_its_steps_with_the_default_recipes_otherwise():
    from trl_rpo.shapes.stages import DPO_ARMS, arm_config

    full = DemoConfig()
    for steps, config in ((20, DemoConfig.quick()), (7, DemoConfig.quick(dpo_steps=7))):
        for arm in DPO_ARMS:
            trained, default = arm_config(config, arm), arm_config(full, arm)
            assert trained.dpo_steps == steps, arm
            assert (trained.dpo_learning_rate, trained.dpo_beta, trained.mask_weight_outside) == (
                default.dpo_learning_rate, default.dpo_beta, default.mask_weight_outside), arm
    given = "lr=1e-3 beta=5000 steps=300 t=<500"  # an explicit recipe is kept as given
    assert DemoConfig.quick(best_of_4_recipe=given).best_of_4_recipe == given


def test_full_demo_reports_on_every_final_scene():
    from trl_rpo.shapes.world import all_scenes

    config = DemoConfig()
    assert config.eval_prompts == len(all_scenes("final"))
    assert len(set(prompts(config.eval_prompts, config.seed, "final"))) == config.eval_prompts


def test_demo_help_lists_every_field_with_both_presets(capsys):
    from trl_rpo.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    for name in DemoConfig.__dataclass_fields__:
        assert f"--{name}" in text
    assert "preset: 512; 64 with --quick" in text


def test_bad_budget_is_refused_before_any_model_loads():
    with pytest.raises(ValueError, match="image_budget"):
        DemoConfig(image_budget=1)


def test_a_refine_strength_that_runs_no_step_is_refused_before_any_model_loads():
    with pytest.raises(ValueError, match=r"refine_strength 0.1 x num_inference_steps 5 runs no refinement step"):
        DemoConfig(num_inference_steps=5)
    assert DemoConfig(num_inference_steps=5, refine_strength=0.0).refine_strength == 0.0


def test_demo_refuses_an_output_dir_that_holds_files(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty"):
        run_demo(DemoConfig.quick(), tmp_path, progress=False)
    assert (tmp_path / "results.json").read_text() == "{}"


def test_pair_efficacy_is_gain_per_pair_and_undefined_without_pairs():
    assert pair_efficacy(0.6, 0.5, 20) == pytest.approx(0.005)
    assert pair_efficacy(0.6, 0.5, 0) is None


def test_efficacy_is_gain_per_pair_with_the_gains_interval_scaled_by_the_pairs():
    gains_a, gains_b = [0.1, 0.2, 0.15, 0.05, 0.12, 0.18], [0.05, 0.1, 0.02, 0.04, 0.06, 0.09]
    result = efficacy_comparison(gains_a, gains_b, pairs_a=50, pairs_b=100)
    assert result["a"]["efficacy"] == pytest.approx(sum(gains_a) / 6 / 50)
    low, high = result["a"]["efficacy_ci"]
    assert low < result["a"]["efficacy"] < high
    expected = 100 * ((sum(gains_a) / 6 / 50) / (sum(gains_b) / 6 / 100) - 1)
    assert result["relative_percent"] == pytest.approx(expected)
    assert result["relative_percent_ci"][0] < expected < result["relative_percent_ci"][1]


def test_efficacy_difference_is_the_paired_mean_of_per_pair_gains_and_defined_when_the_ratio_is_not():
    gains_a, gains_b = [0.1, 0.2, 0.1, 0.2], [0.05, -0.03, 0.04, -0.02]  # b's mean is nonzero, its gain noise
    result = efficacy_comparison(gains_a, gains_b, pairs_a=10, pairs_b=20)
    expected = sum(gains_a) / 4 / 10 - sum(gains_b) / 4 / 20
    assert result["relative_percent"] is None
    assert result["difference"] == pytest.approx(expected)
    low, high = result["difference_ci"]
    assert low < expected < high and low > 0


def test_table_reports_the_efficacy_difference_with_its_interval():
    rows = [{"method": "base", "alignment": 0.5, "pairs": 0, "seconds": 0.0}]
    efficacy = {"efficacy": 0.001, "efficacy_ci": [0.0005, 0.0015]}
    text = format_table({"rows": rows, "pair_efficacy": {"dpo_reward_pairs": efficacy, "dpo_rpo_pairs": efficacy,
                                                         "rpo_minus_reward": 0.0002,
                                                         "rpo_minus_reward_ci": [-0.0001, 0.0004]}})  # fmt: skip
    assert "RPO - reward +0.00020 [-0.00010, +0.00040]" in text


def test_relative_efficacy_is_undefined_when_the_reference_gain_is_noise():
    result = efficacy_comparison([0.1, 0.2, 0.1, 0.2], [0.05, -0.05, 0.04, -0.04], pairs_a=10, pairs_b=10)
    assert result["relative_percent"] is None and result["relative_percent_ci"] is None
    assert not result["b"]["gain_ci_excludes_zero"]


def test_table_reports_every_row_its_paired_interval_and_the_comparisons():
    rows = [{"method": m, "alignment": 0.5, "pairs": 1, "seconds": 1.0} for m in METHODS]
    rows[1].update(gain=0.1, gain_ci=[0.02, 0.18], win_rate=0.7, in_distribution_gain=0.05, gain_per_minute=6.0)
    comparison = {"a": "dpo_rpo_pairs", "b": "dpo_reward_pairs", "prompts": "final", "gain": 0.03,
                  "gain_ci": [-0.01, 0.07], "win_rate": 0.55, "p_value": 0.2}  # fmt: skip
    efficacy = {"efficacy": 0.001, "efficacy_ci": [0.0005, 0.0015]}
    text = format_table({"rows": rows, "comparisons": [comparison],
                         "pair_efficacy": {"dpo_reward_pairs": efficacy, "dpo_rpo_pairs": None,
                                           "rpo_vs_reward_percent": None}})  # fmt: skip
    assert all(m in text for m in METHODS) and "n/a" in text
    assert "+0.100" in text and "[+0.020, +0.180]*" in text
    assert "gain/min" in text.splitlines()[0] and "+6.0000" in text.splitlines()[2]
    assert "dpo_rpo_pairs vs dpo_reward_pairs (final): +0.030" in text


@pytest.mark.slow
def test_trl_rpo_demo_quick_runs_end_to_end_and_writes_results_grid_and_curves(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "trl_rpo.cli", "demo", "--quick", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [row["method"] for row in results["rows"]] == list(METHODS)
    for row in results["rows"]:
        assert 0.0 <= row["alignment"] <= 1.0
        assert isinstance(row["pairs"], int) and row["seconds"] >= 0
    assert results["rows"][0]["pairs"] == 0
    by_method = {row["method"]: row for row in results["rows"]}  # both pair sets spend the same image budget
    assert by_method["dpo_rpo_pairs"]["images"] == by_method["dpo_reward_pairs"]["images"] == 64
    assert by_method["dpo_best_of_4"]["images"] == 64
    for row in results["rows"][1:]:
        # GRPO learns from groups of rollouts, not pairs: its budget is counted in images.
        assert row["pairs"] > 0 if row["method"] not in ("grpo", "nft") else row["images"] > 0, row
        low, high = row["gain_ci"]
        assert low <= row["gain"] <= high and 0 <= row["win_rate"] <= 1 and 0 <= row["p_value"] <= 1
        # alignment per compute: the gain per minute of the row's training (pair building included)
        assert row["gain_per_minute"] == pytest.approx(row["gain"] / (row["seconds"] / 60), rel=1e-2, abs=1e-4)
        assert row["in_distribution_gain_ci"][0] <= row["in_distribution_gain"] <= row["in_distribution_gain_ci"][1]
    assert {(c["a"], c["b"]) for c in results["comparisons"]} == set(COMPARISONS)
    assert {c["prompts"] for c in results["comparisons"]} == {"final", "in_distribution"}
    for row in results["rows"]:  # every image's score is in the file, and the row's figures follow from them
        scores = results["scores"][row["method"]]["final"]
        assert len(scores) == len(results["eval_seeds"]["final"]) and len(scores[0]) == 16
        assert row["alignment"] == pytest.approx(sum(map(sum, scores)) / (16 * len(scores)), abs=1e-4)
    assert "pair efficacy" in result.stdout and "dpo_rpo_pairs vs dpo_reward_pairs" in result.stdout
    config = DemoConfig.quick()
    assert set(results["eval_prompts"]["final"]) <= set(prompts(180, 0, "final"))  # never the dev prompts
    grid = Image.open(out / "grid.png")
    assert grid.size[1] >= len(METHODS) * 128 and grid.size[0] >= config.grid_prompts * 128
    assert Image.open(out / "curves.png").size[0] > 0 and Image.open(out / "gains.png").size[0] > 0
    assert (out / "rpo_pairs" / "manifest.json").is_file() and (out / "reward_pairs").is_dir()
    assert (out / "best_of_4_pairs").is_dir()
    for method in METHODS[1:]:
        assert (out / "runs" / method / "pytorch_lora_weights.safetensors").is_file(), method
    # Each DPO row trains with its arm's recipe (the third arm sweep's choices, every one on all timesteps); the
    # ablation trains RPO pairs exactly as the reward pairs.
    cards = {method: (out / "runs" / method / "README.md").read_text() for method in METHODS[1:5]}
    reward_recipe = parse_dpo_recipe(config.reward_pairs_recipe)
    for method in ("dpo_reward_pairs", "dpo_rpo_pairs_reward_recipe"):
        assert f"| max_steps | {reward_recipe['dpo_steps']} |" in cards[method], method
        assert f"| learning_rate | {reward_recipe['dpo_learning_rate']} |" in cards[method], method
    assert f"| max_steps | {config.dpo_steps} |" in cards["dpo_rpo_pairs"]
    assert not [method for method, card in cards.items() if "timestep_bias" in card]
    # `trl-rpo eval` on a saved model, with the demo's test prompts and seeds, reports the demo's gain.
    (tmp_path / "prompts.txt").write_text("\n".join(results["eval_prompts"]["final"]) + "\n")
    command = [sys.executable, "-m", "trl_rpo.cli", "eval", "--model", str(out / "runs" / "dpo_rpo_pairs"),
               "--base", "shapes", "--prompts", str(tmp_path / "prompts.txt"), "--reward_funcs", "shapes_alignment",
               "--seeds", *map(str, config.eval_seeds), "--num_inference_steps", str(config.num_inference_steps),
               "--guidance_scale", str(config.guidance_scale), "--output_dir", str(tmp_path / "eval")]  # fmt: skip
    evaluated = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())["rewards"]["alignment_score"]
    row = next(row for row in results["rows"] if row["method"] == "dpo_rpo_pairs")
    assert report["gain"] == pytest.approx(row["gain"], abs=0.01) and report["n_images"] == len(config.eval_seeds) * 16


def test_sweep_table_marks_the_chosen_recipe_and_shows_both_pair_sets():
    from trl_rpo.shapes.sweep import format_sweep

    entry = {"gain": 0.02, "gain_ci": [-0.01, 0.05]}
    rows = [{"recipe": {"use_lora": True, "learning_rate": 5e-4, "beta": 5000.0, "max_steps": 150},
             "rpo_pairs": entry, "reward_pairs": entry, "mean_gain": 0.02},
            {"recipe": {"use_lora": False, "learning_rate": 1e-4, "beta": 500.0, "max_steps": 400},
             "rpo_pairs": entry, "reward_pairs": entry, "mean_gain": 0.03}]  # fmt: skip
    table = format_sweep({"rows": rows, "best": 1})
    assert "| 1 | sigmoid | full | 0.0001 | 500 | 400 | +0.020 [-0.010, +0.050] |" in table
    assert table.count("(chosen)") == 1 and table.splitlines()[-1].endswith("**(chosen)** |")


@pytest.mark.slow
def test_dev_sweep_scores_recipes_on_dev_prompts_only(tmp_path):
    from trl_rpo.shapes.sweep import run_dev_sweep

    config = DemoConfig.quick(image_budget=8, eval_seeds=(0,), num_inference_steps=4, refine_strength=0.5,
                              dpo_batch_size=2)  # fmt: skip
    recipe = {"use_lora": True, "learning_rate": 5e-4, "beta": 5000.0, "max_steps": 2}
    results = run_dev_sweep(config, tmp_path / "sweep", recipes=[recipe], dev_prompts=4, log=lambda _: None)
    assert set(results["dev_prompts"]) <= set(prompts(60, 0, "dev"))
    assert results["best"] == 0 and set(results["rows"][0]) >= {"rpo_pairs", "reward_pairs", "mean_gain"}
    assert (tmp_path / "sweep" / "sweep.md").read_text().count("\n") == 3
    accuracy = results["rows"][0]["rpo_pairs"]["dev_pair_accuracy"]
    assert results["pairs"]["dev_pairs"] == 0 or 0.0 <= accuracy <= 1.0


@pytest.mark.slow
def test_dev_sweep_chooses_the_guidance_scale_with_the_best_base_dev_alignment(tmp_path):
    from trl_rpo.shapes.sweep import run_dev_sweep

    config = DemoConfig.quick(image_budget=4, eval_seeds=(0,), num_inference_steps=4, refine_strength=0.5,
                              dpo_batch_size=2)  # fmt: skip
    recipe = {"use_lora": True, "learning_rate": 5e-4, "beta": 5000.0, "max_steps": 1}
    results = run_dev_sweep(config, tmp_path / "sweep", recipes=[recipe], dev_prompts=4, log=lambda _: None,
                            guidance_scales=(0.0, 7.5))  # fmt: skip
    by_guidance = results["base_dev_alignment_by_guidance"]
    assert set(by_guidance) == {0.0, 7.5}
    assert results["guidance_scale"] == max(by_guidance, key=by_guidance.get)
    assert results["base_dev_alignment"] == pytest.approx(by_guidance[results["guidance_scale"]])


@pytest.mark.slow
def test_pair_sweep_builds_pairs_per_refine_strength_and_chooses_one_on_dev_prompts(tmp_path):
    from trl_rpo.shapes.sweep import run_pair_sweep

    config = DemoConfig.quick(image_budget=16, eval_seeds=(0,), num_inference_steps=4, refine_strength=0.5,
                              dpo_batch_size=2, dpo_steps=2)  # fmt: skip
    results = run_pair_sweep(config, tmp_path / "pairs", refine_strengths=(0.0, 0.5), mask_weights=(1.0, 0.0),
                             dev_prompts=4, log=lambda _: None)  # fmt: skip
    assert [row["refine_strength"] for row in results["rows"]] == [0.0, 0.5]
    assert all(set(row["by_mask_weight"]) == {"1", "0"} for row in results["rows"])
    assert results["refine_strength"] == results["rows"][results["best"]]["refine_strength"]
    chosen = results["rows"][results["best"]]["mean_gain"]
    assert chosen == max(row["mean_gain"] for row in results["rows"] if row["mean_gain"] is not None)
    assert set(results["dev_prompts"]).isdisjoint(prompts(120, 0, "dev2"))
    table = (tmp_path / "pairs" / "pair_sweep.md").read_text()
    assert table.count("\n") == 4 and "**(chosen)**" in table


@pytest.mark.slow
def test_seed_sweep_trains_each_variant_with_each_seed_and_chooses_the_best_mean(tmp_path):
    from trl_rpo.shapes.sweep import run_seed_sweep

    config = DemoConfig.quick(image_budget=16, eval_seeds=(0,), num_inference_steps=4, refine_strength=0.5,
                              dpo_batch_size=2, dpo_steps=2)  # fmt: skip
    variants = {"masked": {"mask_weight_outside": 0.0}, "plain": {"mask_weight_outside": 1.0}}
    results = run_seed_sweep(config, tmp_path / "seeds", variants=variants, seeds=(0, 1), dev_prompts=4,
                             log=lambda _: None)  # fmt: skip
    assert [row["variant"] for row in results["rows"]] == ["masked", "plain"]
    for row in results["rows"]:
        gains = [entry["gain"] for entry in row["by_seed"].values()]
        assert list(row["by_seed"]) == ["0", "1"] and row["mean_gain"] == pytest.approx(sum(gains) / 2, abs=1e-4)
    assert results["best"] == max(range(2), key=lambda i: results["rows"][i]["mean_gain"])
    assert (tmp_path / "seeds" / "seed_sweep.md").read_text().count("\n") == 4


@pytest.mark.slow
def test_online_sweep_trains_each_online_method_for_each_step_count_and_compares_them_on_dev(tmp_path):
    from trl_rpo.shapes.sweep import ONLINE_METHODS, run_online_sweep

    config = DemoConfig.quick(eval_seeds=(0,), num_inference_steps=4, refine_strength=0.0, tailorpo_batch_size=2,
                              tailorpo_num_inference_steps=4)  # fmt: skip
    results = run_online_sweep(config, tmp_path / "online", steps=(1, 2), dev_prompts=4, log=lambda _: None)
    assert [(row["method"], row["steps"]) for row in results["rows"]] == [
        (method, steps) for steps in (1, 2) for method in ONLINE_METHODS
    ]
    for row in results["rows"]:
        assert row["optimizer_steps"] == row["steps"]
        assert row["gain_ci"][0] <= row["gain"] <= row["gain_ci"][1] and 0 <= row["rollout_last"] <= 1
        assert (tmp_path / "online" / "runs" / f"{row['method']}-{row['steps']}").is_dir()
    assert [(c["a"], c["b"], c["steps"]) for c in results["comparisons"]] == [
        ("tailorpo", "tailorpo_final", 1), ("tailorpo", "grpo", 1), ("tailorpo", "tailorpo_final", 2),
        ("tailorpo", "grpo", 2),
    ]  # fmt: skip
    table = (tmp_path / "online" / "online_sweep.md").read_text()
    assert table.count("| tailorpo vs grpo |") == 2 and table.count("| grpo |") == 2


@pytest.mark.slow
def test_online_recipe_sweep_scores_a_cfg_free_recipe_at_its_guidance_against_both_bases(tmp_path):
    import dataclasses

    import numpy as np

    from trl_rpo.evaluation import load_trained_pipeline
    from trl_rpo.shapes import sweep
    from trl_rpo.shapes.model import load_pipeline
    from trl_rpo.shapes.stages import _Scorer

    config = DemoConfig.quick(guidance_scale=5.0, eval_seeds=(0,), num_inference_steps=4, refine_strength=0.0,
                              nft_steps=1, tailorpo_num_inference_steps=4)  # fmt: skip
    recipes = {"nft": {"cfg-free": {"online_guidance_scale": 1.0}}}
    results = sweep.run_online_recipe_sweep(config, tmp_path / "rec", recipes=recipes, seeds=(0, 1), dev_prompts=4,
                                            log=lambda _: None, train_prompts=3)  # fmt: skip
    (row,) = results["rows"]
    base_at_1 = results["base_at_guidance"]["base@1"]["scores"]
    for entry in row["by_seed"].values():
        # the primary gain is against the base as the demo samples it (guidance 5)...
        assert entry["gain"] == pytest.approx(np.mean(entry["dev_scores"]) - np.mean(results["base_dev_scores"]),
                                              abs=1e-4)  # fmt: skip
        # ...and the second against the base sampled like the run, CFG-free
        same = entry["same_guidance"]
        assert same["guidance_scale"] == 1.0
        assert same["dev_gain"] == pytest.approx(np.mean(entry["dev_scores"]) - np.mean(base_at_1["dev"]), abs=1e-4)
        assert same["train_gain"] == pytest.approx(np.mean(entry["train_scores"]) - np.mean(base_at_1["train"]),
                                                   abs=1e-4)  # fmt: skip
    # The run's images were sampled at guidance 1: its saved model, rendered CFG-free, gives back its scores.
    scorer = _Scorer(dataclasses.replace(config, guidance_scale=1.0), {"dev": (results["dev_prompts"], (0,))})
    scorer("base", load_pipeline(config.model))
    scorer("run", load_trained_pipeline(tmp_path / "rec" / "runs" / "nft-0-seed0", base=load_pipeline(config.model)))
    assert scorer.scores["run"]["dev"] == row["by_seed"]["0"]["dev_scores"]
    assert scorer.scores["base"]["dev"] == base_at_1["dev"]
    same_gains = [e["same_guidance"]["dev_gain"] for e in row["by_seed"].values()]
    assert row["same_guidance"]["same_gain"] == pytest.approx(np.mean(same_gains), abs=1e-4)
    assert "against the base at guidance 1: dev" in (tmp_path / "rec" / "online_recipes.md").read_text()


@pytest.mark.slow
def test_online_recipe_sweep_trains_every_recipe_with_every_seed_and_chooses_by_the_lowest_seed_gain(tmp_path):
    from trl_rpo.shapes import sweep

    config = DemoConfig.quick(eval_seeds=(0,), num_inference_steps=4, refine_strength=0.0, tailorpo_steps=1,
                              nft_steps=1, tailorpo_batch_size=2, tailorpo_num_inference_steps=4)  # fmt: skip
    recipes = {"nft": {"a": {}, "b": {"nft_learning_rate": 1e-2, "nft_batch_size": 8,
                                      "nft_reward": "soft_alignment_score"}}, "grpo": {"only": {}}}  # fmt: skip
    results = sweep.run_online_recipe_sweep(config, tmp_path / "rec", recipes=recipes, seeds=(0, 1), dev_prompts=4,
                                            log=lambda _: None, train_prompts=3, dev2_prompts=2)  # fmt: skip
    assert [(r["method"], r["recipe"]) for r in results["rows"]] == [("nft", "a"), ("nft", "b"), ("grpo", "only")]
    for row in results["rows"]:
        gains = [e["gain"] for e in row["by_seed"].values()]
        assert list(row["by_seed"]) == ["0", "1"] and row["min_gain"] == min(gains)
        assert row["rollout_rise"] == sweep.rollout_rise(row["by_seed"].values())["rollout_rise"]
    # A run on the graded reward logs both: the reward it optimizes and its rollouts' alignment_score.
    for name, row in zip("ab", results["rows"][:2]):
        entry = row["by_seed"]["0"]
        assert {"rollout_first", "rollout_last", "reward_first", "reward_last", "train_gain"} <= set(entry)
        assert (entry["reward_first"] == entry["rollout_first"]) == (name == "a")
    nft_rows = results["rows"][:2]
    assert results["chosen"]["nft"] == max(nft_rows, key=lambda r: r["min_gain"])["recipe"]
    assert results["chosen"]["grpo"] == "only"
    # Every image's dev score is kept, and each row's gain over all its seeds is the study's statistic of them.
    import numpy as np

    from trl_rpo.statistics import hierarchical_bootstrap

    row = results["rows"][0]
    runs = [entry["dev_scores"] for entry in row["by_seed"].values()]
    assert np.asarray(runs).shape == (2, 1, 6) and np.asarray(results["base_dev_scores"]).shape == (1, 6)
    # the dev set is dev's prompts, then dev2's (the old test split), and no other split's
    assert results["dev_prompts"] == prompts(4, seed=0, split="dev") + prompts(2, seed=0, split="dev2")
    pooled = hierarchical_bootstrap(runs, [results["base_dev_scores"]] * 2, seed=0)
    assert row["pooled_gain"] == pytest.approx(pooled.gain, abs=1e-4)
    assert row["pooled_gain"] == pytest.approx(row["mean_gain"], abs=1e-4)  # every seed scores the same images
    assert row["pooled_ci"] == pytest.approx(pooled.ci, abs=1e-4)
    # ...and so is every train-prompt image's, with the gain over all seeds on the train prompts
    train_runs = [entry["train_scores"] for entry in row["by_seed"].values()]
    pooled_train = hierarchical_bootstrap(train_runs, [results["base_train_scores"]] * 2, seed=0)
    assert np.asarray(train_runs).shape == (2, 1, 3) and len(results["train_prompts"]) == 3
    assert row["pooled_train_gain"] == pytest.approx(pooled_train.gain, abs=1e-4)
    assert row["pooled_train_ci"] == pytest.approx(pooled_train.ci, abs=1e-4)
    assert row["pooled_train_gain"] == pytest.approx(np.mean([e["train_gain"] for e in row["by_seed"].values()]),
                                                     abs=1e-4)  # fmt: skip
    runs = sorted(p.name for p in (tmp_path / "rec" / "runs").iterdir())
    assert runs == ["grpo-0-seed0", "grpo-0-seed1", "nft-0-seed0", "nft-0-seed1", "nft-1-seed0", "nft-1-seed1"]
    assert "**(chosen)**" in (tmp_path / "rec" / "online_recipes.md").read_text()
    with pytest.raises(ValueError, match="unknown online methods"):
        sweep.run_online_recipe_sweep(config, tmp_path / "bad", recipes={"ppo": {"x": {}}})
    # Scored again at the sweep's own steps, the saved models give back the sweep's train scores and gains.
    again = sweep.rescore_train_prompts(tmp_path / "rec", log=lambda _: None)
    for row, rescored in zip(results["rows"], again["rows"]):
        for seed, entry in row["by_seed"].items():
            assert rescored["by_seed"][seed]["train_scores"] == entry["train_scores"], (row["recipe"], seed)
        assert rescored["pooled_train_gain"] == row["pooled_train_gain"]


def test_second_online_round_pits_each_demo_recipe_against_twice_its_images_per_step_on_seeds_the_study_never_uses():
    from trl_rpo.shapes.study import StudyConfig
    from trl_rpo.shapes.sweep import ONLINE_BATCH_RECIPES, ONLINE_BATCH_SEEDS

    # Twice the demo's values when the round was declared (TailorPO 4 prompts, GRPO and NFT 16 images per step);
    # TailorPO's doubled recipe won (the third round then doubled it again), so its first recipe pins the old value.
    doubled = {"tailorpo": {"tailorpo_batch_size": 8}, "grpo": {"grpo_batch_size": 32}, "nft": {"nft_batch_size": 32}}
    assert set(ONLINE_BATCH_RECIPES) == set(doubled)
    for method, recipes in ONLINE_BATCH_RECIPES.items():
        (first, demo_overrides), (_, overrides) = list(recipes.items())
        assert first.startswith("demo:") and overrides == doubled[method]
        assert demo_overrides in ({}, {"tailorpo_batch_size": 4})
    assert not set(ONLINE_BATCH_SEEDS) & set(StudyConfig().training_seeds)


def test_fifth_online_round_changes_only_the_reward_of_every_online_method_on_fresh_seeds():
    from trl_rpo.shapes.study import StudyConfig
    from trl_rpo.shapes.sweep import (
        ONLINE_BATCH_SEEDS,
        ONLINE_REWARD_RECIPES,
        ONLINE_REWARD_SEEDS,
        TAILORPO_BATCH_SEEDS,  # fmt: skip
        TAILORPO_WINDOW_SEEDS,
    )

    assert set(ONLINE_REWARD_RECIPES) == {"tailorpo", "grpo", "nft"}
    graded = "soft_alignment_score"
    assert list(ONLINE_REWARD_RECIPES["tailorpo"].values()) == [
        {"tailorpo_reward": "alignment_score", "tailorpo_window_start": 0.0},
        {"tailorpo_reward": graded, "tailorpo_window_start": 0.0},
        # the graded reward, paired only where its step-wise ranking agrees with the outcome
        {"tailorpo_reward": graded, "tailorpo_window_start": 0.6},
    ]
    for method in ("grpo", "nft"):
        reward = f"{method}_reward"
        assert list(ONLINE_REWARD_RECIPES[method].values()) == [{reward: "alignment_score"}, {reward: graded}]
    assert all(list(recipes)[0].startswith("demo:") for recipes in ONLINE_REWARD_RECIPES.values())
    used = {*StudyConfig().training_seeds, *ONLINE_BATCH_SEEDS, *TAILORPO_BATCH_SEEDS, *TAILORPO_WINDOW_SEEDS, 0, 1, 2}
    assert len(ONLINE_REWARD_SEEDS) == 3 and not set(ONLINE_REWARD_SEEDS) & used


def test_sixth_online_round_only_lengthens_training_on_fresh_seeds():
    from trl_rpo.shapes.study import StudyConfig
    from trl_rpo.shapes.sweep import (
        ONLINE_BATCH_SEEDS,
        ONLINE_REWARD_SEEDS,
        ONLINE_STEPS_RECIPES,
        ONLINE_STEPS_SEEDS,  # fmt: skip
        TAILORPO_BATCH_SEEDS,
        TAILORPO_WINDOW_SEEDS,
    )

    assert list(ONLINE_STEPS_RECIPES["nft"].values()) == [{"nft_steps": 40}, {"nft_steps": 80}, {"nft_steps": 120}]
    assert list(ONLINE_STEPS_RECIPES["tailorpo"].values()) == [{}, {"tailorpo_steps": 80}]
    # The demo's 15 minutes held NFT's chosen 120 steps (the ninth round's budget since); TailorPO's chosen 80 (both
    # its rows) would not fit beside it.
    assert DemoConfig().tailorpo_steps == 40
    used = {*StudyConfig().training_seeds, *ONLINE_BATCH_SEEDS, *TAILORPO_BATCH_SEEDS, *TAILORPO_WINDOW_SEEDS,
            *ONLINE_REWARD_SEEDS, 0, 1, 2}  # fmt: skip
    assert len(ONLINE_STEPS_SEEDS) == 3 and not set(ONLINE_STEPS_SEEDS) & used


def test_rounds_declared_before_the_fifth_replay_with_the_then_defaults_of_fields_added_since():
    from trl_rpo.shapes.sweep import TAILORPO_WINDOW_RECIPES, as_declared

    replay = as_declared({**TAILORPO_WINDOW_RECIPES, "grpo": {"demo": {}}}, 4)
    demo, window = replay["tailorpo"].values()
    assert demo == {"tailorpo_reward": "alignment_score", "tailorpo_window_start": 0.0}
    assert window["tailorpo_window_start"] == 0.4 and window["tailorpo_reward"] == "alignment_score"
    assert replay["grpo"]["demo"] == {"grpo_reward": "alignment_score"}


def test_the_demo_uses_the_fifth_online_rounds_choices():
    config = DemoConfig()
    assert (config.tailorpo_reward, config.tailorpo_window_start) == ("soft_alignment_score", 0.6)
    assert (config.grpo_reward, config.nft_reward) == ("soft_alignment_score", "alignment_score")


def test_third_online_round_pits_tailorpos_demo_recipe_against_twice_its_prompts_on_fresh_seeds():
    from trl_rpo.shapes.study import StudyConfig
    from trl_rpo.shapes.sweep import ONLINE_BATCH_SEEDS, TAILORPO_BATCH_RECIPES, TAILORPO_BATCH_SEEDS

    assert list(TAILORPO_BATCH_RECIPES) == ["tailorpo"]
    (first, demo), *others = TAILORPO_BATCH_RECIPES["tailorpo"].items()
    assert first.startswith("demo:")
    assert demo == {"tailorpo_batch_size": 8, "tailorpo_learning_rate": 5e-4}
    assert [o["tailorpo_batch_size"] for _, o in others] == [16, 16]
    assert [o["tailorpo_learning_rate"] for _, o in others] == [5e-4, 1e-3]
    assert not set(TAILORPO_BATCH_SEEDS) & (set(StudyConfig().training_seeds) | set(ONLINE_BATCH_SEEDS))
    # the round's rule chose 16 prompts per step at lr 5e-4 (docs/shapes.md): the demo's setting since
    assert (DemoConfig().tailorpo_batch_size, DemoConfig().tailorpo_learning_rate) == (16, 5e-4)


def _two_pairs(with_masks: bool = False):
    """Two flat-colour preference pairs at the shapes model's 32 px, with full edit masks if asked."""
    from datasets import Dataset

    colour = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green", "white")]
    rows = {"prompt": ["a red circle", "a blue square"], "chosen": colour[:2], "rejected": colour[2:]}
    if with_masks:
        rows["mask"] = [Image.new("L", (32, 32), 255)] * 2
    return Dataset.from_dict(rows)


@pytest.mark.parametrize("with_masks", [True, False])
def test_train_dpo_weights_the_loss_by_edit_masks_only_when_the_pairs_carry_them(tmp_path, with_masks):
    from trl_rpo.shapes.stages import train_dpo

    config = DemoConfig.quick(dpo_steps=1, dpo_batch_size=2, mask_weight_outside=0.0)
    trainer = train_dpo(config, _two_pairs(with_masks), tmp_path, "run")
    assert trainer.args.mask_weight_outside == (0.0 if with_masks else 1.0)
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("sft_weight", [0.0, 250.0])
def test_train_dpo_adds_the_chosen_images_denoising_loss_only_with_a_positive_sft_weight(tmp_path, sft_weight):
    from trl_rpo.shapes.stages import train_dpo

    config = DemoConfig.quick(dpo_steps=1, dpo_batch_size=2, dpo_sft_weight=sft_weight)
    trainer = train_dpo(config, _two_pairs(), tmp_path, "run")
    if sft_weight:
        assert trainer.args.loss_type == ["sigmoid", "sft"] and trainer.args.loss_weights == [1.0, sft_weight]
    else:
        assert trainer.args.loss_type == ["sigmoid"] and trainer.args.loss_weights is None


def test_train_dpo_passes_the_timestep_bias_to_the_trainer(tmp_path):
    from trl_rpo.shapes.stages import train_dpo

    config = DemoConfig.quick(dpo_steps=1, dpo_batch_size=2, dpo_timestep_bias_strategy="later",
                              dpo_timestep_bias_portion=0.5, dpo_timestep_bias_multiplier=0.0)  # fmt: skip
    trainer = train_dpo(config, _two_pairs(), tmp_path, "run")
    assert trainer._timestep_weights[500:].sum() == 0 and trainer._timestep_weights[:500].sum() == pytest.approx(1)


def test_scorer_folds_a_trained_lora_into_the_weights_and_scores_as_the_unfused_model(tmp_path):
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from trl_rpo.evaluation import evaluate_pipeline
    from trl_rpo.families import detect_family
    from trl_rpo.shapes.evaluate import alignment_score
    from trl_rpo.shapes.model import load_pipeline
    from trl_rpo.shapes.stages import _lora_config, _Scorer

    config = DemoConfig.quick(eval_seeds=(0,), num_inference_steps=4, refine_strength=0.0)
    test = prompts(8, 0, "final")
    pipeline = load_pipeline()
    pipeline.set_progress_bar_config(disable=True)
    lora = _lora_config(4)
    lora.target_modules = set(detect_family(pipeline).lora_targets)  # what the trainers fill in
    pipeline.unet.add_adapter(lora)
    torch.manual_seed(0)
    for name, parameter in pipeline.unet.named_parameters():
        if "lora_B" in name:  # a LoRA that changes the images, as a trained one does
            torch.nn.init.normal_(parameter, std=0.05)
    unfused = evaluate_pipeline(pipeline, test, alignment_score, seeds=(0,), num_inference_steps=4,
                                guidance_scale=config.guidance_scale, per_image_noise=True)  # fmt: skip
    scorer = _Scorer(config, {"final": (test, (0,))})
    scorer("base", load_pipeline())
    scorer("lora", pipeline)
    layers = [m for m in pipeline.unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and all(layer.merged for layer in layers)
    fused, before = scorer.scores["lora"]["final"][0], unfused.scores["alignment_score"][0]
    # Folding rounds differently (pixels within a level or so), so at most one image in eight may score otherwise.
    assert sum(abs(a - b) > 1e-6 for a, b in zip(fused, before)) <= 1
    assert scorer.scores["lora"]["final"] != scorer.scores["base"]["final"]  # the LoRA was not dropped


def test_edit_survival_scores_each_stage_of_the_same_edits():
    from trl_rpo.shapes.sweep import edit_survival

    config = DemoConfig.quick(num_inference_steps=5, refine_strength=0.2)
    result = edit_survival(config, num_prompts=16, refine_strengths=(0.2,), log=lambda _: None)
    assert result["images"] == 16 and 0 < result["edited"] <= 16
    assert list(result["stages"]) == ["edit", "edit after VAE round trip", "edit refined at 0.2"]
    for stage in result["stages"].values():
        assert 0.0 <= stage["alignment"] <= 1.0 and 0 <= stage["better_than_original"] <= result["edited"]
    # The pixel edit fixes what the critic asked for, so it beats its original more often than not.
    assert result["stages"]["edit"]["better_than_original"] > result["edited"] / 2


def test_both_pair_sets_spend_the_same_image_budget_on_train_prompts(tmp_path):
    from trl_rpo.shapes.model import load_pipeline
    from trl_rpo.shapes.stages import build_pair_sets, pair_prompts

    config = DemoConfig.quick(image_budget=12, num_inference_steps=4, refine_strength=0.5)
    built = build_pair_sets(config, load_pipeline(), tmp_path)
    train = pair_prompts(config)
    assert built["images"] == built["reward_counts"]["images"] == built["builder"].stats["images"] == 12
    assert set(built["rpo_pairs"]["prompt"]) <= set(train) and set(train) <= set(prompts(720, 0, "train"))
    assert set(built["reward_pairs"]["prompt"]) <= set(train[:6])
    assert (tmp_path / "rpo_pairs" / "manifest.json").is_file() and (tmp_path / "reward_pairs").is_dir()


def test_sweeps_refuse_a_folder_that_holds_files_and_bad_arguments_create_nothing(tmp_path):
    from trl_rpo.shapes.sweep import run_dev_sweep, run_online_sweep, run_pair_sweep, run_seed_sweep

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sweep.json").write_text("{}")
    for sweep in (run_dev_sweep, run_pair_sweep, run_seed_sweep, run_online_sweep):
        with pytest.raises(FileExistsError, match="not empty"):
            sweep(DemoConfig.quick(), tmp_path / "old", log=lambda _: None)
    assert (tmp_path / "old" / "sweep.json").read_text() == "{}"
    with pytest.raises(ValueError, match="at least one variant"):
        run_seed_sweep(DemoConfig.quick(), tmp_path / "new", variants={})
    with pytest.raises(ValueError, match="positive step counts"):
        run_online_sweep(DemoConfig.quick(), tmp_path / "new", steps=(40, 0))
    assert not (tmp_path / "new").exists()


def test_step_reward_check_counts_agreement_between_step_wise_and_final_rankings(tmp_path):
    from trl_rpo.shapes.step_reward_check import run_step_reward_check, wilson_interval

    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(50, 100)
    assert low < 0.5 < high and high - low == pytest.approx(0.19, abs=0.01)
    config = DemoConfig.quick(tailorpo_num_inference_steps=4)
    results = run_step_reward_check(config, tmp_path / "check", num_prompts=3, continuations=2, log=lambda m: None)
    assert [row["step"] for row in results["rows"]] == list(range(len(results["rows"]))) and results["rows"]
    for row in results["rows"]:
        assert row["pairs"] == 3 and 0 <= row["agree"] <= row["decided"] <= 3
        assert 0.0 <= row["step_ties"] <= 1.0 and 0.0 <= row["final_ties"] <= 1.0
        # The ODE lookahead and the outcomes' split halves (1 completion against 1) are scored on the same pairs.
        for prefix in ("lookahead_", "split_half_"):
            assert 0 <= row[f"{prefix}agree"] <= row[f"{prefix}decided"] <= 3
    assert {"lookahead_agreement", "split_half_agreement"} <= set(results)
    assert (tmp_path / "check" / "step_reward_check.md").read_text().startswith("| step |")
    with pytest.raises(FileExistsError):  # never over an earlier check
        run_step_reward_check(config, tmp_path / "check", num_prompts=3, continuations=2, log=lambda m: None)


def test_step_reward_agreement_counts_same_sign_gaps_among_pairs_neither_ties():
    import torch

    from trl_rpo.shapes.step_reward_check import _agreement

    found = _agreement(torch.tensor([0.5, -0.2, 0.1, 0.0, 0.3]), torch.tensor([0.1, 0.4, 0.2, 0.3, 0.0]), "x_")
    # Pairs 4 and 5 tie on one side; of the other three, the first and third agree in sign.
    assert (found["x_agree"], found["x_decided"]) == (2, 3) and found["x_agreement"] == pytest.approx(2 / 3)
    assert _agreement(torch.zeros(2), torch.ones(2), "")["agreement"] is None


def test_fourth_online_round_pits_tailorpos_five_random_steps_against_the_steps_its_rewards_inform():
    from trl_rpo.pairing import select_timestep_indices
    from trl_rpo.shapes.study import StudyConfig
    from trl_rpo.shapes.sweep import TAILORPO_BATCH_SEEDS, TAILORPO_WINDOW_RECIPES, TAILORPO_WINDOW_SEEDS

    (first, demo), (_, window) = TAILORPO_WINDOW_RECIPES["tailorpo"].items()
    assert first.startswith("demo:") and demo == {}
    steps = DemoConfig().tailorpo_num_inference_steps
    span = (window["tailorpo_window_start"], window["tailorpo_window_end"])
    assert select_timestep_indices(steps, "window", window=span) == [4, 5, 6, 7]
    assert not set(TAILORPO_WINDOW_SEEDS) & (set(StudyConfig().training_seeds) | set(TAILORPO_BATCH_SEEDS))


def test_the_demo_scores_each_prompt_from_its_own_noise():
    import numpy as np

    from trl_rpo.shapes.model import load_pipeline
    from trl_rpo.shapes.stages import _Scorer

    prompt = prompts(1, 0, "final")[0]
    images = {}
    for per_image_noise in (True, False):
        config = DemoConfig.quick(num_inference_steps=3, refine_strength=0.0, per_image_noise=per_image_noise)
        scorer = _Scorer(config, {"final": ([prompt, prompt], (0,))})
        scorer("base", load_pipeline())
        images[per_image_noise] = [np.asarray(image) for image in scorer.images["base"]]
    # The same prompt twice: two draws with per-image noise (the default), one image twice with a noise per seed.
    assert DemoConfig().per_image_noise
    assert not np.array_equal(*images[True])
    assert np.array_equal(*images[False])


def test_a_cfg_free_online_row_is_scored_at_its_own_guidance_and_the_others_at_the_demos():
    from trl_rpo.shapes.stages import ONLINE_ROWS, evaluation_guidance

    assert set(ONLINE_ROWS) == set(METHODS) - {"base"} - {m for m in METHODS if m.startswith("dpo_")}
    config = DemoConfig(online_guidance_scale=1.0)
    assert {m: evaluation_guidance(config, m) for m in METHODS} == {m: 1.0 if m in ONLINE_ROWS else None
                                                                    for m in METHODS}  # fmt: skip
    assert all(evaluation_guidance(DemoConfig(), m) is None for m in METHODS)


@pytest.mark.parametrize("online_guidance_scale", [None, 5.0, 1.0])
def test_the_demo_compares_each_online_row_with_the_base_sampled_at_its_guidance(online_guidance_scale):
    import numpy as np

    from trl_rpo.shapes.demo import _report
    from trl_rpo.shapes.stages import ONLINE_ROWS, _Scorer, same_guidance_base

    config = DemoConfig.quick(guidance_scale=5.0, online_guidance_scale=online_guidance_scale)
    scorer = _Scorer(config, {"final": (prompts(6, 0, "final"), (0, 1))})  # scores set by hand, nothing rendered
    rng = np.random.default_rng(0)
    same = same_guidance_base(config)
    for method in (*METHODS, *([same] if same else [])):
        scorer.scores[method] = {"final": (rng.integers(0, 7, size=(2, 6)) / 6).tolist()}  # [seed][prompt]
    rows = [{"method": m, "alignment": scorer.mean(m, "final"), "pairs": 10, "seconds": 60.0} for m in METHODS]
    results = _report(config, scorer, rows)
    against = {c["a"]: c for c in results["comparisons"] if c["b"].startswith("base@")}
    if online_guidance_scale in (None, 5.0):  # sampled as the base already is: nothing to add
        assert same is None and against == {} and results["base_at_guidance"] == {}
        return
    assert same == "base@1" and set(against) == set(ONLINE_ROWS)
    for method, comparison in against.items():
        difference = np.asarray(scorer.scores[method]["final"]) - np.asarray(scorer.scores[same]["final"])
        assert comparison["gain"] == pytest.approx(difference.mean(), abs=1e-4), method
    assert results["base_at_guidance"] == {"base@1": {"final": round(scorer.mean(same, "final"), 4)}}


def test_the_scorer_samples_a_model_at_the_guidance_it_is_given_and_the_base_only_at_the_configs():
    import numpy as np

    from trl_rpo.shapes.model import load_pipeline
    from trl_rpo.shapes.stages import _Scorer

    config = DemoConfig.quick(num_inference_steps=3, refine_strength=0.0, guidance_scale=5.0)
    scorer = _Scorer(config, {"final": (prompts(2, 0, "final"), (0,))})
    scorer("base", load_pipeline())
    for name, guidance in (("same", None), ("guided", config.guidance_scale), ("cfg-free", 1.0)):
        scorer(name, load_pipeline(), guidance)
    images = {name: [np.asarray(image) for image in scorer.images[name]] for name in scorer.images}
    assert all(np.array_equal(a, b) for a, b in zip(images["base"], images["same"]))
    assert all(np.array_equal(a, b) for a, b in zip(images["base"], images["guided"]))
    assert not np.array_equal(images["base"][0], images["cfg-free"][0])
    with pytest.raises(ValueError, match="base@1"):
        scorer("base", load_pipeline(), 1.0)


def test_every_online_round_trains_with_seeds_no_other_round_or_study_used():
    import importlib

    importlib.import_module("trl_rpo.shapes.sweep")  # online_sweep needs sweep imported first
    online_sweep = importlib.import_module("trl_rpo.shapes.online_sweep")
    rounds = {name: getattr(online_sweep, name) for name in online_sweep.__all__ if name.endswith("_SEEDS")}
    rounds["ONLINE_RECIPES (first round)"] = (0, 1, 2)
    # the studies on final: seeds 0-4, and 5-9 for the fourth study the ninth round declared
    taken: dict[int, str] = {seed: "a study" for seed in range(10) if seed > 2}
    for name, seeds in rounds.items():
        assert len(seeds) >= 3, name
        for seed in seeds:
            assert seed not in taken, f"{name} reuses seed {seed} of {taken[seed]}"
            taken[seed] = name


def test_ninth_online_round_trades_nfts_trained_timesteps_for_more_rollouts_in_the_demos_seconds():
    from trl_rpo.shapes.sweep import NFT_ROLLOUT_RECIPES

    demo, half, three = NFT_ROLLOUT_RECIPES["nft"].values()
    assert demo == {}  # the demo's recipe when the round was declared: 120 steps, all timesteps (as_declared)
    # seconds per step measured on 2 cores (docs/shapes.md): 1.44 at all timesteps, 1.04 at half, 0.88 at three
    for recipe, seconds_per_step in ((half, 1.04), (three, 0.88)):
        assert set(recipe) == {"nft_steps", "nft_timestep_fraction"}
        assert recipe["nft_steps"] * seconds_per_step == pytest.approx(120 * 1.44, rel=0.05)


def test_the_demos_nft_recipe_reaches_the_trainer(tmp_path, monkeypatch):
    from trl_rpo.shapes import stages

    monkeypatch.setattr(stages, "_train_and_save", lambda trainer: trainer)  # build it, do not train
    config = DemoConfig.quick(nft_timestep_fraction=0.3, nft_num_iterations=2, nft_old_policy_decay=0.5,
                              nft_learning_rate=1e-4)  # fmt: skip
    args = stages.train_nft(config, tmp_path).args
    assert (args.timestep_fraction, args.num_iterations, args.old_policy_decay) == (0.3, 2, 0.5)
    assert (args.learning_rate, args.max_steps, args.per_device_train_batch_size) == (1e-4, 4, 4)


def test_the_demos_nft_guided_loss_reaches_the_trainer(tmp_path, monkeypatch):
    from trl_rpo.shapes import stages

    monkeypatch.setattr(stages, "_train_and_save", lambda trainer: trainer)
    assert stages.train_nft(DemoConfig.quick(nft_guided_loss=True), tmp_path).args.guided_loss
    assert not stages.train_nft(DemoConfig.quick(), tmp_path / "b").args.guided_loss


@pytest.mark.parametrize("online_guidance_scale", [None, 1.0])
def test_online_rows_roll_out_at_online_guidance_scale_and_the_rest_at_guidance_scale(
    tmp_path, monkeypatch, online_guidance_scale
):
    from trl_rpo.shapes import stages

    monkeypatch.setattr(stages, "_train_and_save", lambda trainer: trainer)
    config = DemoConfig.quick(guidance_scale=4.0, online_guidance_scale=online_guidance_scale)
    expected = 4.0 if online_guidance_scale is None else online_guidance_scale
    assert stages.online_guidance(config) == expected
    for train in (stages.train_tailorpo, stages.train_grpo, stages.train_nft):
        assert train(config, tmp_path, "run").args.guidance_scale == expected, train.__name__
    assert stages._sampling(config)["guidance_scale"] == 4.0  # evaluation and pair building keep the demo's


def test_demo_config_rejects_a_non_positive_online_guidance_scale():
    with pytest.raises(ValueError, match="online_guidance_scale"):
        DemoConfig(online_guidance_scale=0.0)


@pytest.mark.parametrize("split", ["train", "dev2", "dev2_a"])
def test_online_rows_roll_out_on_every_scene_of_their_prompt_split_and_no_other(tmp_path, monkeypatch, split):
    from trl_rpo.shapes import stages
    from trl_rpo.shapes.world import SPLIT_SIZES, all_scenes, prompt_text

    monkeypatch.setattr(stages, "_train_and_save", lambda trainer: trainer)
    config = DemoConfig.quick(online_prompt_split=split)
    expected = sorted(prompt_text(scene) for scene in all_scenes(split))
    for train in (stages.train_tailorpo, stages.train_grpo, stages.train_nft):
        rollout_prompts = train(config, tmp_path, "run").train_dataset["prompt"]
        assert sorted(rollout_prompts) == expected and len(rollout_prompts) == SPLIT_SIZES[split], train.__name__


@pytest.mark.parametrize("online_lora", [True, False])
def test_online_rows_train_a_lora_or_the_whole_unet_against_a_frozen_copy(tmp_path, monkeypatch, online_lora):
    from trl_rpo.shapes import stages

    monkeypatch.setattr(stages, "_train_and_save", lambda trainer: trainer)
    config = DemoConfig.quick(online_lora=online_lora)
    for train in (stages.train_tailorpo, stages.train_grpo, stages.train_nft):
        trainer = train(config, tmp_path, "run")
        unet = trainer.pipeline.unet
        trainable = {id(p) for p in unet.parameters() if p.requires_grad}
        if online_lora:
            assert trainer.peft_config.r == config.lora_r and 0 < len(trainable) < len(list(unet.parameters()))
        else:
            assert trainer.peft_config is None and trainable == {id(p) for p in unet.parameters()}, train.__name__
        if trainer.ref_model is not None:  # a frozen copy, never the trained weights
            assert trainer.ref_model is not unet and not any(p.requires_grad for p in trainer.ref_model.parameters())
        elif not online_lora:
            assert not trainer.needs_reference, train.__name__


def test_nfts_own_operating_point_overrides_the_shared_online_fields_for_nft_alone(tmp_path, monkeypatch):
    from trl_rpo.shapes import stages
    from trl_rpo.shapes.world import all_scenes, prompt_text

    monkeypatch.setattr(stages, "_train_and_save", lambda trainer: trainer)
    config = DemoConfig.quick(guidance_scale=5.0, online_lora=True, online_guidance_scale=None,
                              online_prompt_split="train", nft_lora=False, nft_guidance_scale=2.0,
                              nft_prompt_split="dev2")  # fmt: skip
    scenes = {split: {prompt_text(scene) for scene in all_scenes(split)} for split in ("train", "dev2")}
    nft = stages.train_nft(config, tmp_path, "nft")
    assert nft.peft_config is None and nft.args.guidance_scale == 2.0 and set(nft.train_dataset["prompt"]) == scenes[
        "dev2"]
    for train in (stages.train_tailorpo, stages.train_grpo):
        other = train(config, tmp_path, train.__name__)
        assert other.peft_config.r == config.lora_r and other.args.guidance_scale == 5.0, train.__name__
        assert set(other.train_dataset["prompt"]) == scenes["train"], train.__name__
    assert {m: stages.evaluation_guidance(config, m) for m in stages.ONLINE_ROWS} == {
        "tailorpo": None, "tailorpo_final": None, "grpo": None, "nft": 2.0}
    # None takes the shared field
    shared = DemoConfig.quick(online_lora=False, online_guidance_scale=3.0, online_prompt_split="dev2",
                              nft_lora=None, nft_guidance_scale=None, nft_prompt_split=None)  # fmt: skip
    assert stages.row_config(shared, "nft") == shared and stages.row_config(config, "grpo") is config


def test_the_demo_compares_nft_at_its_own_guidance_with_the_base_sampled_alike_and_no_other_row():
    import numpy as np

    from trl_rpo.shapes.demo import _report
    from trl_rpo.shapes.stages import _Scorer

    config = DemoConfig.quick(guidance_scale=5.0, online_guidance_scale=None, nft_guidance_scale=2.0)
    scorer = _Scorer(config, {"final": (prompts(6, 0, "final"), (0, 1))})  # scores set by hand, nothing rendered
    rng = np.random.default_rng(0)
    for method in (*METHODS, "base@2"):
        scorer.scores[method] = {"final": (rng.integers(0, 7, size=(2, 6)) / 6).tolist()}
    rows = [{"method": m, "alignment": scorer.mean(m, "final"), "pairs": 10, "seconds": 60.0} for m in METHODS]
    results = _report(config, scorer, rows)
    assert {c["a"]: c["b"] for c in results["comparisons"] if c["b"].startswith("base@")} == {"nft": "base@2"}
    assert list(results["base_at_guidance"]) == ["base@2"]


@pytest.mark.parametrize("bad", [{"nft_prompt_split": "dev"}, {"nft_prompt_split": "final"},
                                 {"nft_guidance_scale": 0.0}])  # fmt: skip
def test_demo_config_rejects_an_nft_operating_point_it_refuses_for_the_shared_fields(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DemoConfig(**bad)


def test_trl_rpo_demo_parses_nfts_own_operating_point():
    from trl import TrlParser

    from trl_rpo.cli import demo_arguments_class

    (args,) = TrlParser((demo_arguments_class(),)).parse_args_and_config(
        args=["--nft_lora", "false", "--nft_guidance_scale", "2", "--nft_prompt_split", "dev2"])
    assert (args.nft_lora, args.nft_guidance_scale, args.nft_prompt_split) == (False, 2.0, "dev2")


@pytest.mark.parametrize("split", ["dev", "final", "held_out", "test"])
def test_demo_config_rejects_online_rollouts_on_a_split_recipes_are_chosen_or_reported_on(split):
    with pytest.raises(ValueError, match="online_prompt_split"):
        DemoConfig(online_prompt_split=split)


def test_online_recipe_sweep_on_dev2_rollouts_refuses_to_score_dev2_as_dev(tmp_path):
    from trl_rpo.shapes import sweep

    config = DemoConfig.quick(online_prompt_split="dev2")
    with pytest.raises(ValueError, match="dev2_prompts must be 0"):
        sweep.run_online_recipe_sweep(config, tmp_path / "a", recipes={"nft": {"x": {}}}, dev2_prompts=2)
    for overrides in ({"online_prompt_split": "dev2"}, {"nft_prompt_split": "dev2"}):
        with pytest.raises(ValueError, match="would roll out on 'dev2'"):
            sweep.run_online_recipe_sweep(DemoConfig.quick(), tmp_path / "b", recipes={"nft": {"x": overrides}})
    with pytest.raises(ValueError, match="would roll out on 'dev2'"):  # NFT's own split, set on the config
        sweep.run_online_recipe_sweep(DemoConfig.quick(nft_prompt_split="dev2"), tmp_path / "b",
                                      recipes={"nft": {"x": {}}})  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything was written


@pytest.mark.slow
def test_online_recipe_sweep_on_dev2_rollouts_scores_its_rise_on_dev2_prompts_and_dev_on_dev_alone(tmp_path):
    from trl_rpo.shapes import sweep

    config = DemoConfig.quick(eval_seeds=(0,), num_inference_steps=4, refine_strength=0.0, nft_steps=1,
                              tailorpo_num_inference_steps=4, online_prompt_split="dev2")  # fmt: skip
    results = sweep.run_online_recipe_sweep(config, tmp_path / "rec", recipes={"nft": {"x": {}}}, seeds=(0,),
                                            dev_prompts=4, log=lambda _: None, train_prompts=3)  # fmt: skip
    assert results["train_prompts"] == prompts(3, seed=0, split="dev2")  # the prompts it rolls out on
    assert results["dev_prompts"] == prompts(4, seed=0, split="dev")
    assert results["config"]["online_prompt_split"] == "dev2"


@pytest.mark.slow
@pytest.mark.parametrize(("rollouts", "scored"), [("a", "b"), ("b", "a")])
def test_online_recipe_sweep_rolling_out_on_half_the_held_out_pairs_scores_dev_on_the_other_half(tmp_path, rollouts,
                                                                                                 scored):
    from trl_rpo.shapes import sweep
    from trl_rpo.shapes.world import HELD_OUT_HALVES, parse_prompt

    config = DemoConfig.quick(eval_seeds=(0,), num_inference_steps=4, refine_strength=0.0, nft_steps=1,
                              tailorpo_num_inference_steps=4, online_prompt_split=f"dev2_{rollouts}")  # fmt: skip
    results = sweep.run_online_recipe_sweep(config, tmp_path / "rec", recipes={"nft": {"x": {}}}, seeds=(0,),
                                            dev_prompts=3, dev2_prompts=2, log=lambda _: None,
                                            train_prompts=3)  # fmt: skip
    assert results["train_prompts"] == prompts(3, seed=0, split=f"dev2_{rollouts}")  # the prompts it rolls out on
    assert results["dev_prompts"] == prompts(3, 0, f"dev_{scored}") + prompts(2, 0, f"dev2_{scored}")
    pairs = {(scene.shape, scene.color) for scene in map(parse_prompt, results["dev_prompts"])}
    assert pairs <= HELD_OUT_HALVES[scored] and pairs.isdisjoint(HELD_OUT_HALVES[rollouts])


def test_online_recipe_sweep_refuses_more_dev_prompts_than_the_scored_half_holds(tmp_path):
    from trl_rpo.shapes import sweep
    from trl_rpo.shapes.world import SPLIT_SIZES

    with pytest.raises(ValueError, match=f"dev_b holds {SPLIT_SIZES['dev_b']} scenes"):
        sweep.run_online_recipe_sweep(DemoConfig.quick(online_prompt_split="dev2_a"), tmp_path / "a",
                                      recipes={"nft": {"x": {}}}, dev_prompts=SPLIT_SIZES["dev_b"] + 1)  # fmt: skip
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("nft_timestep_fraction", 0.0), ("nft_timestep_fraction", 1.5), ("nft_num_iterations", 0),
     ("nft_old_policy_decay", 1.0)],
)  # fmt: skip
def test_demo_config_rejects_an_nft_setting_the_trainer_would_refuse(field, value):
    with pytest.raises(ValueError, match=field):
        DemoConfig(**{field: value})


def test_every_online_round_replays_with_the_nft_budget_it_ran_with():
    rounds = _dev_sweep_rounds()
    ran_with = {"online-recipes": (40, 1.0), "online-batch": (40, 1.0), "online-reward": (40, 1.0),
                "online-lr": (120, 1.0)}  # fmt: skip
    for stage, budget in ran_with.items():
        for recipe in rounds[stage][0]["nft"].values():
            assert (recipe["nft_steps"], recipe["nft_timestep_fraction"]) == budget, stage
    steps = [(r["nft_steps"], r["nft_timestep_fraction"]) for r in rounds["online-steps"][0]["nft"].values()]
    assert steps == [(40, 1.0), (80, 1.0), (120, 1.0)]
    demo, *_ = rounds["online-nft-rollouts"][0]["nft"].values()
    assert demo == {"nft_steps": 120, "nft_timestep_fraction": 1.0}
    # the tenth round runs the demo's recipe, which the ninth round chose
    (confirm,) = rounds["online-nft-confirm"][0]["nft"].values()
    assert confirm == {} and (DemoConfig().nft_steps, DemoConfig().nft_timestep_fraction) == (165, 0.5)
    assert rounds["online-nft-confirm"][1] == (900, 901, 902, 903, 904)


# Every study file declared before the twelfth study, and every dev_sweep.py stage, runs at the demo's guidance and
# Diffusion-DPO recipes when it was declared, pinned so that a replay does not follow the demo's defaults.
_PINNED = {"guidance_scale": 5.0, "dpo_learning_rate": 1e-3, "dpo_steps": 300,
           "reward_pairs_recipe": "lr=2e-3 beta=5000 steps=150 t=all"}  # fmt: skip


def test_every_study_options_file_sets_its_guidance_the_earlier_ones_the_demos_5_and_its_recipes_then():
    import yaml

    files = sorted(SHAPES_EXAMPLES.glob("study*.yaml"))
    assert len(files) >= 11
    for path in files:
        options = yaml.safe_load(path.read_text())
        if path.name == "study_dpo_guidance.yaml":  # the twelfth: the third arm sweep's choices (tested below)
            assert options["guidance_scale"] == 1.0
            continue
        assert {k: options[k] for k in _PINNED} == _PINNED, path.name
    assert {k: getattr(DemoConfig(), k) for k in _PINNED} != _PINNED  # the demo has moved on: the pins matter


def test_every_dev_sweep_stage_builds_its_config_at_the_pinned_defaults_whatever_the_demos(monkeypatch):
    import dataclasses
    import runpy

    from trl_rpo.shapes import demo

    source = (SHAPES_EXAMPLES / "dev_sweep.py").read_text()
    # DemoConfig is built in one place, stage_config, which pins the guidance unless a stage sets it
    assert source.count("DemoConfig(") == 1 and source.count("DemoConfig.quick(") == 1

    @dataclasses.dataclass
    class MovedDemoConfig(DemoConfig):  # the demo after a later move of its defaults
        guidance_scale: float = 3.0
        dpo_learning_rate: float = 7e-4
        dpo_steps: int = 99
        reward_pairs_recipe: str = "lr=7e-4 beta=5000 steps=99 t=all"

    monkeypatch.setattr(demo, "DemoConfig", MovedDemoConfig)
    module = runpy.run_path(str(SHAPES_EXAMPLES / "dev_sweep.py"), run_name="dev_sweep")
    assert module["STAGE_DEFAULTS"] == _PINNED and MovedDemoConfig().guidance_scale == 3.0
    for quick in (True, False):
        config = module["stage_config"](quick)
        assert {k: getattr(config, k) for k in _PINNED} == {**_PINNED, **({"dpo_steps": 20} if quick else {})}
        assert module["stage_config"](quick, guidance_scale=2.0).guidance_scale == 2.0
        assert module["stage_config"](quick, dpo_steps=7).dpo_steps == 7


def _online_stage_call(monkeypatch, tmp_path, stage: str):
    """`dev_sweep.py --stage STAGE` run as users run it, with `run_online_recipe_sweep` replaced by a recorder:
    the (config, keyword arguments) it was called with."""
    import runpy

    from trl_rpo.shapes import sweep

    calls = []
    monkeypatch.setattr(sweep, "run_online_recipe_sweep", lambda config, out, **kw: calls.append((config, kw)))
    monkeypatch.setattr(sys, "argv", ["dev_sweep.py", "--stage", stage, "--output-dir", str(tmp_path)])
    runpy.run_path(str(SHAPES_EXAMPLES / "dev_sweep.py"), run_name="__main__")
    ((config, kwargs),) = calls
    return config, kwargs


def _dev_sweep_rounds():
    import runpy

    return runpy.run_path(str(SHAPES_EXAMPLES / "dev_sweep.py"), run_name="dev_sweep")["ONLINE_ROUNDS"]


@pytest.mark.parametrize("module", ["online_sweep", "sweep", "word_check"])
def test_each_sweep_module_imports_on_its_own(module):
    # online_sweep once imported sweep, which imports online_sweep back: importing it first raised ImportError
    import subprocess
    import sys

    code = f"import trl_rpo.shapes.{module}"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_online_rounds_replay_with_the_evaluation_they_ran_with():
    rounds = _dev_sweep_rounds()
    early = ("online-recipes", "online-batch", "online-tailorpo", "online-window", "online-reward")
    for stage, entry in rounds.items():
        # shared noise before the seventh round, train prompts from the sixth, dev2 from the eleventh, eight noises
        # from the twelfth; the eighteenth rolls out on dev2, so it scores no dev2 prompt as dev
        eight = ("online-nft-noises", "online-nft-cfg-free", "online-nft-guidance-2", "online-vbase",
                 "online-tailorpo-final-vbase", "online-lr-vbase", "online-room", "online-room-nft", "online-transfer")
        assert entry.per_image_noise == (stage not in (*early, "online-steps")), stage
        assert entry.train_prompts == (0 if stage in early else 54 if stage == "online-transfer" else 60), stage
        with_dev2 = ("online-nft-power", *[s for s in eight if not s.startswith(("online-room", "online-transfer"))])
        # the twentieth scores the other half of the held-out pairs: all 24 of its dev and 66 of its dev2 scenes
        assert entry.dev2_prompts == (66 if stage == "online-transfer" else 120 if stage in with_dev2 else 0), stage
        assert entry.dev_prompts == (24 if stage == "online-transfer" else 60), stage
        assert entry.eval_seeds == (tuple(range(8)) if stage in eight else (0, 1, 2)), stage


def test_twelfth_online_round_scores_the_demos_nft_recipe_with_eight_noises_on_fresh_seeds():
    twelfth = _dev_sweep_rounds()["online-nft-noises"]
    assert twelfth.recipes == {"nft": {"demo: 165 steps, half the timesteps (the ninth round's choice)": {}}}
    assert twelfth.seeds == (1100, 1101, 1102, 1103, 1104)
    assert (twelfth.eval_seeds, twelfth.dev2_prompts, twelfth.train_prompts) == (tuple(range(8)), 120, 60)


def test_the_seventh_studys_options_file_tests_the_final_image_baseline_on_seeds_no_round_used(monkeypatch, tmp_path):
    from trl_rpo.shapes import study

    runs = []
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    options = SHAPES_EXAMPLES / "study_tailorpo_final_vbase.yaml"
    assert study.main(["--config", str(options), "--output_dir", str(tmp_path)]) == 0
    (config,) = runs
    assert config.comparisons == [("tailorpo_final", "base")] and config.methods == ("tailorpo_final",)
    assert config.training_seeds == (20, 21, 22) and config.eval_seeds == tuple(range(8))
    assert (config.split, config.eval_prompts, config.recipe) == ("final", 180, _PINNED)
    used = {seed for entry in _dev_sweep_rounds().values() for seed in entry.seeds} | set(range(15))
    assert used.isdisjoint(config.training_seeds)


def test_the_eighth_studys_options_file_tests_every_dpo_row_on_seeds_nothing_used(monkeypatch, tmp_path):
    from trl_rpo.shapes import study
    from trl_rpo.shapes.arm_sweep import SWEEP_SEEDS, VBASE_ARM_SEEDS

    runs = []
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    assert study.main(["--config", str(SHAPES_EXAMPLES / "study_dpo_vbase.yaml"), "--output_dir", str(tmp_path)]) == 0
    (config,) = runs
    dpo = tuple(m for m in METHODS if m.startswith("dpo_"))
    assert config.methods == dpo and config.comparisons[0] == ("dpo_rpo_pairs", "dpo_reward_pairs")
    assert {(m, "base") for m in dpo} <= set(config.comparisons) and config.recipe == _PINNED  # the demo's recipes
    assert (config.split, config.eval_prompts, config.eval_seeds) == ("final", 180, (0, 1))
    used = {s for entry in _dev_sweep_rounds().values() for s in entry.seeds} | set(range(25))
    assert used.isdisjoint(config.training_seeds) and set(SWEEP_SEEDS + VBASE_ARM_SEEDS).isdisjoint(
        config.training_seeds)



def test_the_demo_samples_at_the_guidance_and_trains_each_dpo_row_with_the_recipe_the_third_arm_sweep_chose():
    from trl_rpo.shapes.arm_sweep import arm_recipe_config
    from trl_rpo.shapes.stages import arm_config

    swept = json.loads((SHAPES_EXAMPLES.parents[1] / "docs" / "results" / "arm_sweep_guidance.json").read_text())
    demo = DemoConfig()
    assert demo.guidance_scale == swept["guidance_scale"] and demo.online_guidance_scale is None
    names = ("dpo_learning_rate", "dpo_beta", "dpo_steps", "mask_weight_outside", "dpo_timestep_bias_strategy",
             "dpo_timestep_bias_portion", "dpo_timestep_bias_multiplier")  # fmt: skip
    for arm in ("dpo_reward_pairs", "dpo_best_of_4", "dpo_rpo_pairs"):
        chosen = arm_recipe_config(DemoConfig(guidance_scale=1.0), arm, swept["arms"][arm]["chosen"])
        trained, wanted = arm_config(demo, arm), arm_config(chosen, arm)
        assert {k: getattr(trained, k) for k in names} == {k: getattr(wanted, k) for k in names}, arm
    # the ablation row (RPO pairs, no mask) trains the reward pairs' recipe, as in every study
    ablation = arm_config(demo, "dpo_rpo_pairs_reward_recipe")
    reward = arm_config(demo, "dpo_reward_pairs")
    assert {k: getattr(ablation, k) for k in names} == {k: getattr(reward, k) for k in names}


def test_the_twelfth_studys_options_file_trains_each_dpo_row_as_the_third_arm_sweep_chose_on_fresh_seeds(
    monkeypatch, tmp_path
):
    from trl_rpo.shapes import study
    from trl_rpo.shapes.arm_sweep import GUIDANCE_ARM_SEEDS, SWEEP_SEEDS, VBASE_ARM_SEEDS, arm_recipe_config
    from trl_rpo.shapes.stages import arm_config

    runs = []
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    options = SHAPES_EXAMPLES / "study_dpo_guidance.yaml"
    assert study.main(["--config", str(options), "--output_dir", str(tmp_path)]) == 0
    (config,) = runs
    swept = json.loads((SHAPES_EXAMPLES.parents[1] / "docs" / "results" / "arm_sweep_guidance.json").read_text())
    demo = DemoConfig(**config.recipe)
    assert demo.guidance_scale == swept["guidance_scale"] == 1.0
    def training(config):  # what a row's Diffusion-DPO run reads
        names = ("dpo_learning_rate", "dpo_beta", "dpo_steps", "mask_weight_outside", "dpo_timestep_bias_strategy",
                 "dpo_timestep_bias_portion", "dpo_timestep_bias_multiplier")  # fmt: skip
        return {k: getattr(config, k) for k in names}

    for arm in ("dpo_reward_pairs", "dpo_best_of_4", "dpo_rpo_pairs"):  # each trains what the sweep chose for it
        chosen = arm_recipe_config(DemoConfig(guidance_scale=1.0), arm, swept["arms"][arm]["chosen"])
        assert training(arm_config(demo, arm)) == training(arm_config(chosen, arm)), arm
    dpo = tuple(m for m in METHODS if m.startswith("dpo_"))
    assert config.methods == dpo and config.comparisons[0] == ("dpo_rpo_pairs", "dpo_reward_pairs")
    assert (config.split, config.eval_prompts, config.eval_seeds) == ("final", 180, (0, 1))
    used = {s for entry in _dev_sweep_rounds().values() for s in entry.seeds} | set(range(66))
    assert used.isdisjoint(config.training_seeds) and set(SWEEP_SEEDS + VBASE_ARM_SEEDS + GUIDANCE_ARM_SEEDS
                                                           ).isdisjoint(config.training_seeds)  # fmt: skip

def test_sixteenth_online_round_trains_tailorpos_final_image_baseline_on_fresh_seeds(monkeypatch, tmp_path):
    rounds = _dev_sweep_rounds()
    from trl_rpo.shapes import online_sweep, stages

    sixteenth = rounds["online-tailorpo-final-vbase"]
    assert sixteenth.recipes == {"tailorpo_final": {"demo's": {}}}
    assert not {s for other, r in rounds.items() if other != "online-tailorpo-final-vbase" for s in r.seeds} & set(
        sixteenth.seeds)
    built = []
    monkeypatch.setattr(stages, "tailorpo_trainer", lambda config, out, name, pairing="best_worst": built.append(
        pairing) or name)
    monkeypatch.setattr(stages, "_train_and_save", lambda trainer: trainer)
    assert online_sweep._ONLINE_TRAINERS["tailorpo_final"](DemoConfig(), tmp_path, "run") == "run"
    assert built == ["final"]  # the round's method is the final-image pairing, not the step-wise one


_SEVENTEENTH_LEARNING_RATES = {"tailorpo": ("tailorpo_learning_rate", 1e-3),
                                "tailorpo_final": ("tailorpo_learning_rate", 2e-3), "nft": ("nft_learning_rate", 1e-3)}


def test_seventeenth_online_round_changes_only_each_methods_learning_rate_on_fresh_seeds():
    rounds = _dev_sweep_rounds()
    seventeenth = rounds["online-lr-vbase"]
    assert seventeenth.seeds == (1800, 1801, 1802)
    others = {s for other, r in rounds.items() if other != "online-lr-vbase" for s in r.seeds}
    assert others.isdisjoint(seventeenth.seeds)
    for method, (field_name, value) in _SEVENTEENTH_LEARNING_RATES.items():
        ((name, recipe),) = seventeenth.recipes[method].items()
        assert recipe == {field_name: value} and getattr(DemoConfig(), field_name) != value, method
    assert set(seventeenth.recipes) == set(_SEVENTEENTH_LEARNING_RATES)


def test_eighteenth_online_round_trains_the_whole_unet_at_guidance_2_on_dev2_rollouts_with_fresh_seeds():
    rounds = _dev_sweep_rounds()
    room = rounds["online-room"]
    assert room.seeds == (1910, 1911, 1912) and 1900 not in room.seeds  # 1900: the probe that suggested the round
    assert {s for other, r in rounds.items() if other != "online-room" for s in r.seeds}.isdisjoint(room.seeds)
    assert (room.prompt_split, room.dev2_prompts, room.train_prompts, room.eval_seeds) == ("dev2", 0, 60,
                                                                                          tuple(range(8)))
    rates = {"nft": "nft_learning_rate", "tailorpo": "tailorpo_learning_rate"}
    assert set(room.recipes) == set(rates)
    for method, rate in rates.items():
        ((_, recipe),) = room.recipes[method].items()
        assert recipe == {"online_lora": False, rate: 1e-4, "online_guidance_scale": 2.0}, method
    assert all(r.prompt_split == "train" for name, r in rounds.items()
               if not name.startswith(("online-room", "online-transfer")))  # fmt: skip


def test_dev_sweep_runs_the_eighteenth_round_rolling_out_on_dev2(monkeypatch, tmp_path):
    config, kwargs = _online_stage_call(monkeypatch, tmp_path, "online-room")
    assert config.online_prompt_split == "dev2" and config.eval_seeds == tuple(range(8))
    assert (kwargs["dev2_prompts"], kwargs["train_prompts"], kwargs["seeds"]) == (0, 60, (1910, 1911, 1912))


def test_nineteenth_online_round_replays_the_eighteenths_nft_recipe_on_six_fresh_seeds(monkeypatch, tmp_path):
    rounds = _dev_sweep_rounds()
    nineteenth = rounds["online-room-nft"]
    assert nineteenth.recipes == {"nft": rounds["online-room"].recipes["nft"]}  # unchanged: a replication
    assert nineteenth.seeds == (1920, 1921, 1922, 1923, 1924, 1925)
    assert {s for other, r in rounds.items() if other != "online-room-nft" for s in r.seeds}.isdisjoint(
        nineteenth.seeds)
    config, kwargs = _online_stage_call(monkeypatch, tmp_path, "online-room-nft")
    assert config.online_prompt_split == "dev2" and config.eval_seeds == tuple(range(8))
    assert (kwargs["dev2_prompts"], kwargs["train_prompts"], kwargs["seeds"]) == (0, 60, nineteenth.seeds)


def test_twentieth_online_round_rolls_out_on_half_the_held_out_pairs_and_scores_the_other_half(monkeypatch, tmp_path):
    rounds = _dev_sweep_rounds()
    twentieth = rounds["online-transfer"]
    assert twentieth.recipes == {"nft": rounds["online-room"].recipes["nft"]}  # the nineteenth's recipe, unchanged
    assert twentieth.seeds == (1930, 1931, 1932)
    assert {s for other, r in rounds.items() if other != "online-transfer" for s in r.seeds}.isdisjoint(
        twentieth.seeds)
    config, kwargs = _online_stage_call(monkeypatch, tmp_path, "online-transfer")
    assert config.online_prompt_split == "dev2_a" and config.eval_seeds == tuple(range(8))
    assert (kwargs["dev_prompts"], kwargs["dev2_prompts"], kwargs["train_prompts"]) == (24, 66, 54)


def test_the_eleventh_studys_options_file_trains_the_nineteenth_rounds_recipe_on_six_seeds_nothing_used(
    monkeypatch, tmp_path
):
    from trl_rpo.shapes import study
    from trl_rpo.shapes.arm_sweep import SWEEP_SEEDS, VBASE_ARM_SEEDS

    runs = []
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    assert study.main(["--config", str(SHAPES_EXAMPLES / "study_room_nft_replicated.yaml"), "--output_dir",
                       str(tmp_path)]) == 0  # fmt: skip
    (config,) = runs
    ((_, recipe),) = _dev_sweep_rounds()["online-room-nft"].recipes["nft"].items()
    assert config.recipe == {**recipe, "online_prompt_split": "dev2", **_PINNED} and config.methods == ("nft",)
    assert config.comparisons == [("nft", "base@2"), ("nft", "base")]
    assert (config.split, config.eval_prompts, config.eval_seeds) == ("final", 180, tuple(range(8)))
    assert config.training_seeds == (60, 61, 62, 63, 64, 65)
    used = {s for entry in _dev_sweep_rounds().values() for s in entry.seeds} | set(range(53)) | {1900}
    assert used.isdisjoint(config.training_seeds) and set(SWEEP_SEEDS + VBASE_ARM_SEEDS).isdisjoint(
        config.training_seeds)


@pytest.mark.parametrize("method", sorted(_SEVENTEENTH_LEARNING_RATES))
def test_the_ninth_studys_options_files_train_the_seventeenth_rounds_recipe_on_seeds_nothing_used(
    method, monkeypatch, tmp_path
):
    from trl_rpo.shapes import study
    from trl_rpo.shapes.arm_sweep import SWEEP_SEEDS, VBASE_ARM_SEEDS

    runs = []
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    options = SHAPES_EXAMPLES / f"study_online_lr_vbase_{method}.yaml"
    assert study.main(["--config", str(options), "--output_dir", str(tmp_path)]) == 0
    (config,) = runs
    field_name, value = _SEVENTEENTH_LEARNING_RATES[method]
    assert config.recipe == {field_name: value, **_PINNED} and config.methods == (method,)
    assert config.comparisons == [(method, "base")]
    assert (config.split, config.eval_prompts, config.eval_seeds) == ("final", 180, tuple(range(8)))
    used = {s for entry in _dev_sweep_rounds().values() for s in entry.seeds} | set(range(35))
    assert used.isdisjoint(config.training_seeds) and set(SWEEP_SEEDS + VBASE_ARM_SEEDS).isdisjoint(
        config.training_seeds)


@pytest.mark.parametrize("method", ["nft", "tailorpo"])
def test_the_tenth_studys_options_files_train_the_eighteenth_rounds_recipe_on_seeds_nothing_used(
    method, monkeypatch, tmp_path
):
    from trl_rpo.shapes import study
    from trl_rpo.shapes.arm_sweep import SWEEP_SEEDS, VBASE_ARM_SEEDS

    runs = []
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    assert study.main(["--config", str(SHAPES_EXAMPLES / f"study_room_{method}.yaml"), "--output_dir",
                       str(tmp_path)]) == 0  # fmt: skip
    (config,) = runs
    ((_, recipe),) = _dev_sweep_rounds()["online-room"].recipes[method].items()
    assert config.recipe == {**recipe, "online_prompt_split": "dev2", **_PINNED} and config.methods == (method,)
    assert config.comparisons == [(method, "base@2"), (method, "base")]
    assert (config.split, config.eval_prompts, config.eval_seeds) == ("final", 180, tuple(range(8)))
    used = {s for entry in _dev_sweep_rounds().values() for s in entry.seeds} | set(range(45)) | {1900}
    assert used.isdisjoint(config.training_seeds) and set(SWEEP_SEEDS + VBASE_ARM_SEEDS).isdisjoint(
        config.training_seeds)


@pytest.mark.parametrize("stage, guidance, seeds", [
    ("online-nft-cfg-free", 1.0, (1400, 1401, 1402, 1403, 1404)),  # the thirteenth round
    ("online-nft-guidance-2", 2.0, (1500, 1501, 1502, 1503, 1504)),  # the fourteenth
])  # fmt: skip
def test_guidance_rounds_run_the_demos_nft_recipe_at_their_guidance_on_fresh_seeds(stage, guidance, seeds):
    rounds = _dev_sweep_rounds()
    ((name, recipe),) = rounds[stage].recipes["nft"].items()
    assert recipe == {"online_guidance_scale": guidance}  # one change from the demo's recipe
    assert rounds[stage].seeds == seeds
    assert not {s for other, r in rounds.items() if other != stage for s in r.seeds} & set(seeds)
    assert (rounds[stage].eval_seeds, rounds[stage].dev2_prompts, rounds[stage].train_prompts) == (
        tuple(range(8)), 120, 60)


def test_dev_sweep_runs_an_online_round_with_its_own_evaluation(monkeypatch, tmp_path):
    config, kwargs = _online_stage_call(monkeypatch, tmp_path, "online-nft-noises")
    assert config.eval_seeds == tuple(range(8)) and config.per_image_noise
    assert (kwargs["dev2_prompts"], kwargs["train_prompts"]) == (120, 60)
    assert kwargs["seeds"] == (1100, 1101, 1102, 1103, 1104)


def test_the_fourth_studys_options_file_tests_nft_alone_on_fresh_seeds_with_eight_noises(monkeypatch, tmp_path):
    from trl_rpo.shapes import study

    runs = []  # `trl-rpo study --config FILE` parsed as users run it; the study itself is not run
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    assert study.main(["--config", str(SHAPES_EXAMPLES / "study_nft.yaml"), "--output_dir", str(tmp_path)]) == 0
    (config,) = runs
    assert config.comparisons == [("nft", "base")] and config.methods == ("nft",)
    assert config.training_seeds == (5, 6, 7, 8, 9) and config.eval_seeds == tuple(range(8))
    assert (config.split, config.eval_prompts, config.recipe) == ("final", 180, _PINNED)  # every final prompt
    used = {seed for entry in _dev_sweep_rounds().values() for seed in entry.seeds} | {0, 1, 2, 3, 4}
    assert used.isdisjoint(config.training_seeds)


def test_the_fifth_studys_options_file_tests_nft_at_guidance_2_against_both_bases_on_fresh_seeds(monkeypatch,
                                                                                                 tmp_path):
    from trl_rpo.shapes import study

    runs = []
    monkeypatch.setattr(study, "run_study", lambda config, output_dir: runs.append(config))
    assert study.main(["--config", str(SHAPES_EXAMPLES / "study_nft_g2.yaml"), "--output_dir", str(tmp_path)]) == 0
    (config,) = runs
    assert config.comparisons == [("nft", "base"), ("nft", "base@2")] and config.methods == ("nft",)
    assert config.recipe == {"online_guidance_scale": 2.0, **_PINNED}  # the fourteenth round's one change
    assert config.training_seeds == (10, 11, 12, 13, 14) and config.eval_seeds == tuple(range(8))
    assert (config.split, config.eval_prompts) == ("final", 180)
    used = {seed for entry in _dev_sweep_rounds().values() for seed in entry.seeds} | {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
    assert used.isdisjoint(config.training_seeds)


def test_rollout_rise_is_the_mean_over_seeds_of_last_minus_first_fifth_with_a_t_interval():
    from scipy import stats

    from trl_rpo.shapes.sweep import rollout_rise

    entries = [{"rollout_first": 0.60, "rollout_last": 0.65}, {"rollout_first": 0.70, "rollout_last": 0.72},
               {"rollout_first": 0.50, "rollout_last": 0.49}]  # fmt: skip
    rises = [0.05, 0.02, -0.01]
    half = stats.t.ppf(0.975, 2) * stats.tstd(rises) / 3**0.5
    result = rollout_rise(entries)
    assert result["rollout_rise"] == pytest.approx(0.02, abs=1e-4)
    assert result["rollout_rise_ci"] == pytest.approx([0.02 - half, 0.02 + half], abs=1e-4)
    assert result["rollout_rise_p"] == pytest.approx(stats.ttest_1samp(rises, 0.0).pvalue, abs=1e-4)


def test_rollout_rise_of_one_seed_has_no_interval():
    from trl_rpo.shapes.sweep import rollout_rise

    result = rollout_rise([{"rollout_first": 0.6, "rollout_last": 0.7}])
    assert result == {"rollout_rise": pytest.approx(0.1), "rollout_rise_ci": None, "rollout_rise_p": None}


def test_the_sweep_table_shows_the_rollout_rise_over_seeds():
    from trl_rpo.shapes.sweep import format_online_recipe_sweep

    entry = {"gain": 0.01, "gain_ci": [-0.01, 0.03], "rollout_first": 0.6, "rollout_last": 0.62, "seconds": 10.0}
    row = {"method": "nft", "recipe": "demo", "by_seed": {"1": entry}, "min_gain": 0.01, "mean_gain": 0.01,
           "rollout_rise": 0.02, "rollout_rise_ci": [-0.01, 0.05], "rollout_rise_p": 0.2}  # fmt: skip
    table = format_online_recipe_sweep({"rows": [row], "chosen": {}})
    assert "0.600 -> 0.620 (+0.020 [-0.010, +0.050])" in table


def test_rollout_rise_of_identical_seeds_has_a_defined_p_value():
    from trl_rpo.shapes.sweep import rollout_rise

    same = [{"rollout_first": 0.5, "rollout_last": 0.5}] * 3
    assert rollout_rise(same)["rollout_rise_p"] == 1.0
    up = [{"rollout_first": 0.5, "rollout_last": 0.625}] * 3
    assert rollout_rise(up)["rollout_rise_p"] == 0.0 and rollout_rise(up)["rollout_rise_ci"] == [0.125, 0.125]
