"""Reward-labelled pairs: two samples per prompt, the reward picks chosen and rejected."""

import pytest
from PIL import Image

from trl_rpo.data import build_reward_pairs
from trl_rpo.testing import tiny_sd_pipeline

from ._helpers import brightness


def _generator(calls):
    """Image brightness = seed (mod 256), so the reward below is known for every seed."""

    def generate(prompts, seeds):
        calls.append(list(seeds))
        return [Image.new("RGB", (8, 8), (s % 256,) * 3) for s in seeds]

    return generate



def test_best_image_is_chosen_and_worst_rejected_with_builder_seeds():
    calls = []
    pairs, counts = build_reward_pairs(_generator(calls), ["a", "b"], brightness, images_per_prompt=3, seed=10,
                                       batch_size=4)  # fmt: skip
    assert [s for batch in calls for s in batch] == [10, 11, 12, 13, 14, 15]
    assert counts == {"prompts": 2, "images": 6, "pairs": 2, "ties": 0}
    assert pairs["prompt"] == ["a", "b"]
    assert [img.getpixel((0, 0))[0] for img in pairs["chosen"]] == [12, 15]
    assert [img.getpixel((0, 0))[0] for img in pairs["rejected"]] == [10, 13]
    assert pairs["seed"] == [10, 13] and pairs[0]["chosen_score"] > pairs[0]["rejected_score"]


def test_prompts_whose_samples_tie_give_no_pair():
    def flat(images, prompts, **kwargs):
        return [0.5] * len(images)

    pairs, counts = build_reward_pairs(_generator([]), ["a", "b", "c"], flat)
    assert len(pairs) == 0 and counts["ties"] == 3 and counts["images"] == 6


def test_tie_margin_skips_small_differences():
    pairs, counts = build_reward_pairs(_generator([]), ["a"], brightness, seed=0, tie_margin=0.01)
    assert len(pairs) == 0 and counts["ties"] == 1  # brightness 0/255 vs 1/255


def test_one_image_per_prompt_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        build_reward_pairs(_generator([]), ["a"], brightness, images_per_prompt=1)


def test_empty_prompt_is_named_by_index():
    with pytest.raises(ValueError, match="prompt 1"):
        build_reward_pairs(_generator([]), ["a", " "], brightness)


def test_generator_returning_too_few_images_is_an_error():
    with pytest.raises(ValueError, match="returned 1 images for 2 prompts"):
        build_reward_pairs(lambda prompts, seeds: [Image.new("RGB", (4, 4))], ["a"], brightness)


def test_a_diffusers_pipeline_is_a_generator_and_pairs_train_dpo(tmp_path):
    from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer

    pairs, counts = build_reward_pairs(tiny_sd_pipeline(), ["red", "blue"], brightness, num_inference_steps=2,
                                       guidance_scale=1.0)  # fmt: skip
    assert counts["images"] == 4 and pairs[0]["chosen"].size == (32, 32)
    trainer = DiffusionDPOTrainer(
        model=tiny_sd_pipeline(),
        args=DiffusionDPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=1, report_to=[],
                                save_strategy="no"),  # fmt: skip
        train_dataset=pairs,
    )
    assert trainer.train().training_loss > 0
