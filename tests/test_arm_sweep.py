"""Every Diffusion-DPO row of the demo tuned by one sweep and one rule (issue 27's equal tuning)."""

import json

import pytest

from trl_rpo.shapes.arm_sweep import ARM_RECIPES, ARMS, arm_recipe_config, choose_recipe, run_arm_sweep
from trl_rpo.shapes.demo import METHODS, DemoConfig
from trl_rpo.shapes.stages import DPO_ARMS, arm_config, format_dpo_recipe, parse_dpo_recipe


def test_a_recipe_string_sets_learning_rate_beta_steps_and_timestep_range():
    assert parse_dpo_recipe("lr=1e-3 beta=2500 steps=150 t=<500") == {
        "dpo_learning_rate": 1e-3, "dpo_beta": 2500.0, "dpo_steps": 150, "dpo_timestep_bias_strategy": "later",
        "dpo_timestep_bias_portion": 0.5, "dpo_timestep_bias_multiplier": 0.0,
    }  # fmt: skip
    assert parse_dpo_recipe("lr=2e-3,beta=5000,steps=300,t=all")["dpo_timestep_bias_strategy"] == "none"


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr=1e-3 beta=5000 steps=300", r"lacks \['t'\]"),
        ("lr=1e-3 beta=5000 steps=300 t=all gamma=1", "'gamma=1' is not one of"),
        ("lr=1e-3 beta=5000 steps=300 t=<250", "t must be one of"),
        ("lr=1e-3 beta=5000 steps=2.5 t=all", "steps must be positive and whole"),
        ("lr=-1 beta=5000 steps=300 t=all", "lr must be positive"),
        ("lr=fast beta=5000 steps=300 t=all", "lr must be a number, got 'fast'"),
        ("lr=1e-3 lr=2e-3 beta=5000 steps=300 t=all", "each once"),
    ],
)
def test_a_bad_recipe_string_names_the_part_that_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_dpo_recipe(text)


def test_a_bad_recipe_in_the_demo_config_names_the_field_before_anything_runs():
    with pytest.raises(ValueError, match="best_of_4_recipe: .*lacks"):
        DemoConfig(best_of_4_recipe="lr=1e-3")


def test_the_rpo_arm_recipe_round_trips_through_its_string():
    config = DemoConfig()
    assert format_dpo_recipe(config) == "lr=0.0005 beta=5000 steps=150 t=all"
    later = DemoConfig(dpo_timestep_bias_strategy="later", dpo_learning_rate=1e-3, dpo_steps=300)
    assert format_dpo_recipe(later) == "lr=0.001 beta=5000 steps=300 t=<500"
    fields = parse_dpo_recipe(format_dpo_recipe(config))
    assert all(getattr(config, name) == value for name, value in fields.items())


def test_every_dpo_row_of_the_demo_has_an_arm_and_its_pair_set():
    assert [m for m in METHODS if m.startswith("dpo_")] == list(DPO_ARMS)
    assert {pair_set for pair_set, _ in DPO_ARMS.values()} == {"reward_pairs", "best_of_4_pairs", "rpo_pairs"}


def test_reward_arms_train_with_their_recipe_and_no_edit_mask():
    config = DemoConfig(reward_pairs_recipe="lr=1e-3 beta=2500 steps=150 t=all", mask_weight_outside=0.0)
    for method in ("dpo_reward_pairs", "dpo_rpo_pairs_reward_recipe"):
        arm = arm_config(config, method)
        assert (arm.dpo_learning_rate, arm.dpo_beta, arm.dpo_steps) == (1e-3, 2500.0, 150)
        assert arm.dpo_timestep_bias_strategy == "none" and arm.mask_weight_outside == 1.0
    assert arm_config(config, "dpo_rpo_pairs") is config  # the RPO arm keeps its own fields and mask
    assert arm_config(config, "dpo_best_of_4").dpo_steps == 150  # best-of-4 has its own recipe
    with pytest.raises(ValueError, match="not a Diffusion-DPO row"):
        arm_config(config, "grpo")


def test_a_swept_recipe_lands_in_the_field_its_arm_reads():
    config = DemoConfig()
    recipe = "lr=1e-3 beta=5000 steps=150 t=<500"
    assert arm_recipe_config(config, "dpo_best_of_4", recipe).best_of_4_recipe == recipe
    assert arm_recipe_config(config, "dpo_reward_pairs", recipe).reward_pairs_recipe == recipe
    rpo = arm_recipe_config(config, "dpo_rpo_pairs", recipe)
    assert (rpo.dpo_learning_rate, rpo.dpo_steps, rpo.mask_weight_outside) == (1e-3, 150, config.mask_weight_outside)
    unmasked = arm_recipe_config(config, "dpo_rpo_pairs_reward_recipe", recipe)
    assert (unmasked.dpo_learning_rate, unmasked.dpo_steps, unmasked.mask_weight_outside) == (1e-3, 150, 1.0)
    ablation = arm_config(unmasked, "dpo_rpo_pairs_reward_recipe")  # the demo's row: the reward pairs' recipe
    reward = parse_dpo_recipe(config.reward_pairs_recipe)
    assert (ablation.dpo_steps, ablation.dpo_learning_rate) == (reward["dpo_steps"], reward["dpo_learning_rate"])
    assert ablation.dpo_timestep_bias_strategy == reward["dpo_timestep_bias_strategy"]


def test_the_rule_prefers_the_best_worst_seed_over_the_best_mean():
    gains = {"steady": [0.010, 0.012, 0.011], "lucky": [0.060, -0.020, 0.030]}
    assert choose_recipe(gains) == "steady"


def test_the_rule_breaks_a_tie_on_the_worst_seed_by_the_mean():
    assert choose_recipe({"a": [0.01, 0.02], "b": [0.01, 0.05]}) == "b"
    with pytest.raises(ValueError):
        choose_recipe({"a": []})


def test_the_declared_sweep_covers_every_arm_with_the_same_recipes_and_seeds_not_the_studys():
    from trl_rpo.shapes.arm_sweep import SWEEP_SEEDS
    from trl_rpo.shapes.study import StudyConfig

    assert set(ARMS) == set(DPO_ARMS)  # the ablation arm too: reported, not chosen
    assert len(set(ARM_RECIPES)) == len(ARM_RECIPES) and all(parse_dpo_recipe(r) for r in ARM_RECIPES)
    assert set(SWEEP_SEEDS).isdisjoint(StudyConfig().training_seeds)


def test_the_second_arm_sweep_declares_fresh_seeds_and_holds_the_demos_recipes():
    from trl_rpo.shapes.arm_sweep import CHOSEN_ARMS, SWEEP_SEEDS, VBASE_ARM_RECIPES, VBASE_ARM_SEEDS, VBASE_ARMS
    from trl_rpo.shapes.study import StudyConfig

    assert VBASE_ARMS == CHOSEN_ARMS
    candidates = [parse_dpo_recipe(r) for r in VBASE_ARM_RECIPES]
    assert len({json.dumps(c, sort_keys=True) for c in candidates}) == len(candidates)
    config = DemoConfig()  # every DPO row's recipe in the demo is one of the sweep's candidates
    for recipe in (config.reward_pairs_recipe, config.best_of_4_recipe, format_dpo_recipe(config)):
        assert parse_dpo_recipe(recipe) in candidates
    assert set(VBASE_ARM_SEEDS).isdisjoint((*SWEEP_SEEDS, *StudyConfig().training_seeds))




def test_the_guidance_rule_takes_the_scale_where_the_base_scores_highest_and_the_first_listed_on_a_tie():
    from trl_rpo.shapes.sweep import best_guidance

    assert best_guidance({5.0: 0.54, 1.0: 0.53, 2.0: 0.60, 3.0: 0.58}) == 2.0
    assert best_guidance({5.0: 0.60, 2.0: 0.60}) == 5.0
    with pytest.raises(ValueError, match="at one guidance scale or more"):
        best_guidance({})


def test_the_third_arm_sweep_lists_the_demos_guidance_first_and_declares_fresh_seeds():
    from trl_rpo.shapes.arm_sweep import GUIDANCE_ARM_SCALES, GUIDANCE_ARM_SEEDS, SWEEP_SEEDS, VBASE_ARM_SEEDS
    from trl_rpo.shapes.study import StudyConfig

    # 5: the demo's guidance when the sweep was declared (it has since taken the sweep's choice)
    assert GUIDANCE_ARM_SCALES[0] == 5.0 and 2.0 in GUIDANCE_ARM_SCALES
    assert DemoConfig().guidance_scale in GUIDANCE_ARM_SCALES
    assert set(GUIDANCE_ARM_SEEDS).isdisjoint((*SWEEP_SEEDS, *VBASE_ARM_SEEDS, *StudyConfig().training_seeds))


@pytest.mark.slow
def test_the_arm_sweep_builds_trains_and_scores_at_the_guidance_its_rule_picks(tmp_path, monkeypatch):
    from trl_rpo.shapes import arm_sweep, sweep

    config = DemoConfig.quick(image_budget=8, eval_seeds=(0,), num_inference_steps=2, refine_strength=0.5,
                              dpo_batch_size=2, guidance_scale=5.0)  # fmt: skip
    seen = {"pairs": [], "runs": []}
    build, train = arm_sweep.build_pair_sets, arm_sweep.train_dpo_arm

    def building(config, *args, **kwargs):
        seen["pairs"].append(config.guidance_scale)
        return build(config, *args, **kwargs)

    def training(config, *args, **kwargs):
        seen["runs"].append(config.guidance_scale)
        return train(config, *args, **kwargs)

    monkeypatch.setattr(arm_sweep, "build_pair_sets", building)
    monkeypatch.setattr(arm_sweep, "train_dpo_arm", training)
    monkeypatch.setattr(sweep, "best_guidance", lambda by_scale: list(by_scale)[-1])  # a rule that picks 1.5
    sweep_args = dict(arms=("dpo_best_of_4",), recipes=("lr=1e-3 beta=5000 steps=1 t=all",), seeds=(100,),
                      dev_prompts=3, guidance_scales=(5.0, 1.5), log=lambda _: None)  # fmt: skip
    results = run_arm_sweep(config, tmp_path / "arms", **sweep_args)
    assert results["guidance_scale"] == 1.5 and set(results["base_dev_alignment_by_guidance"]) == {"5", "1.5"}
    assert seen == {"pairs": [1.5], "runs": [1.5]}
    assert "chosen 1.5" in (tmp_path / "arms" / "arm_sweep.md").read_text()

@pytest.mark.slow
def test_the_arm_sweep_scores_every_arm_recipe_and_seed_on_dev_and_resumes(tmp_path, monkeypatch):
    from trl_rpo.shapes import arm_sweep

    config = DemoConfig.quick(image_budget=8, eval_seeds=(0,), num_inference_steps=4, refine_strength=0.5,
                              dpo_batch_size=2)  # fmt: skip
    recipes = ("lr=1e-3 beta=5000 steps=1 t=all", "lr=1e-3 beta=5000 steps=2 t=<500")
    out = tmp_path / "arms"
    arms = ("dpo_best_of_4", "dpo_rpo_pairs_reward_recipe")  # one chosen arm, and the reported one
    sweep = dict(arms=arms, recipes=recipes, seeds=(100, 101), dev_prompts=4, log=lambda _: None)
    results = run_arm_sweep(config, out, **sweep)
    for arm in arms:
        entry = results["arms"][arm]
        assert [row["recipe"] for row in entry["rows"]] == list(recipes)
        gains = {row["recipe"]: row["gains"] for row in entry["rows"]}
        assert entry["chosen"] == (choose_recipe(gains) if arm != "dpo_rpo_pairs_reward_recipe" else None)
        assert all(len(row["gains"]) == 2 and -1 <= row["in_distribution_mean"] <= 1 for row in entry["rows"])
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == len(arms) * len(recipes) * 2
    # A kill before the last run finished: the resumed sweep trains only that one.
    (out / "runs.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    trained = []
    original = arm_sweep.train_dpo_arm

    def counting(config, pair_sets, output_dir, method, name=None):
        trained.append(name)
        return original(config, pair_sets, output_dir, method, name=name)

    monkeypatch.setattr(arm_sweep, "train_dpo_arm", counting)
    again = run_arm_sweep(config, out, **sweep)
    last = json.loads(lines[-1])
    assert trained == [f"{last['arm']}-{recipes.index(last['recipe'])}-seed{last['seed']}"]
    def gains(sweep):
        return {arm: [row["gains"] for row in entry["rows"]] for arm, entry in sweep["arms"].items()}

    assert gains(again) == gains(results) and (out / "arm_sweep.md").is_file()
    with pytest.raises(ValueError, match="holds another sweep"):
        run_arm_sweep(config, out, **{**sweep, "recipes": recipes[:1]})


@pytest.mark.slow
def test_the_rank_check_retrains_the_chosen_recipe_at_other_ranks_on_the_sweeps_own_pairs(tmp_path):
    from safetensors.torch import load_file

    from trl_rpo.shapes.rank_check import load_pair_sets, run_rank_check

    # 16 images at 8 steps: on the shipped base, 8 images at 4 steps all tie and give no reward pair to retrain on.
    config = DemoConfig.quick(image_budget=16, eval_seeds=(0,), num_inference_steps=8, refine_strength=0.5,
                              dpo_batch_size=2)  # fmt: skip
    sweep_dir = tmp_path / "arms"
    sweep = run_arm_sweep(config, sweep_dir, arms=("dpo_reward_pairs",), recipes=("lr=1e-3 beta=5000 steps=1 t=all",),
                          seeds=(100,), dev_prompts=4, log=lambda _: None)  # fmt: skip
    pairs = load_pair_sets(sweep_dir / "work" / "seed-100" / "pairs")
    assert len(pairs["reward_pairs"]) > 0
    results = run_rank_check(sweep_dir, tmp_path / "ranks", ranks=(4,), arms=("dpo_reward_pairs",), log=lambda _: None)
    (row,) = results["rows"]
    sweep_row = json.loads((sweep_dir / "runs.jsonl").read_text().splitlines()[0])
    assert (row["rank"], row["seed"], row["recipe"]) == (4, 100, sweep["arms"]["dpo_reward_pairs"]["chosen"])
    assert row["pairs"] == len(pairs["reward_pairs"]) == sweep_row["pairs"]
    assert (row["rank_8_gain"], row["rank_8_in_distribution_gain"]) == (
        sweep_row["gain"], sweep_row["in_distribution_gain"])  # fmt: skip
    weights = load_file(str(tmp_path / "ranks" / "work" / "runs" / "dpo_reward_pairs-r4-seed100"
                            / "pytorch_lora_weights.safetensors"))  # fmt: skip
    assert {min(t.shape) for k, t in weights.items() if "lora" in k} == {4}
    assert "| `dpo_reward_pairs` | 4 |" in (tmp_path / "ranks" / "rank_check.md").read_text()
    with pytest.raises(FileExistsError, match="not empty"):
        run_rank_check(sweep_dir, tmp_path / "ranks", ranks=(4,), arms=("dpo_reward_pairs",))


def test_load_pair_sets_reads_back_a_reward_pair_set_saved_with_no_rows(tmp_path):
    # A base whose samples all tie yields no reward pairs; `datasets` writes such a set with no shard and cannot load
    # it, so the pair sets of that seed must still read back, as an empty set with the saved columns.
    from datasets import Dataset, Features, Value

    from trl_rpo.data.formats import load_preference_dataset, load_saved_dataset

    features = Features({"prompt": Value("string"), "chosen_score": Value("float32")})
    for name in ("reward_pairs", "best_of_4_pairs"):
        Dataset.from_dict({"prompt": [], "chosen_score": []}, features=features).save_to_disk(str(tmp_path / name))
    empty = load_saved_dataset(tmp_path / "reward_pairs")
    assert len(empty) == 0 and empty.features == features
    assert len(load_preference_dataset(str(tmp_path / "best_of_4_pairs"))) == 0  # the public loader too
    full = Dataset.from_dict({"prompt": ["a"], "chosen_score": [1.0]}, features=features)
    full.save_to_disk(str(tmp_path / "full"))
    assert load_saved_dataset(tmp_path / "full")["prompt"] == ["a"]
