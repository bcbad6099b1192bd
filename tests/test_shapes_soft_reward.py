"""`soft_alignment_score`: the graded alignment reward the online trainers can optimize (issue 28)."""

import dataclasses

import numpy as np
import pytest

from trl_rpo.shapes import (
    POSITIONS,
    Scene,
    alignment_score,
    analyze,
    classify_shape,
    position_of,
    prompt_text,
    prompts,
    render,
    soft_alignment_score,
    soft_attributes,
)
from trl_rpo.shapes.analysis import DetectedObject, Observation, shape_probabilities
from trl_rpo.shapes.demo import DemoConfig
from trl_rpo.shapes.stages import online_rewards
from trl_rpo.shapes.world import region_margin

SCENE = Scene("circle", "red", 2, "left", "white")


def _observation(*objects: DetectedObject, background: str = "white") -> Observation:
    return Observation(background=background, objects=objects, size=(64, 64))


def _square(color: str, x: float, y: float, area: int = 64) -> DetectedObject:
    side = int(area**0.5)
    return DetectedObject(color=color, shape="square", centroid=(x, y), bbox=(0, 0, side, side), area=area,
                          position=position_of(x, y), mask=np.ones((side, side), dtype=bool))  # fmt: skip


def test_region_margin_is_positive_exactly_where_position_of_names_the_region():
    grid = np.linspace(0.01, 0.99, 41)
    for x in grid:
        for y in grid:
            region = position_of(x, y)
            for position in POSITIONS:
                margin = region_margin(x, y, position)
                if abs(margin) > 1e-9:
                    assert (margin > 0) == (position == region), (x, y, position, region, margin)


def test_region_margin_rejects_an_unknown_position():
    with pytest.raises(ValueError, match="unknown position 'middle'"):
        region_margin(0.5, 0.5, "middle")


def test_shape_probabilities_sum_to_one_and_peak_at_classify_shape():
    for scene in [dataclasses.replace(SCENE, shape=shape, count=1) for shape in ("circle", "square", "triangle",
                                                                                 "diamond")]:  # fmt: skip
        (obj,) = analyze(render(scene)).objects
        probabilities = shape_probabilities(obj.mask)
        assert sum(probabilities.values()) == pytest.approx(1.0)
        assert max(probabilities, key=probabilities.get) == classify_shape(obj.mask) == scene.shape


def test_soft_alignment_score_is_near_one_on_renders_of_many_prompts():
    texts = prompts(60, seed=3) + prompts(20, seed=3, split="held_out")
    scores = soft_alignment_score([render(text, seed=i) for i, text in enumerate(texts)], texts)
    assert min(scores) > 0.9


def test_soft_alignment_score_is_lower_on_each_kind_of_wrong_image():
    wrong = [dataclasses.replace(SCENE, color="blue"), dataclasses.replace(SCENE, count=3),
             dataclasses.replace(SCENE, position="right"), dataclasses.replace(SCENE, background="black"),
             dataclasses.replace(SCENE, shape="square")]  # fmt: skip
    text = prompt_text(SCENE)
    (right,) = soft_alignment_score([render(SCENE)], [text])
    scores = soft_alignment_score([render(s) for s in wrong], [text] * len(wrong))
    assert all(score < right - 0.03 for score in scores), (right, scores)


def test_soft_position_credit_rises_as_the_target_moves_into_its_region():
    scene = dataclasses.replace(SCENE, count=1, shape="square")
    credits = [soft_attributes(_observation(_square("red", x, 0.5)), scene)["position"]
               for x in (0.8, 0.5, 0.3, 0.24, 0.2, 0.1)]  # fmt: skip
    assert credits == sorted(credits) and credits[0] < 0.01 and credits[-1] > 0.99


def test_soft_count_credit_grades_the_distance_to_the_requested_count():
    scene = dataclasses.replace(SCENE, count=3, shape="square")
    counts = [soft_attributes(_observation(*[_square("red", 0.1, 0.2 + 0.2 * i) for i in range(n)]), scene)["count"]
              for n in range(5)]  # fmt: skip
    p = shape_probabilities(np.ones((8, 8), dtype=bool))["square"]  # a full box is a square, with some doubt
    assert p > 0.9
    assert counts == pytest.approx([max(0.0, 1 - abs(n * p - 3) / 2) for n in range(5)])


def test_soft_color_and_exclusive_credit_are_shares_of_object_area():
    scene = dataclasses.replace(SCENE, count=1, shape="square")
    credits = soft_attributes(_observation(_square("red", 0.1, 0.5, area=81), _square("blue", 0.8, 0.5, area=27)),
                              scene)  # fmt: skip
    assert credits["color"] == pytest.approx(0.75)
    assert credits["exclusive"] == pytest.approx(0.75 * shape_probabilities(np.ones((9, 9), dtype=bool))["square"])


def test_soft_attributes_of_an_empty_image_match_check_attributes():
    credits = soft_attributes(_observation(), SCENE)
    assert credits == {"background": 1.0, "color": 0.0, "shape": 0.0, "count": 0.0, "position": 0.0,
                       "exclusive": 1.0}  # fmt: skip


def test_soft_alignment_score_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="got 1 images for 2 prompts"):
        soft_alignment_score([render(SCENE)], [prompt_text(SCENE)] * 2)


def test_online_rewards_log_alignment_score_at_weight_zero_beside_a_graded_reward():
    config = DemoConfig(tailorpo_reward="alignment_score", nft_reward="soft_alignment_score")
    assert online_rewards(config, "tailorpo") == {"reward_funcs": alignment_score}
    rewards = online_rewards(config, "nft")
    assert rewards["reward_funcs"] == [soft_alignment_score, alignment_score]
    assert rewards["reward_weights"] == [1.0, 0.0]


@pytest.mark.parametrize("name", ["tailorpo_reward", "grpo_reward", "nft_reward"])
def test_demo_config_names_the_choices_of_an_unknown_online_reward(name):
    with pytest.raises(ValueError, match=f"{name} must be one of .*soft_alignment_score.*got 'clip'"):
        DemoConfig(**{name: "clip"})


def test_both_alignment_rewards_share_one_analysis_per_image(monkeypatch):
    from trl_rpo.shapes import evaluate

    seen = []
    monkeypatch.setattr(evaluate, "analyze", lambda image: seen.append(image) or analyze(image))
    monkeypatch.setattr(evaluate, "_OBSERVATIONS", type(evaluate._OBSERVATIONS)())
    images = [render(SCENE, seed=11), render(dataclasses.replace(SCENE, color="blue"), seed=11)]
    texts = [prompt_text(SCENE)] * 2
    hard, soft = alignment_score(images, texts), soft_alignment_score(images, texts)
    assert len(seen) == 2 and hard[0] == 1.0 > hard[1] and soft[0] > soft[1]
    assert alignment_score([images[1].copy()], texts[:1]) == hard[1:] and len(seen) == 2  # keyed by pixels


def test_the_analysis_cache_keeps_a_bounded_number_of_images(monkeypatch):
    from trl_rpo.shapes import evaluate

    monkeypatch.setattr(evaluate, "_OBSERVATIONS", type(evaluate._OBSERVATIONS)())
    monkeypatch.setattr(evaluate, "_OBSERVATIONS_KEPT", 3)
    texts = prompts(5, seed=4)
    alignment_score([render(text) for text in texts], texts)
    assert len(evaluate._OBSERVATIONS) == 3
