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


def test_select_train_steps_first_takes_the_noisiest_steps():
    assert select_train_steps([0, 1, 2, 3, 4, 5], 0.5, sampling="first") == [0, 1, 2]
    assert select_train_steps([1, 2, 3], 0.01, sampling="first") == [1]
    with pytest.raises(ValueError, match="timestep_sampling"):
        DiffusionGRPOConfig(output_dir="x", timestep_sampling="last")


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
    for key in ("reward", "reward_std", "rewards/brightness/mean", "rewards/brightness/std", "kl",
                "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "frac_reward_zero_std",
                "logps/sampling_gap", "time/sampling_s", "time/training_s"):  # fmt: skip
        assert key in first, key
    assert first["kl"] == 0.0  # LoRA starts as the reference
    assert first["clip_ratio/region_mean"] == 0.0  # ratio exactly 1: nothing clipped
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
    assert logs[0]["clip_ratio/region_mean"] == 0.0
    assert logs[1]["clip_ratio/region_mean"] > 0.0  # the second step's policy moved off the rollout's (1 +- 0.01)


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
    assert first["kl"] == 0.0 and first["clip_ratio/region_mean"] == 0.0 and math.isfinite(first["loss"])


# -- the review's faults (issue 28): each test fails on the code before the fix ---------------------------------------


def test_default_epsilon_clips_once_the_policy_moved_off_the_rollout(tmp_path):
    # Per-dimension-mean log-probabilities move a ratio by ~1e-4 per step: TRL's text default 0.2 never clipped.
    trainer = make_trainer(tmp_path, num_iterations=2, max_steps=2, learning_rate=1e-3)
    assert trainer.args.epsilon == 1e-4
    trainer.train()
    logs = _logs(trainer)
    assert logs[0]["clip_ratio/region_mean"] == 0.0  # on-policy
    assert logs[1]["clip_ratio/region_mean"] > 0.0
    assert logs[1]["clip_ratio/region_mean"] == pytest.approx(
        logs[1]["clip_ratio/low_mean"] + logs[1]["clip_ratio/high_mean"]
    )


def test_reward_std_is_the_std_of_the_batch_and_zero_std_groups_use_isclose(tmp_path):
    values = iter([[1.0, 3.0, 0.1 + 0.2, 0.3]])  # the second group's rewards differ by float rounding only

    def fixed(images, prompts, **kwargs):
        return next(values)

    trainer = make_trainer(tmp_path, reward_funcs=fixed)
    trainer.train()
    first = _logs(trainer)[0]
    assert first["reward_std"] == pytest.approx(float(np.std([1.0, 3.0, 0.3, 0.3], ddof=1)), rel=1e-5)  # TRL
    assert first["frac_reward_zero_std"] == 0.5  # the float-rounding group counts as tied


def test_scale_rewards_batch_divides_by_the_std_over_every_process(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, scale_rewards="batch")
    seen = []

    def pooled(values):  # what the all-reduce over processes returns: here, a larger batch elsewhere
        seen.append(values.clone())
        return 0.0, 4.0, 16.0

    monkeypatch.setattr(trainer, "_pooled_moments", pooled)
    advantages, _ = trainer.compute_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]))
    assert len(seen) == 1
    assert advantages.tolist() == pytest.approx([-1 / 4.0001, 1 / 4.0001, 0.0, 0.0], rel=1e-6)


def test_beta_zero_with_lora_logs_the_kl_on_logged_steps_and_log_kl_false_skips_the_reference(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "kl", beta=0.0, max_steps=2, learning_rate=5e-2)
    trainer.train()
    logs = _logs(trainer)
    assert logs[0]["kl"] == 0.0 and logs[1]["kl"] > 0.0  # the policy moved off the reference after step 1
    quiet = make_trainer(tmp_path / "quiet", beta=0.0, log_kl=False)
    monkeypatch.setattr(quiet, "reference_model", lambda: pytest.fail("beta=0, log_kl=False: no reference pass"))
    quiet.train()
    assert "kl" not in _logs(quiet)[0]


def test_kl_term_adds_beta_times_the_gaussian_step_kl_to_the_loss(tmp_path):
    from trl_rpo.diffusion import gaussian_kl

    trainer = make_trainer(tmp_path, beta=0.5)
    for p in trainer._trainable_parameters:  # move the LoRA off the reference
        torch.nn.init.normal_(p, std=0.05)
    prompts = ["a red square", "a blue circle"]
    cond, uncond = trainer.encode_conditioning(prompts)
    rollout = trainer.rollout(prompts, (cond, uncond))
    with torch.no_grad():
        _, mean, std = trainer.step_distributions(trainer.model, rollout, cond, uncond)
        with trainer.reference_model() as reference:
            _, ref_mean, _ = trainer.step_distributions(reference, rollout, cond, uncond)
    expected_kl = gaussian_kl(mean, ref_mean, std).mean().item()
    assert expected_kl > 1e-4
    trainer._get_rollout = lambda *a, **k: (rollout, True)
    trainer.model.train()
    batch = {"prompt": [p for p in prompts for _ in range(2)]}
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        trainer.args.beta = 0.0
        surrogate = trainer.compute_loss(trainer.model, batch)
    assert (loss - surrogate).item() == pytest.approx(0.5 * expected_kl, rel=1e-4)


def test_resume_between_two_iterations_of_one_rollout_continues_it_exactly(tmp_path):
    import shutil

    common = dict(num_iterations=2, max_steps=2, learning_rate=1e-3, save_strategy="steps", save_steps=1)
    full = make_trainer(tmp_path / "full", **common)
    full.train()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-1", resumed_dir / "checkpoint-1")
    resumed = make_trainer(resumed_dir, **common)
    calls = []
    real = resumed.rollout
    resumed.rollout = lambda *a, **k: calls.append(1) or real(*a, **k)
    resumed.train(resume_from_checkpoint=str(resumed_dir / "checkpoint-1"))
    assert calls == []  # step 2 reuses step 1's rollout, read back from the checkpoint
    want, got = _logs(full)[1], _logs(resumed)[-1]
    for key in ("loss", "clip_ratio/region_mean", "logps/policy"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-9), key


def test_group_repeat_sampler_order_depends_on_the_epoch_only():
    first = GroupRepeatSampler(8, group_size=2, chunk_size=2, shuffle=True, seed=3)
    epoch0, epoch1 = list(first), list(first)  # a sampler iterated twice moves on
    assert epoch0 != epoch1
    resumed = GroupRepeatSampler(8, group_size=2, chunk_size=2, shuffle=True, seed=3)
    resumed.set_epoch(1)  # what Trainer calls when a run resumes in epoch 1
    assert list(resumed) == epoch1
    again = GroupRepeatSampler(8, group_size=2, chunk_size=2, shuffle=True, seed=3)
    again.set_epoch(0)
    assert list(again) == epoch0


def _flux_trainer(tmp_path, **overrides):
    from trl_rpo.testing import tiny_flux_pipeline

    args = grpo_config(tmp_path, resolution=32, max_sequence_length=32, **overrides)
    return DiffusionGRPOTrainer(model=tiny_flux_pipeline(), reward_funcs=brightness, args=args, train_dataset=PROMPTS,
                                peft_config=tiny_lora_config())  # fmt: skip


def test_flux_rollouts_use_the_pipelines_sigmas(tmp_path):
    trainer = _flux_trainer(tmp_path, num_inference_steps=4)
    trainer._set_sampling_timesteps("cpu")
    pipe = trainer.pipeline
    pipe(["a red square"], num_inference_steps=4, height=32, width=32, max_sequence_length=32, output_type="latent",
         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.allclose(trainer.sample_scheduler.sigmas, pipe.scheduler.sigmas.cpu(), atol=1e-6)
    assert torch.allclose(trainer.sample_scheduler.timesteps, pipe.scheduler.timesteps.cpu(), atol=1e-3)


def test_flux_rollouts_run_no_unconditional_branch_unless_true_cfg_is_asked(tmp_path):
    def batch_sizes(trainer):
        sizes = []
        hook = trainer.pipeline.transformer.register_forward_hook(lambda m, a, k, out: sizes.append(k["hidden_states"].shape[0]), with_kwargs=True)  # noqa: E501
        trainer.rollout(["a red square", "a blue circle"])
        hook.remove()
        return set(sizes)

    assert batch_sizes(_flux_trainer(tmp_path / "plain", guidance_scale=4.5)) == {4}  # FluxPipeline's default
    assert batch_sizes(_flux_trainer(tmp_path / "true_cfg", true_cfg_scale=2.0)) == {8}


# -- throughput options (issue 30) -----------------------------------------------------------------------------------


def test_select_sde_window_draws_consecutive_steps_inside_its_range():
    from trl_rpo.trainer.rollouts import select_sde_window

    starts = set()
    for seed in range(40):
        window = select_sde_window(2, (1, 5), torch.Generator().manual_seed(seed))
        assert window == [window[0], window[0] + 1] and 1 <= window[0] <= 3
        starts.add(window[0])
    assert starts == {1, 2, 3}
    with pytest.raises(ValueError, match="does not fit"):
        select_sde_window(3, (0, 2))


def test_sde_window_config_names_the_fields_it_rejects():
    with pytest.raises(ValueError, match=r"sde_window_range \[2, 9\].*num_inference_steps=4"):
        DiffusionGRPOConfig(output_dir="x", num_inference_steps=4, sde_window_size=2, sde_window_range=[2, 9])
    with pytest.raises(ValueError, match="leave timestep_fraction at 1"):
        DiffusionGRPOConfig(output_dir="x", sde_window_size=2, timestep_fraction=0.5)


def test_sde_window_samples_ode_outside_the_window_and_trains_only_its_steps(tmp_path):
    trainer = make_trainer(tmp_path, num_inference_steps=6, sde_window_size=2, sde_window_range=[1, 4])
    rollout = trainer.rollout(["a red square", "a blue circle"])
    window = rollout.train_steps
    assert len(window) == 2 and window[1] == window[0] + 1 and 1 <= window[0] <= 2
    outside = [s for s in range(6) if s not in window]
    assert torch.isfinite(rollout.log_probs[:, window]).all()
    assert torch.isnan(rollout.log_probs[:, outside]).all()  # ODE steps: no noise drawn, no log-probability
    # An ODE step is the deterministic DDIM step: recomputing it from the stored parent gives the stored child.
    cond, uncond = trainer.encode_conditioning(rollout.prompts)
    s = outside[0]
    index = rollout.prompt_index
    with torch.no_grad():
        parent = rollout.latents[:, s]
        t = rollout.timesteps[s].expand(len(parent))
        output = trainer.guided_prediction(trainer.model, parent, t, {k: v[index] for k, v in cond.items()},
                                           {k: v[index] for k, v in uncond.items()})  # fmt: skip
        assert torch.allclose(trainer.ode_step(output, t, parent), rollout.latents[:, s + 1], atol=1e-5)
    with torch.no_grad():
        recomputed = trainer.step_log_probs(trainer.model, rollout, cond, uncond)
    assert recomputed.shape == (2, 4)
    assert torch.allclose(recomputed, rollout.log_probs[:, window].transpose(0, 1), atol=1e-4)
    trainer.train()
    assert math.isfinite(_logs(trainer)[0]["loss"])


def test_shared_latent_window_runs_the_steps_before_it_once_per_prompt_with_the_same_trajectories(tmp_path):
    calls = []

    def run(name, share):
        trainer = make_trainer(tmp_path / name, num_inference_steps=6, sde_window_size=2, sde_window_range=[3, 5],
                               same_latent=True)  # fmt: skip
        forward = trainer.unet_forward

        def counting(unet, latents, *args, **kwargs):
            calls.append((name, latents.shape[0]))
            return forward(unet, latents, *args, **kwargs)

        trainer.unet_forward = counting
        if not share:  # the plain path: every image runs every step
            trainer.args.same_latent = False
            trainer.initial_latents = lambda n, generator=None, f=trainer.initial_latents: f(
                n // 2, generator).repeat_interleave(2, dim=0)  # fmt: skip
        return trainer.rollout(["a red square", "a blue circle"], generator=torch.Generator().manual_seed(0))

    shared, plain = run("shared", True), run("plain", False)
    assert shared.train_steps == plain.train_steps and shared.train_steps[0] >= 3
    assert torch.allclose(shared.latents, plain.latents, atol=1e-5)
    assert torch.allclose(shared.log_probs.nan_to_num(), plain.log_probs.nan_to_num(), atol=1e-5)
    before = shared.train_steps[0]
    # CFG doubles each call's batch: 2 prompts x 2 before the window, 4 images x 2 from it on.
    assert [n for name, n in calls if name == "shared"] == [4] * before + [8] * (6 - before)
    assert [n for name, n in calls if name == "plain"] == [8] * 6


def test_guidance_one_rollouts_skip_the_unconditional_branch_and_match_explicit_cfg(tmp_path):
    trainer = make_trainer(tmp_path, guidance_scale=1.0)
    batches = []
    forward = trainer.unet_forward

    def counting(unet, latents, *args, **kwargs):
        batches.append(latents.shape[0])
        return forward(unet, latents, *args, **kwargs)

    trainer.unet_forward = counting
    cfg_free = trainer.rollout(["a red square", "a blue circle"], generator=torch.Generator().manual_seed(0))
    assert batches == [4] * 4  # 4 images, conditional branch only, every step
    # The same rollout with the unconditional branch computed and combined at scale 1 (uncond + 1 (cond - uncond)).
    trainer.model_adapter.guidance_active = lambda scale: True
    explicit = trainer.rollout(["a red square", "a blue circle"], generator=torch.Generator().manual_seed(0))
    assert batches[4:] == [8] * 4
    assert torch.allclose(cfg_free.latents, explicit.latents, atol=1e-5)
    assert torch.allclose(cfg_free.rewards, explicit.rewards, atol=1e-5)


def test_rollout_chunk_and_async_reward_config_checks_name_the_fields():
    with pytest.raises(ValueError, match=r"rollout_chunk_size \(3\) must be a positive multiple of num_generations"):
        DiffusionGRPOConfig(output_dir="x", num_generations=2, per_device_train_batch_size=8, rollout_chunk_size=3)
    with pytest.raises(ValueError, match="async_rewards overlaps scoring.*set rollout_chunk_size below"):
        DiffusionGRPOConfig(output_dir="x", num_generations=2, per_device_train_batch_size=8, async_rewards=True)
    with pytest.raises(ValueError, match="max_pending_rewards must be >= 1"):
        DiffusionGRPOConfig(output_dir="x", max_pending_rewards=0)


def test_async_rewards_give_the_same_rollout_as_inline_scoring(tmp_path):
    prompts = ["a red square", "a blue circle", "a green triangle", "a yellow star"]

    def run(name, **options):
        trainer = make_trainer(tmp_path / name, per_device_train_batch_size=8, rollout_chunk_size=2, **options)
        return trainer.rollout(prompts, generator=torch.Generator().manual_seed(0))

    inline, background = run("inline"), run("async", async_rewards=True, max_pending_rewards=1)
    for field in ("latents", "rewards", "advantages"):
        assert torch.equal(getattr(inline, field), getattr(background, field)), field
    assert torch.equal(inline.log_probs.nan_to_num(), background.log_probs.nan_to_num())
    assert [a.tobytes() for a in inline.images] == [b.tobytes() for b in background.images]


def test_async_rewards_score_a_chunk_on_another_thread_while_the_next_chunk_samples(tmp_path):
    import threading

    scoring_started, sampled_meanwhile = threading.Event(), threading.Event()
    seen = {"threads": set(), "overlapped": []}

    def remote_like(images, prompts, **kwargs):  # a reward that waits for an answer, as a remote server's does
        seen["threads"].add(threading.current_thread().name)
        if not scoring_started.is_set():  # the first chunk: wait to see the denoiser run meanwhile
            scoring_started.set()
            seen["overlapped"].append(sampled_meanwhile.wait(timeout=10))
        return brightness(images, prompts)

    trainer = make_trainer(tmp_path, reward_funcs=remote_like, per_device_train_batch_size=8, rollout_chunk_size=2,
                           async_rewards=True)  # fmt: skip
    forward = trainer.unet_forward

    def watching(*args, **kwargs):
        if scoring_started.is_set():
            sampled_meanwhile.set()
        return forward(*args, **kwargs)

    trainer.unet_forward = watching
    trainer.rollout(["a red square", "a blue circle", "a green triangle", "a yellow star"])
    assert seen["overlapped"] == [True]  # the next chunk sampled while the first was being scored
    assert seen["threads"] and threading.main_thread().name not in seen["threads"]


def test_inline_rewards_score_each_chunk_before_the_next_one_samples(tmp_path):
    order = []

    def recording(images, prompts, **kwargs):
        order.append("score")
        return brightness(images, prompts)

    trainer = make_trainer(tmp_path, reward_funcs=recording, per_device_train_batch_size=8, rollout_chunk_size=4)
    forward = trainer.unet_forward
    trainer.unet_forward = lambda *a, **k: order.append("sample") or forward(*a, **k)
    rollout = trainer.rollout(["a red square", "a blue circle", "a green triangle", "a yellow star"])
    assert order == ["sample"] * 4 + ["score"] + ["sample"] * 4 + ["score"]  # 2 chunks of 4 images, 4 steps each
    assert rollout.latents.shape[0] == 8 and rollout.rewards.shape == (8,)


def test_bf16_rollouts_run_in_the_training_dtype_with_lora_in_float32_and_no_reference_pass(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, bf16=True, use_cpu=True, beta=0.0, log_kl=False)
    unet = trainer._unwrapped_unet()
    frozen = [p for n, p in unet.named_parameters() if "lora" not in n]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)  # frozen weights in the training dtype
    assert all(p.dtype == torch.float32 for n, p in unet.named_parameters() if "lora" in n)
    outputs = []
    unet.conv_in.register_forward_hook(lambda module, inputs, output: outputs.append(output.dtype))
    monkeypatch.setattr(trainer, "reference_model", lambda: pytest.fail("beta=0, log_kl=False: no reference pass"))
    trainer.train()
    assert outputs and set(outputs) == {torch.bfloat16}  # every denoiser call, rollouts and loss, ran in bf16
    assert math.isfinite(_logs(trainer)[0]["loss"])
