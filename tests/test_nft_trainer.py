import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_rpo import DiffusionNFTConfig, DiffusionNFTTrainer
from trl_rpo.losses import diffusion_nft_loss, nft_optimality_probability
from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline

from ._helpers import FAST_ARGS, brightness

PROMPTS = Dataset.from_dict({"prompt": ["a red square", "a blue circle", "a green triangle", "a yellow star"]})


def nft_config(output_dir, **overrides):
    defaults = dict(FAST_ARGS, max_steps=1, per_device_train_batch_size=4, num_generations=2, num_inference_steps=4,
                    guidance_scale=2.0)  # fmt: skip
    return DiffusionNFTConfig(output_dir=str(output_dir), **{**defaults, **overrides})


def make_trainer(output_dir, pipe=None, reward_funcs=brightness, lora=True, **overrides):
    return DiffusionNFTTrainer(
        model=pipe if pipe is not None else tiny_sd_pipeline(),
        reward_funcs=reward_funcs,
        args=nft_config(output_dir, **overrides),
        train_dataset=PROMPTS,
        peft_config=tiny_lora_config() if lora else None,
    )


def _logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


# -- the loss -----------------------------------------------------------------------------------------------------


def test_optimality_probability_maps_clipped_advantages_to_the_unit_interval():
    r = nft_optimality_probability(torch.tensor([-10.0, -5.0, 0.0, 2.5, 7.0]), adv_clip_max=5.0)
    assert r.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.75, 1.0])
    with pytest.raises(ValueError, match="adv_clip_max"):
        nft_optimality_probability(torch.zeros(1), adv_clip_max=0.0)


def test_nft_loss_by_hand():
    # One sample of two dimensions: x0 = (0, 0), policy x0-prediction (1, 0), old (0, 2); beta 0.5, advantage 2.5.
    x0 = torch.zeros(1, 2)
    policy, old = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    losses, positive, negative = diffusion_nft_loss(policy, old, x0, torch.tensor([2.5]), beta=0.5, adv_clip_max=5.0,
                                                    adaptive_weighting=False)  # fmt: skip
    # x0+ = 0.5 (1, 0) + 0.5 (0, 2) = (0.5, 1); x0- = 1.5 (0, 2) - 0.5 (1, 0) = (-0.5, 3); r = 0.75
    assert positive.item() == pytest.approx((0.25 + 1.0) / 2)
    assert negative.item() == pytest.approx((0.25 + 9.0) / 2)
    assert losses.item() == pytest.approx(5.0 * (0.75 * 0.625 + 0.25 * 4.625) / 0.5)
    weighted, positive_w, _ = diffusion_nft_loss(policy, old, x0, torch.tensor([2.5]), beta=0.5, adv_clip_max=5.0)
    assert positive_w.item() == pytest.approx(0.625 / 0.75)  # adaptive weighting: divided by mean |error| = 0.75


def test_nft_gradient_at_the_old_policy_is_the_advantage_weighted_denoising_gradient():
    # beta = 1, no adaptive weighting: d L / d x0_theta = (c / beta) * (2r - 1) * d ||x0_theta - x0||^2 / d x0_theta.
    generator = torch.Generator().manual_seed(0)
    x0, pred = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    advantages = torch.tensor([2.0, 0.0, -1.0])
    policy = pred.clone().requires_grad_(True)
    losses, _, _ = diffusion_nft_loss(policy, pred, x0, advantages, 1.0, adv_clip_max=4.0, adaptive_weighting=False)
    losses.sum().backward()
    r = nft_optimality_probability(advantages, 4.0).unsqueeze(1)
    expected = 4.0 * (2 * r - 1) * 2 * (pred - x0) / 4  # mean over 4 dimensions
    assert torch.allclose(policy.grad, expected, atol=1e-6)
    assert policy.grad[1].abs().max() == 0.0  # an average sample (A = 0) teaches nothing


def test_nft_loss_checks_beta():
    with pytest.raises(ValueError, match="beta"):
        diffusion_nft_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), beta=0.0)


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match="sampler"):
        DiffusionNFTConfig(output_dir="x", sampler="euler")
    with pytest.raises(ValueError, match="nft_beta"):
        DiffusionNFTConfig(output_dir="x", nft_beta=0.0)
    with pytest.raises(ValueError, match="old_policy_decay"):
        DiffusionNFTConfig(output_dir="x", old_policy_decay=1.0)
    with pytest.raises(ValueError, match=r"per_device_train_batch_size \(6\).*num_generations \(4\)"):
        DiffusionNFTConfig(output_dir="x", per_device_train_batch_size=6, num_generations=4)


# -- the trainer ----------------------------------------------------------------------------------------------------


def test_first_step_logs_trl_reward_metrics_and_the_old_policy_is_the_current_one(tmp_path):
    trainer = make_trainer(tmp_path)
    assert trainer._old_params is None  # decay 0, one iteration: no copy, no second pass
    trainer.train()
    first = _logs(trainer)[0]
    for key in ("reward", "reward_std", "rewards/brightness/mean", "rewards/brightness/std", "frac_reward_zero_std",
                "kl", "nft/positive_loss", "nft/negative_loss", "nft/old_deviation", "time/sampling_s",
                "time/training_s"):  # fmt: skip
        assert key in first, key
    assert first["kl"] == 0.0 and first["nft/old_deviation"] == 0.0
    # At the old policy the implicit positive and negative policies coincide.
    assert first["nft/positive_loss"] == pytest.approx(first["nft/negative_loss"])
    assert math.isfinite(first["loss"])


def test_ode_rollouts_are_deterministic_given_the_starting_noise(tmp_path):
    trainer = make_trainer(tmp_path, same_latent=True)
    rollout = trainer.rollout(["a red square", "a blue circle"])
    final = rollout.latents[:, -1]
    assert torch.equal(final[0], final[1]) and torch.equal(final[2], final[3])  # same x_T, no step noise
    assert not torch.equal(final[0], final[2])
    assert torch.isnan(rollout.log_probs).all()  # no likelihood anywhere
    sde = make_trainer(tmp_path / "sde", same_latent=True, sampler="sde").rollout(["a red square", "a blue circle"])
    assert not torch.equal(sde.latents[0, -1], sde.latents[1, -1]) and torch.isfinite(sde.log_probs).all()


def test_ode_rollout_matches_the_pipelines_ddim_at_eta_zero(tmp_path):
    trainer = make_trainer(tmp_path, num_generations=2, guidance_scale=2.0)
    generator = torch.Generator().manual_seed(5)
    rollout = trainer.rollout(["a red square"], generator=generator)
    start = rollout.latents[:1, 0]
    from diffusers import DDIMScheduler

    pipe = trainer.pipeline
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    with trainer.old_policy():
        out = pipe(["a red square"], latents=start.clone(), num_inference_steps=4, guidance_scale=2.0, eta=0.0,
                   output_type="latent").images  # fmt: skip
    assert torch.allclose(out, rollout.latents[:1, -1], atol=1e-4)


def test_training_noises_clean_samples_at_the_rollouts_timesteps(tmp_path):
    trainer = make_trainer(tmp_path, timestep_fraction=0.5)
    rollout = trainer.rollout(["a red square", "a blue circle"])
    assert len(rollout.train_steps) == 2
    x0, noisy, timesteps, index = trainer.forward_process(rollout, torch.Generator().manual_seed(0))
    assert x0.shape[0] == noisy.shape[0] == 8 and index.tolist() == [0, 0, 1, 1] * 2
    assert set(timesteps.tolist()) == set(rollout.timesteps[rollout.train_steps].tolist())
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(noisy, trainer.model_adapter.add_noise(x0, noise, timesteps))


def test_old_policy_decay_keeps_a_copy_that_samples_and_moves_by_the_decay(tmp_path):
    trainer = make_trainer(tmp_path, old_policy_decay=0.5, max_steps=2, learning_rate=5e-2)
    before = [p.detach().clone() for p in trainer._trainable_parameters]
    trainer.train()
    after = [p.detach() for p in trainer._trainable_parameters]
    assert not torch.equal(before[0], after[0])
    # Two updates: old1 = 0.5 old0 + 0.5 cur1, old2 = 0.5 old1 + 0.5 cur2; old0 = the initial LoRA.
    logs = _logs(trainer)
    assert logs[0]["nft/old_deviation"] == 0.0 and logs[1]["nft/old_deviation"] > 0.0
    with trainer.old_policy():
        swapped = [p.detach().clone() for p in trainer._trainable_parameters]
    assert all(torch.equal(a, b) for a, b in zip(swapped, trainer._old_params))
    assert all(torch.equal(a, b) for a, b in zip(trainer._trainable_parameters, after))  # swapped back


def test_guided_loss_trains_the_classifier_free_guided_prediction(tmp_path):
    trainer = make_trainer(tmp_path, guided_loss=True, guidance_scale=3.0)
    cond, uncond = trainer.encode_conditioning(["a red square", "a blue circle"])
    config = trainer.pipeline.unet.config
    noisy = torch.randn(2, config.in_channels, config.sample_size, config.sample_size,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    timesteps = torch.tensor([500, 200])
    unet = trainer.model
    c_out = trainer.unet_forward(unet, noisy, timesteps, cond).float()
    u_out = trainer.unet_forward(unet, noisy, timesteps, uncond).float()
    guided = trainer.trained_prediction(unet, noisy, timesteps, cond, uncond)
    assert torch.allclose(guided, u_out + 3.0 * (c_out - u_out), atol=1e-5)
    assert torch.equal(trainer.trained_prediction(unet, noisy, timesteps, cond), c_out)  # NFT's CFG-free default


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_guided_loss_changes_the_update_only_where_rollouts_use_guidance(tmp_path, guidance_scale):
    def trained(guided_loss):
        torch.manual_seed(0)
        trainer = make_trainer(tmp_path / str(guided_loss), guided_loss=guided_loss, guidance_scale=guidance_scale,
                               learning_rate=5e-2)  # fmt: skip
        trainer.train()
        return [p.detach().clone() for p in trainer._trainable_parameters]

    same = all(torch.equal(a, b) for a, b in zip(trained(False), trained(True)))
    assert same == (guidance_scale == 1.0)


def test_nft_raises_brightness_and_lowers_it_when_the_sign_flips(tmp_path):
    def darkness(images, prompts, **kwargs):
        return [-b for b in brightness(images, prompts)]

    def held_out(trainer):
        gen = torch.Generator().manual_seed(1234)
        images = trainer.pipeline(["a red square", "a blue circle"] * 2, num_inference_steps=4, guidance_scale=2.0,
                                  generator=gen, output_type="pil").images  # fmt: skip
        return float(np.mean(brightness(images, None)))

    common = dict(max_steps=6, learning_rate=1e-2, per_device_train_batch_size=8, num_generations=4)
    up = make_trainer(tmp_path / "up", **common)
    down = make_trainer(tmp_path / "down", reward_funcs=darkness, **common)
    before = held_out(up)
    up.train()
    down.train()
    assert held_out(up) > before > held_out(down)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_models_train_one_step(tmp_path, family):
    from trl_rpo.testing import tiny_flux_pipeline, tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline() if family == "sd3" else tiny_flux_pipeline()
    trainer = make_trainer(tmp_path, pipe=pipe, resolution=32, max_sequence_length=32)
    trainer.train()
    first = _logs(trainer)[0]
    assert math.isfinite(first["loss"]) and first["nft/positive_loss"] == pytest.approx(first["nft/negative_loss"])


def test_v_prediction_models_train(tmp_path):
    trainer = make_trainer(tmp_path, prediction_type="v_prediction")
    assert trainer.prediction_type == "v_prediction"
    trainer.train()
    assert math.isfinite(_logs(trainer)[0]["loss"])


def test_saved_lora_reloads_into_the_pipeline(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, learning_rate=5e-2)
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert "DiffusionNFT" in card and "2509.16117" in card
    pipe = tiny_sd_pipeline()
    pipe.load_lora_weights(str(tmp_path))
    gen = torch.Generator().manual_seed(0)
    a = pipe("a red square", num_inference_steps=2, generator=gen, output_type="np").images
    gen = torch.Generator().manual_seed(0)
    b = trainer.pipeline("a red square", num_inference_steps=2, generator=gen, output_type="np").images
    assert np.abs(a - b).max() < 1e-5
