"""Verifiers decide whether an edit is really better than the original, and say why."""

import dataclasses

import pytest
from PIL import Image

from trl_rpo.data.verifiers import ChangeGuard, CriticRecheckVerifier, RewardMarginVerifier, pixel_distance
from trl_rpo.shapes import Critic, alignment_score, parse_prompt, render

PROMPT = "two red circles on the left, on a white background"


def _good():
    return render(PROMPT)


def _wrong_background():
    return render(dataclasses.replace(parse_prompt(PROMPT), background="black"))


def _constant(value):
    def reward(images, prompts, **kwargs):
        return [value] * len(images)

    return reward


# ---------------------------------------------------------------- reward margin


def test_reward_margin_keeps_an_edit_the_reward_prefers():
    verifier = RewardMarginVerifier(alignment_score)
    assert verifier([_wrong_background()], [_good()], [PROMPT]) == [True]


def test_reward_margin_rejects_an_edit_the_reward_finds_worse():
    verifier = RewardMarginVerifier(alignment_score)
    assert verifier([_good()], [_wrong_background()], [PROMPT]) == [False]


def test_reward_margin_rejects_a_tie_because_the_edit_must_be_strictly_better():
    assert RewardMarginVerifier(alignment_score)([_good()], [_good()], [PROMPT]) == [False]


def test_reward_margin_requires_more_than_the_margin():
    # alignment improves by 1/6 when only the background is wrong
    assert RewardMarginVerifier(alignment_score, margin=0.1)([_wrong_background()], [_good()], [PROMPT]) == [True]
    assert RewardMarginVerifier(alignment_score, margin=0.2)([_wrong_background()], [_good()], [PROMPT]) == [False]


def test_reward_margin_decides_on_the_weighted_sum_of_several_rewards():
    def penalizes_edits(images, prompts, **kwargs):
        return [0.0 if image.getpixel((0, 0)) == (255, 255, 255) else 1.0 for image in images]

    original, edit = _wrong_background(), _good()
    assert RewardMarginVerifier([alignment_score, penalizes_edits], weights=[1.0, 1.0])(
        [original], [edit], [PROMPT]
    ) == [False]
    assert RewardMarginVerifier([alignment_score, penalizes_edits], weights=[10.0, 1.0])(
        [original], [edit], [PROMPT]
    ) == [True]


def test_reward_margin_reports_each_reward_of_both_images_and_the_delta():
    (verdict,) = RewardMarginVerifier(alignment_score).verify([_wrong_background()], [_good()], [PROMPT])
    assert verdict.scores["alignment_score/chosen"] == pytest.approx(1.0)
    assert verdict.scores["alignment_score/rejected"] == pytest.approx(5 / 6)
    assert verdict.scores["reward_margin/delta"] == pytest.approx(1 / 6)


def test_reward_margin_refuses_mismatched_weights():
    with pytest.raises(ValueError, match="2 weights for 1 reward functions"):
        RewardMarginVerifier(alignment_score, weights=[1.0, 2.0])


def test_verifier_refuses_inputs_of_different_lengths():
    with pytest.raises(ValueError, match="as many originals, edits and prompts"):
        RewardMarginVerifier(_constant(0.0))([_good()], [], [PROMPT])


# ---------------------------------------------------------------- critic re-check


def test_critic_recheck_keeps_an_edit_with_fewer_instructions():
    assert CriticRecheckVerifier(Critic())([_wrong_background()], [_good()], [PROMPT]) == [True]


def test_critic_recheck_rejects_an_edit_that_leaves_as_much_to_fix():
    assert CriticRecheckVerifier(Critic())([_wrong_background()], [_wrong_background()], [PROMPT]) == [False]


def test_critic_recheck_with_require_none_rejects_an_edit_that_still_needs_work():
    scene = dataclasses.replace(parse_prompt(PROMPT), background="black", color="blue")
    half_fixed = render(dataclasses.replace(scene, background="white"))
    assert CriticRecheckVerifier(Critic())([render(scene)], [half_fixed], [PROMPT]) == [True]
    assert CriticRecheckVerifier(Critic(), require_none=True)([render(scene)], [half_fixed], [PROMPT]) == [False]


def test_critic_recheck_uses_given_critiques_instead_of_criticizing_the_originals_again():
    calls = []

    def critic(images, prompts):
        calls.append(len(images))
        return [{"critique": "fine", "instructions": []} for _ in images]

    before = [{"critique": "bad", "instructions": ["fix it"]}]
    assert CriticRecheckVerifier(critic)([_good()], [_good()], [PROMPT], critiques=before) == [True]
    assert calls == [1]


# ---------------------------------------------------------------- change guard


def test_change_guard_rejects_an_edit_that_changed_nothing():
    assert ChangeGuard()([_good()], [_good()], [PROMPT]) == [False]


def test_change_guard_rejects_an_edit_that_replaced_the_whole_image():
    black, white = Image.new("RGB", (32, 32), "black"), Image.new("RGB", (32, 32), "white")
    assert ChangeGuard(max_change=0.5)([black], [white], [PROMPT]) == [False]


def test_change_guard_keeps_an_edit_inside_the_window():
    original = _good()
    edit = original.copy()
    edit.paste((0, 0, 255), (0, 0, 8, 8))
    assert ChangeGuard(min_change=0.001, max_change=0.5)([original], [edit], [PROMPT]) == [True]


def test_change_guard_compares_images_of_different_sizes_at_the_original_size():
    original = Image.new("RGB", (32, 32), "white")
    assert pixel_distance(original, Image.new("RGB", (64, 64), "white")) == 0.0


def test_change_guard_changed_fraction_counts_pixels_beyond_the_tolerance():
    original = Image.new("RGB", (10, 10), (100, 100, 100))
    edit = original.copy()
    edit.paste((200, 100, 100), (0, 0, 5, 10))  # half the pixels, far beyond tolerance
    edit.paste((102, 100, 100), (5, 0, 10, 10))  # the other half, within tolerance
    assert pixel_distance(original, edit, metric="changed_fraction") == pytest.approx(0.5)
    (verdict,) = ChangeGuard(metric="changed_fraction").verify([original], [edit], [PROMPT])
    assert verdict.scores == {"change_guard/changed_fraction": pytest.approx(0.5)}


def test_change_guard_refuses_an_empty_or_inverted_window():
    with pytest.raises(ValueError, match="min_change <= max_change"):
        ChangeGuard(min_change=0.6, max_change=0.5)
