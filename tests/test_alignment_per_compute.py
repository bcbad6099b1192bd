import pytest

from trl_rpo.shapes.compute import gain_per_minute, study_gain_per_minute


def test_gain_per_minute_divides_the_gain_and_its_interval_by_the_training_minutes():
    entry = gain_per_minute(0.03, 120.0, [0.01, 0.05])
    assert entry == {"minutes": 2.0, "gain_per_minute": 0.015, "gain_per_minute_ci": [0.005, 0.025]}
    assert gain_per_minute(0.01, 0.0)["gain_per_minute"] is None  # the base: no training


def test_study_gain_per_minute_adds_the_pair_sets_build_time_to_dpo_rows_only():
    base = [[0.5, 0.5], [0.5, 0.5]]
    seeds = {
        "0": {"pair_set_seconds": {"rpo_pairs": 60.0},
              "methods": {"dpo_rpo_pairs": {"train_seconds": 60.0, "scores": {"a": [[0.6, 0.6], [0.6, 0.6]]}},
                          "grpo": {"train_seconds": 30.0, "scores": {"a": [[0.55, 0.55], [0.55, 0.55]]}}}},
        "1": {"pair_set_seconds": {"rpo_pairs": 60.0},
              "methods": {"dpo_rpo_pairs": {"train_seconds": 60.0, "scores": {"a": [[0.7, 0.7], [0.7, 0.7]]}},
                          "grpo": {"train_seconds": 30.0, "scores": {"a": [[0.45, 0.45], [0.45, 0.45]]}}}},
    }  # fmt: skip
    out = study_gain_per_minute(base, seeds, ["dpo_rpo_pairs", "grpo"], "a", {"dpo_rpo_pairs": "rpo_pairs"})
    assert out["dpo_rpo_pairs"]["minutes"] == 2.0  # one minute of pair building + one of training
    assert out["dpo_rpo_pairs"]["per_seed"] == pytest.approx([0.05, 0.1])
    assert out["dpo_rpo_pairs"]["gain_per_minute"] == pytest.approx(0.075)
    assert out["dpo_rpo_pairs"]["gain_per_minute_se"] == pytest.approx(0.025)
    assert out["grpo"]["minutes"] == 0.5 and out["grpo"]["per_seed"] == pytest.approx([0.1, -0.1])
