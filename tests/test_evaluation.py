import math
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from trl_rpo.evaluation import confidence_interval, evaluate_pipeline, generate_images, image_grid, win_rate
from trl_rpo.testing import tiny_sd_pipeline

PROMPTS = ["a red square", "a blue circle", "a green star"]
FAST = dict(num_inference_steps=2, guidance_scale=1.0)


def brightness(images, prompts, **kwargs):
    return [float(np.asarray(im, dtype=np.float32).mean() / 255.0) for im in images]


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
    assert confidence_interval([1.0, 2.0, 3.0]) == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(confidence_interval([1.0]))


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
    assert grid.size == (40 + 2 * 32, 16 + 3 * 32)
    assert grid.getpixel((40 + 5, 16 + 5)) == (255, 0, 0) and grid.getpixel((40 + 32 + 5, 16 + 5)) == (0, 0, 255)


def test_image_grid_refuses_ragged_rows_and_wrong_label_counts():
    red = Image.new("RGB", (8, 8), "red")
    with pytest.raises(ValueError, match="every row needs 2 images"):
        image_grid([[red, red], [red]])
    with pytest.raises(ValueError, match="1 row labels for 2 rows"):
        image_grid([[red], [red]], row_labels=["a"])


def test_line_chart_draws_each_series_and_lists_empty_ones():
    from trl_rpo.evaluation import line_chart

    chart = line_chart({"a": [(1, 0.5), (2, 0.7)], "b": []}, title="loss", size=(300, 200))
    assert chart.size == (300, 200)
    colors = {chart.getpixel((x, y)) for x in range(300) for y in range(200)}
    assert (31, 119, 180) in colors  # the first series' line


def test_line_chart_of_a_flat_series_is_drawn():
    from trl_rpo.evaluation import line_chart

    chart = line_chart({"flat": [(0, 1.0), (5, 1.0)]}, size=(300, 200))
    # A flat range is widened by 0.5 each way, so the line runs across the middle of the plot area.
    middle = {chart.getpixel((x, y)) for x in range(100, 300) for y in range(90, 110)}
    assert (31, 119, 180) in middle
