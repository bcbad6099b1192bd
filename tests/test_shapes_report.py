"""The README's demo table is generated from a demo's results.json and spliced between markers."""

import pytest

from trl_rpo.shapes.report import README_END, README_START, readme_table, splice_readme_table

RESULTS = {
    "rows": [
        {"method": "base", "alignment": 0.5875, "pairs": 0, "seconds": 0.0},
        {"method": "dpo_rpo_pairs", "alignment": 0.61, "pairs": 338, "seconds": 70.2, "gain": 0.0225,
         "gain_ci": [0.004, 0.041], "win_rate": 0.531, "p_value": 0.018, "gain_per_minute": 0.01923},
        {"method": "nft", "alignment": 0.58, "pairs": 0, "images": 640, "seconds": 65.8, "gain": -0.0075,
         "gain_ci": [-0.02, 0.005], "win_rate": 0.49, "p_value": 0.31, "gain_per_minute": -0.00684},
    ],
    "independent_judge": {"methods": {"base": {"judge_alignment": 0.7926},
                                      "dpo_rpo_pairs": {"judge_gain": 0.002, "judge_gain_ci": [-0.011, 0.015]}}},
}  # fmt: skip


def test_readme_table_has_a_row_per_method_in_results_order():
    lines = readme_table(RESULTS).splitlines()
    assert lines[0].startswith("| method | alignment | gain vs base [95% CI] |") and len(lines) == 2 + 3
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["`base`", "`dpo_rpo_pairs`", "`nft`"]


def test_readme_table_bolds_only_intervals_that_exclude_zero():
    _, _, base, rpo, nft = readme_table(RESULTS).splitlines()
    assert "**+0.022 [+0.004, +0.041]**" in rpo and "-0.007 [-0.020, +0.005]" in nft and "**" not in nft
    assert "(judge alignment 0.793)" in base and "+0.002 [-0.011, +0.015]" in rpo


def test_readme_table_counts_images_for_methods_without_pairs():
    nft = readme_table(RESULTS).splitlines()[-1]
    assert "| (640 images) | 66 | -0.0068 |" in nft and "| 0.018 |" in readme_table(RESULTS).splitlines()[3]


def test_splice_replaces_only_the_text_between_the_markers():
    readme = f"intro\n{README_START}\nold table\n{README_END}\noutro\n"
    assert splice_readme_table(readme, "| new |") == f"intro\n{README_START}\n| new |\n{README_END}\noutro\n"


def test_splice_refuses_a_readme_without_the_markers():
    with pytest.raises(ValueError, match="demo-table:start"):
        splice_readme_table("no markers here", "| t |")


def test_readme_table_bolds_an_interval_below_zero_too():
    row = {"method": "grpo", "alignment": 0.55, "pairs": 0, "images": 640, "seconds": 70.0, "gain": -0.019,
           "gain_ci": [-0.029, -0.009], "win_rate": 0.45, "p_value": 0.0001, "gain_per_minute": -0.0165}  # fmt: skip
    assert "**-0.019 [-0.029, -0.009]**" in readme_table({"rows": [row]}).splitlines()[-1]


def test_readme_table_adds_the_gain_against_the_base_sampled_at_a_rows_own_guidance():
    comparisons = [
        {"a": "nft", "b": "base@2", "prompts": "final", "gain": 0.031, "gain_ci": [0.012, 0.05], "p_value": 0.002},
        {"a": "nft", "b": "base@2", "prompts": "in_distribution", "gain": 0.5, "gain_ci": [0.1, 0.9], "p_value": 0.2},
        {"a": "nft", "b": "base", "prompts": "final", "gain": 0.9, "gain_ci": [0.8, 1.0], "p_value": 0.0},
    ]  # fmt: skip
    lines = readme_table({**RESULTS, "comparisons": comparisons}).splitlines()
    assert lines[-2:] == ["", "`nft` against the base sampled at its guidance 2 (`base@2`): **+0.031 [+0.012, "
                              "+0.050]**, p 0.002."]  # fmt: skip
    assert len(readme_table(RESULTS).splitlines()) == 5  # nothing added without such a comparison
