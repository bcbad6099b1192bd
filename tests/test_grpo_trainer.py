import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_rpo import DiffusionGRPOConfig, DiffusionGRPOTrainer
from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline, tiny_sdxl_pipeline
from trl_rpo.trainer.grpo_trainer import GroupRepeatSampler, select_train_steps

from ._helpers import FAST_ARGS, brightness

PROMPTS = Dataset.from_dict({"prompt": ["a red square", "a blue circle", "a green triangle", "a yellow star"]})



def darkness(images, prompts, **kwargs):
    return [-b for b in brightness(images, prompts)]


def grpo_config(output_dir, **overrides):
    defaults = dict(FAST_ARGS, max_steps=1, per_device_train_batch_size=4, num_generations=2, num_inference_steps=4,
                    guidance_scale=2.0)  # fmt: skip
    return DiffusionGRPOConfig(output_dir=str(output_dir), **{**defaults, **overrides})


def make_trainer(output_dir, sdxl=False, reward_funcs=brightness, lora=True, **overrides):
    pipe = tiny_sdxl_pipeline() if sdxl else tiny_sd_pipeline()
    return DiffusionGRPOTrainer(
        model=pipe,
        reward_funcs=reward_funcs,
        args=grpo_config(output_dir, **overrides),
        train_dataset=PROMPTS,
        peft_config=tiny_lora_config() if lora else None,
    )


def _logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match=r"per_device_train_batch_size \(6\).*num_generations \(4\)"):
        DiffusionGRPOConfig(output_dir="x", per_device_train_batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        DiffusionGRPOConfig(output_dir="x", per_device_train_batch_size=4, num_generations=1)
    with pytest.raises(ValueError, match="timestep_fraction"):
        DiffusionGRPOConfig(output_dir="x", timestep_fraction=0.0)
    with pytest.raises(ValueError, match="scale_rewards"):
        DiffusionGRPOConfig(output_dir="x", scale_rewards="rank")
    assert DiffusionGRPOConfig(output_dir="x", scale_rewards="false").scale_rewards == "none"
    assert DiffusionGRPOConfig(output_dir="x", scale_rewards="true").scale_rewards == "group"


def test_group_repeat_sampler_repeats_prompts_in_groups_and_chunks_per_iteration():
    sampler = GroupRepeatSampler(5, group_size=2, chunk_size=2, repeat_count=2, shuffle=False)
    assert list(sampler) == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]  # the fifth prompt is an incomplete chunk
    assert len(sampler) == 16
    shuffled = list(GroupRepeatSampler(6, group_size=3, chunk_size=3, shuffle=True, seed=1))
    groups = [shuffled[i : i + 3] for i in range(0, len(shuffled), 3)]
    assert all(len(set(g)) == 1 for g in groups) and sorted(g[0] for g in groups) == list(range(6))
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        GroupRepeatSampler(1, group_size=2, chunk_size=2)


def test_select_train_steps():
    assert select_train_steps([0, 1, 2, 3], 1.0) == [0, 1, 2, 3]
    picked = select_train_steps([0, 1, 2, 3], 0.5, torch.Generator().manual_seed(0))
    assert len(picked) == 2 and picked == sorted(picked) and set(picked) <= {0, 1, 2, 3}
    assert len(select_train_steps([0, 1, 2], 0.01)) == 1
    with pytest.raises(ValueError, match="deterministic"):
        select_train_steps([], 1.0)


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_first_on_policy_step_has_ratio_one_zero_kl_and_logs_trl_metrics(tmp_path, sdxl):
    trainer = make_trainer(tmp_path, sdxl=sdxl, beta=0.05)
    # The training pass recomputes the sampler's log-probabilities exactly: the on-policy ratio is 1.
    prompts = ["a red square", "a blue circle"]
    rollout = trainer.rollout(prompts)
    cond, uncond = trainer.encode_conditioning(prompts)
    with torch.no_grad():
        recomputed = trainer.step_log_probs(trainer.model, rollout, cond, uncond)
    sampled = rollout.log_probs[:, rollout.train_steps].transpose(0, 1)
    ratio = torch.exp(recomputed - sampled)
    # (Batches of another size may round differently in the UNet's kernels: equal to ~1e-5, not bit for bit.)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), ratio
    # The tiny SDXL's scheduler config has no set_alpha_to_one: its last DDIM step is deterministic, never trained.
    assert rollout.train_steps == ([0, 1, 2] if sdxl else [0, 1, 2, 3])
    trainer.train()
    first = _logs(trainer)[0]
    for key in ("reward", "reward_std", "rewards/brightness/mean", "rewards/brightness/std", "kl", "clip_ratio",
                "frac_reward_zero_std", "logps/sampling_gap", "time/sampling_s", "time/training_s"):  # fmt: skip
        assert key in first, key
    assert first["kl"] == 0.0  # LoRA starts as the reference
    assert first["clip_ratio"] == 0.0  # ratio exactly 1: nothing clipped
    assert first["logps/sampling_gap"] < 1e-4
    # With rho = 1 the loss is -mean(A), and A is centred per group: 0 up to float32 rounding of the group means,
    # which the division by a small group std (near-identical tiny-model images) amplifies to ~1e-4.
    assert math.isfinite(first["loss"]) and abs(first["loss"]) < 1e-3


def test_beta_zero_runs_no_reference_and_full_finetuning_keeps_no_copy(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, lora=False, beta=0.0)
    assert trainer.ref_model is None
    monkeypatch.setattr(trainer, "reference_model", lambda: pytest.fail("beta=0 must not use the reference"))
    trainer.train()
    assert "kl" not in _logs(trainer)[0]


def test_same_latent_shares_the_starting_noise_within_a_group_only(tmp_path):
    trainer = make_trainer(tmp_path, same_latent=True, num_generations=2, per_device_train_batch_size=4)
    rollout = trainer.rollout(["a red square", "a blue circle"])
    start = rollout.latents[:, 0]
    assert torch.equal(start[0], start[1]) and torch.equal(start[2], start[3])
    assert not torch.equal(start[0], start[2])
    assert not torch.equal(rollout.latents[0, -1], rollout.latents[1, -1])  # the step noise still differs
    plain = make_trainer(tmp_path / "plain").rollout(["a red square", "a blue circle"])
    assert not torch.equal(plain.latents[0, 0], plain.latents[1, 0])


def test_advantages_are_group_normalised_and_ties_give_zero(tmp_path):
    values = iter([[1.0, 3.0, 5.0, 5.0]])

    def fixed(images, prompts, **kwargs):
        return next(values)

    trainer = make_trainer(tmp_path, reward_funcs=fixed)
    rollout = trainer.rollout(["a red square", "a blue circle"])
    s = math.sqrt(2.0)
    assert rollout.advantages.tolist() == pytest.approx([-1 / s, 1 / s, 0.0, 0.0], rel=1e-3)
    assert rollout.group_std.tolist() == pytest.approx([s, 0.0])


def test_constant_reward_has_zero_std_groups_and_a_zero_loss(tmp_path):
    trainer = make_trainer(tmp_path, reward_funcs=lambda images, prompts, **k: [0.5] * len(images))
    trainer.train()
    first = _logs(trainer)[0]
    assert first["frac_reward_zero_std"] == 1.0 and first["reward_std"] == 0.0
    assert first["loss"] == 0.0


def test_num_iterations_reuses_each_rollout_and_moves_the_ratio(tmp_path):
    trainer = make_trainer(tmp_path, num_iterations=2, max_steps=2, learning_rate=5e-2, epsilon=0.01)
    calls = []
    real = trainer.rollout

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    trainer.rollout = counting
    trainer.train()
    assert len(calls) == 1  # two optimizer steps, one rollout
    logs = _logs(trainer)
    assert logs[0]["clip_ratio"] == 0.0
    assert logs[1]["clip_ratio"] > 0.0  # the second step's policy moved off the rollout's (clipped at 1 +- 0.01)


def test_timestep_fraction_trains_a_subset_of_steps(tmp_path):
    trainer = make_trainer(tmp_path, timestep_fraction=0.5)
    rollout = trainer.rollout(["a red square", "a blue circle"])
    assert len(rollout.train_steps) == 2
    cond, uncond = trainer.encode_conditioning(rollout.prompts)
    assert trainer.step_log_probs(trainer.model, rollout, cond, uncond).shape == (2, 4)


def _held_out_brightness(trainer):
    gen = torch.Generator().manual_seed(1234)
    images = trainer.pipeline(["a red square", "a blue circle"] * 2, num_inference_steps=4, guidance_scale=2.0,
                              generator=gen, output_type="pil").images  # fmt: skip
    return float(np.mean(brightness(images, None)))


def test_grpo_raises_brightness_and_lowers_it_when_the_sign_flips(tmp_path):
    common = dict(max_steps=8, learning_rate=1e-2, per_device_train_batch_size=8, num_generations=4)
    up = make_trainer(tmp_path / "up", reward_funcs=brightness, **common)
    down = make_trainer(tmp_path / "down", reward_funcs=darkness, **common)
    before = _held_out_brightness(up)
    assert _held_out_brightness(down) == pytest.approx(before)  # same base model, same seeds
    up.train()
    down.train()
    after_up, after_down = _held_out_brightness(up), _held_out_brightness(down)
    assert after_up > before > after_down, (before, after_up, after_down)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_models_sample_with_the_sde_and_start_on_policy(tmp_path, family):
    from trl_rpo.testing import tiny_flux_pipeline, tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline()
    args = grpo_config(tmp_path, beta=0.05, resolution=32, max_sequence_length=32)  # the tiny models' sizes
    trainer = DiffusionGRPOTrainer(model=pipe, reward_funcs=brightness, args=args, train_dataset=PROMPTS,
                                   peft_config=tiny_lora_config())  # fmt: skip
    prompts = ["a red square", "a blue circle"]
    rollout = trainer.rollout(prompts)
    assert rollout.train_steps == [0, 1, 2, 3]  # every flow SDE step is Gaussian, the last one included
    assert torch.isfinite(rollout.log_probs).all()
    cond, uncond = trainer.encode_conditioning(prompts)
    with torch.no_grad():
        recomputed = trainer.step_log_probs(trainer.model, rollout, cond, uncond)
    ratio = torch.exp(recomputed - rollout.log_probs[:, rollout.train_steps].transpose(0, 1))
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), ratio
    trainer.train()
    first = _logs(trainer)[0]
    assert first["kl"] == 0.0 and first["clip_ratio"] == 0.0 and math.isfinite(first["loss"])
