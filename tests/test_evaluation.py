import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from trl_rpo.evaluation import (
    compare_pipelines,
    confidence_interval,
    evaluate_pipeline,
    generate_images,
    image_grid,
    paired_comparison,
    plot_curves,
    plot_gains,
    smooth,
    win_rate,
)
from trl_rpo.testing import tiny_sd_pipeline

from ._helpers import brightness

PROMPTS = ["a red square", "a blue circle", "a green star"]
FAST = dict(num_inference_steps=2, guidance_scale=1.0)



@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


class Darker:
    """A pipeline-like callable whose images are the tiny pipeline's, darkened."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, prompts, **kwargs):
        images = self.pipe(prompts, **kwargs).images
        return SimpleNamespace(images=[Image.eval(im, lambda v: v // 2) for im in images])


def test_confidence_interval_is_the_student_t_half_width():
    assert confidence_interval([1.0, 2.0, 3.0]) == pytest.approx(4.302653 * 1.0 / math.sqrt(3))
    assert confidence_interval([1.0, 2.0, 3.0, 5.0, 8.0] * 10) == pytest.approx(
        2.009575 * np.std([1.0, 2.0, 3.0, 5.0, 8.0] * 10, ddof=1) / math.sqrt(50), rel=1e-5
    )
    assert math.isnan(confidence_interval([1.0]))


# Fixed paired data: 2 seeds x 12 prompts, method a better on most prompts, with ties and losses.
_RNG = np.random.default_rng(7)
SCORES_B = np.round(_RNG.uniform(0, 1, size=(2, 12)) * 6) / 6
SCORES_A = np.clip(SCORES_B + np.round(_RNG.normal(0.1, 0.2, size=(2, 12)) * 6) / 6, 0, 1)


def test_paired_gain_and_its_interval_match_scipy_bootstrap_over_prompts():
    from scipy import stats

    result = paired_comparison(SCORES_A.tolist(), SCORES_B.tolist(), n_resamples=2000, seed=3)
    per_prompt = (SCORES_A - SCORES_B).mean(axis=0)
    expected = stats.bootstrap((per_prompt,), np.mean, n_resamples=2000, method="BCa",
                               random_state=np.random.default_rng(3)).confidence_interval  # fmt: skip
    assert result.gain == pytest.approx((SCORES_A - SCORES_B).mean())
    assert result.gain_ci == pytest.approx([expected.low, expected.high])
    assert result.gain_ci[0] < result.gain < result.gain_ci[1]
    assert result.n_prompts == 12 and result.n_images == 24


def test_paired_p_value_is_the_t_test_of_per_prompt_differences():
    from scipy import stats

    result = paired_comparison(SCORES_A, SCORES_B)
    per_prompt = (SCORES_A - SCORES_B).mean(axis=0)
    assert result.p_value == pytest.approx(stats.ttest_1samp(per_prompt, 0.0).pvalue)
    assert result.p_value == pytest.approx(stats.ttest_rel(SCORES_A.mean(0), SCORES_B.mean(0)).pvalue)


def test_paired_win_rate_counts_ties_half_and_is_antisymmetric():
    result = paired_comparison(SCORES_A, SCORES_B)
    diff = SCORES_A - SCORES_B
    assert (result.wins, result.ties, result.losses) == ((diff > 0).sum(), (diff == 0).sum(), (diff < 0).sum())
    assert result.win_rate == pytest.approx(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
    assert paired_comparison(SCORES_B, SCORES_A).win_rate == pytest.approx(1 - result.win_rate)
    assert result.win_rate_ci[0] <= result.win_rate <= result.win_rate_ci[1]


def test_paired_interval_is_tighter_than_two_separate_intervals():
    # Shared per-prompt difficulty cancels in the paired difference, not in two independent intervals.
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=40)
    b = difficulty + rng.normal(0, 0.02, size=40)
    a = difficulty + 0.03 + rng.normal(0, 0.02, size=40)
    result = paired_comparison(a, b)
    assert result.significant and result.gain_ci[0] > 0
    assert result.gain_ci[1] - result.gain_ci[0] < confidence_interval(a) + confidence_interval(b)


def test_identical_methods_compare_as_zero_gain_with_a_point_interval():
    result = paired_comparison(SCORES_B, SCORES_B)
    assert result.gain == 0 and result.gain_ci == [0.0, 0.0] and result.win_rate == 0.5
    assert result.p_value == 1.0 and not result.significant


def test_an_interval_end_at_zero_up_to_float_noise_is_not_significant():
    # A BCa quantile interpolated between a resample mean of 0 and its neighbour: zero, not evidence.
    result = dataclasses.replace(paired_comparison(SCORES_A, SCORES_B), gain_ci=[7.6e-12, 0.05])
    assert not result.significant
    assert dataclasses.replace(result, gain_ci=[1e-6, 0.05]).significant
    assert not dataclasses.replace(result, gain_ci=[-0.05, -7.6e-12]).significant


def test_one_prompt_has_no_interval_and_is_never_significant():
    result = paired_comparison([[0.3], [0.5]], [[0.1], [0.1]])
    assert result.gain == pytest.approx(0.3) and all(math.isnan(v) for v in result.gain_ci)
    assert not result.significant and math.isnan(result.p_value)
    assert result.to_dict()["gain_ci"] == [None, None] and result.to_dict()["p_value"] is None


def test_paired_comparison_refuses_unpaired_shapes():
    with pytest.raises(ValueError, match="same \\[seed\\]\\[prompt\\] shape"):
        paired_comparison([[0.1, 0.2]], [[0.1, 0.2, 0.3]])


def test_compare_pipelines_pairs_images_by_prompt_and_seed(pipe):
    result = compare_pipelines(pipe, Darker(pipe), PROMPTS, brightness, seeds=[0, 1], **FAST)
    assert result.wins == 6 and result.win_rate == 1.0 and result.gain > 0 and result.n_images == 6
    assert result.to_dict()["gain_ci"][0] > 0


def test_evaluation_scores_every_prompt_and_seed(pipe):
    result = evaluate_pipeline(pipe, PROMPTS, brightness, seeds=[0, 1], **FAST)
    assert len(result.scores["brightness"]) == 2 and len(result.scores["brightness"][0]) == 3
    flat = [v for row in result.scores["brightness"] for v in row]
    assert result.mean["brightness"] == pytest.approx(np.mean(flat))
    assert result.mean["total"] == pytest.approx(result.mean["brightness"])
    assert math.isfinite(result.ci["brightness"]) and len(result.per_seed["brightness"]) == 2


def test_a_single_seed_has_no_confidence_interval(pipe):
    assert math.isnan(evaluate_pipeline(pipe, PROMPTS, brightness, seeds=[0], **FAST).ci["brightness"])


def test_generation_is_seeded_and_independent_of_the_batch_size(pipe):
    whole = generate_images(pipe, PROMPTS, seed=3, batch_size=3, **FAST)
    one_by_one = generate_images(pipe, PROMPTS, seed=3, batch_size=1, **FAST)
    for a, b in zip(whole, one_by_one):
        np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1)


def test_win_rate_against_itself_is_one_half_with_all_ties(pipe):
    result = win_rate(pipe, pipe, PROMPTS, brightness, seeds=[0], **FAST)
    assert result["win_rate"] == 0.5 and result["ties"] == 3 and result["n"] == 3


def test_win_rate_prefers_the_pipeline_the_reward_prefers(pipe):
    assert win_rate(pipe, Darker(pipe), PROMPTS, brightness, seeds=[0, 1], **FAST)["win_rate"] == 1.0
    assert win_rate(Darker(pipe), pipe, PROMPTS, brightness, seeds=[0], **FAST)["win_rate"] == 0.0


def test_image_grid_lays_out_rows_and_columns_with_labels():
    cells = [[Image.new("RGB", (8, 8), c) for c in ("red", "blue")] for _ in range(3)]
    grid = image_grid(cells, row_labels=["a", "b", "c"], column_labels=["x", "y"], cell_size=32, label_width=40)
    top = 12 + 6  # one line of column labels
    assert grid.size == (40 + 2 * 32, top + 3 * 32)
    assert grid.getpixel((40 + 5, top + 5)) == (255, 0, 0) and grid.getpixel((40 + 32 + 5, top + 5)) == (0, 0, 255)


def test_image_grid_refuses_ragged_rows_and_wrong_label_counts():
    red = Image.new("RGB", (8, 8), "red")
    with pytest.raises(ValueError, match="every row needs 2 images"):
        image_grid([[red, red], [red]])
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        image_grid([[red], [red]], row_labels=["a"])


def test_image_grid_shows_whole_prompts_wrapped_above_the_cells():
    red = Image.new("RGB", (8, 8), "red")
    long_prompt = "three purple circles at the bottom, on a gray background"
    grid = image_grid([[red, red]], column_labels=[long_prompt, "x"], cell_size=96)
    top = grid.height - 96
    assert top >= 3 * 12  # wrapped over several lines, nothing cut
    assert grid.getpixel((5, top + 5)) == (255, 0, 0)


def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])
    assert smooth([0.0, 2.0], 0.5) == pytest.approx([0.0, (0.5 * 0 * 0.5 + 0.5 * 2.0) / 0.75])
    assert smooth([3.0, 5.0], 0.0) == [3.0, 5.0]


def test_plot_curves_draws_raw_and_smoothed_lines_per_series(tmp_path):
    figure = plot_curves({"loss": {"a": [(1, 0.5), (2, 0.7), (3, 0.6)], "b": []}, "reward": {"c": [(0, 1.0)]}})
    axes = figure.get_axes()
    assert [ax.get_title() for ax in axes] == ["loss", "reward"]
    assert len(axes[0].lines) == 3  # raw + smoothed for "a", an empty legend entry for "b"
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["a", "b (no data)"]
    figure.savefig(tmp_path / "curves.png")
    assert Image.open(tmp_path / "curves.png").size[0] > 0


def test_plot_gains_draws_one_bar_per_method_with_its_interval(tmp_path):
    figure = plot_gains({"dpo": (0.05, [0.01, 0.09]), "sft": (0.01, [-0.02, 0.04])}, title="gain")
    ax = figure.get_axes()[0]
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == pytest.approx([0.05, 0.01])
    assert ax.patches[1].get_hatch() == "//" and not ax.patches[0].get_hatch()  # CI over zero is hatched
    figure.savefig(tmp_path / "gains.png")
