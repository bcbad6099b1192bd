"""TailorPO on rectified-flow models (SD3, FLUX): the flow SDE sampler with step log-probabilities."""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_rpo import TailorPOConfig, TailorPOTrainer
from trl_rpo.diffusion import flow_sde_step_with_logprob
from trl_rpo.testing import tiny_flux_pipeline, tiny_lora_config, tiny_sd3_pipeline

from ._helpers import FAST_ARGS, brightness

torch.set_num_threads(1)

PROMPTS = Dataset.from_dict({"prompt": ["a red square", "a blue circle", "a green triangle", "a yellow star"]})
BUILDERS = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}
T5_LENGTH = 16



def darkness(images, prompts, **kwargs):
    return [-b for b in brightness(images, prompts)]


def make_trainer(output_dir, family, reward_funcs=brightness, **overrides):
    defaults = dict(
        FAST_ARGS,
        max_steps=1,
        num_inference_steps=4,
        guidance_scale=1.0,
        timestep_selection="all",
        resolution=32,
        max_sequence_length=T5_LENGTH,
    )
    return TailorPOTrainer(
        model=BUILDERS[family](),
        reward_funcs=reward_funcs,
        args=TailorPOConfig(output_dir=str(output_dir), **{**defaults, **overrides}),
        train_dataset=PROMPTS,
        peft_config=tiny_lora_config(),
    )


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_tailorpo_trains_with_finite_losses_and_pairs_from_one_parent(tmp_path, family):
    trainer = make_trainer(tmp_path, family, max_steps=2, guidance_scale=2.0)
    assert trainer.is_flow and type(trainer.sample_scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    prompts = ["a red square", "a blue circle"]
    pairs = trainer.sample_pairs(prompts, generator=torch.Generator().manual_seed(0))
    assert len(pairs) == 2 * 4 and pairs.shared_parent  # one (best, worst) pair per prompt and step
    torch.testing.assert_close(pairs.parent_chosen, pairs.parent_rejected)
    # Each child is a draw of the flow SDE from its parent: its log-probability under the policy is that density.
    cond, uncond = trainer.encode_conditioning(prompts)
    with torch.no_grad():
        logp_c, _ = trainer.step_log_probs(trainer.model, pairs, cond, uncond)
        c = {k: v[pairs.prompt_index] for k, v in cond.items()}
        u = {k: v[pairs.prompt_index] for k, v in uncond.items()}
        velocity = trainer.guided_prediction(trainer.model, pairs.parent_chosen, pairs.timesteps, c, u)
    sigma, next_sigma = trainer._flow_sigmas(pairs.timesteps)
    _, expected, mean, std = flow_sde_step_with_logprob(
        velocity, sigma, next_sigma, pairs.parent_chosen, 0.7, prev_sample=pairs.chosen,
        sigma_max=trainer.flow_sigma_max(),
    )  # fmt: skip
    assert trainer.flow_sigma_max() == pytest.approx(float(trainer.sample_scheduler.sigmas[1]))
    torch.testing.assert_close(logp_c, expected)
    density = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(pairs.chosen).mean(dim=(1, 2, 3))
    torch.testing.assert_close(logp_c, density)
    assert sorted(set(next_sigma.tolist()))[0] == 0.0  # the last step (to sigma 0) is paired too

    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)  # policy == reference on the first step


def _held_out_brightness(pipe):
    images = pipe(
        ["a red square", "a blue circle"] * 2,
        num_inference_steps=4,
        guidance_scale=1.0,
        height=32,
        width=32,
        max_sequence_length=T5_LENGTH,
        generator=torch.Generator().manual_seed(1234),
    ).images
    return float(np.mean(brightness(images, None)))


@pytest.mark.slow
def test_flow_tailorpo_on_brightness_moves_the_reward_the_way_its_sign_says(tmp_path):
    """Paired +/-: the same run with the reward's sign flipped must end darker than with it as is."""
    results = {}
    for name, reward in (("up", brightness), ("down", darkness)):
        trainer = make_trainer(
            tmp_path / name, "sd3", reward, max_steps=6, learning_rate=3e-3, num_candidates=4, beta=50.0,
            clip_range=None,
        )  # fmt: skip
        before = _held_out_brightness(trainer.pipeline)
        trainer.train()
        results[name] = (before, _held_out_brightness(trainer.pipeline))
    assert results["up"][0] == pytest.approx(results["down"][0])  # same start
    assert results["up"][1] > results["up"][0]
    assert results["down"][1] < results["down"][0]
