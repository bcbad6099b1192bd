import pytest
import torch
from diffusers import DDPMScheduler

from trl_rpo.diffusion import diffusion_target, per_sample_mse, sample_pair_noise_and_timesteps


def test_pair_halves_share_noise_and_timesteps():
    latents = torch.zeros(6, 4, 8, 8)
    noise, t = sample_pair_noise_and_timesteps(latents, 1000)
    assert noise.shape == latents.shape and t.shape == (6,)
    torch.testing.assert_close(noise[:3], noise[3:])
    assert torch.equal(t[:3], t[3:])
    assert t.min() >= 0 and t.max() < 1000


def test_pair_noise_is_reproducible_with_a_generator():
    latents = torch.zeros(4, 4, 8, 8)
    a = sample_pair_noise_and_timesteps(latents, 1000, torch.Generator().manual_seed(3))
    b = sample_pair_noise_and_timesteps(latents, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_odd_batch_is_rejected():
    with pytest.raises(ValueError, match="even"):
        sample_pair_noise_and_timesteps(torch.zeros(3, 4, 8, 8), 1000)


def test_epsilon_target_is_the_noise_and_v_target_matches_its_definition():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(diffusion_target(scheduler, x0, noise, t, "epsilon"), noise)
    abar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected_v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    torch.testing.assert_close(diffusion_target(scheduler, x0, noise, t, "v_prediction"), expected_v)
    with pytest.raises(ValueError, match="prediction_type"):
        diffusion_target(scheduler, x0, noise, t, "flow")


def test_per_sample_mse_averages_all_non_batch_dimensions():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.ones(2, 3, 4, 4)
    target[1] *= 2
    torch.testing.assert_close(per_sample_mse(pred, target), torch.tensor([1.0, 4.0]))
