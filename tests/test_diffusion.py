import pytest
import torch
from diffusers import DDPMScheduler

from trl_rpo.diffusion import (
    diffusion_target,
    per_sample_mse,
    sample_pair_noise_and_timesteps,
    timestep_bias_weights,
)


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


def test_timestep_bias_weights_follow_diffusers_strategies():
    torch.testing.assert_close(timestep_bias_weights(10), torch.full((10,), 0.1))
    later = timestep_bias_weights(10, "later", multiplier=3.0, portion=0.2)  # t = 8, 9 weigh 3, the rest 1
    torch.testing.assert_close(later, torch.tensor([1.0] * 8 + [3.0, 3.0]) / 14)
    earlier = timestep_bias_weights(10, "earlier", multiplier=0.0, portion=0.5)  # never the least noisy half
    torch.testing.assert_close(earlier, torch.tensor([0.0] * 5 + [0.2] * 5))
    ranged = timestep_bias_weights(10, "range", multiplier=2.0, begin=3, end=5)
    torch.testing.assert_close(ranged, torch.tensor([1.0, 1, 1, 2, 2, 1, 1, 1, 1, 1]) / 12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "middle"}, "strategy"),
        ({"strategy": "later", "multiplier": -1.0}, "multiplier"),
        ({"strategy": "later", "portion": 0.0}, "portion"),
        ({"strategy": "range", "begin": 5, "end": 5}, "range"),
        ({"strategy": "range", "begin": 0, "end": 11}, "range"),
        ({"strategy": "earlier", "multiplier": 0.0, "portion": 1.0}, "no timestep"),
    ],
)
def test_timestep_bias_weights_refuse_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timestep_bias_weights(10, **kwargs)


def test_weighted_pair_timesteps_come_only_from_timesteps_with_weight():
    weights = timestep_bias_weights(1000, "earlier", multiplier=0.0, portion=0.5)
    _, t = sample_pair_noise_and_timesteps(torch.zeros(400, 1, 2, 2), 1000, torch.Generator().manual_seed(0), weights)
    assert torch.equal(t[:200], t[200:])
    assert t.min() >= 500 and t.max() < 1000 and len(t.unique()) > 100
    with pytest.raises(ValueError, match="shape"):
        sample_pair_noise_and_timesteps(torch.zeros(2, 1, 2, 2), 1000, None, weights[:10])


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


def _ddim(prediction_type="epsilon", steps=10):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_step_matches_the_schedulers_step_mean_and_variance(prediction_type):
    from trl_rpo.diffusion import ddim_step_with_logprob

    scheduler = _ddim(prediction_type)
    torch.manual_seed(0)
    x, out, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for t in scheduler.timesteps:  # including the last step, which goes to the "final" alpha
        expected = scheduler.step(out, t, x, eta=0.7, variance_noise=noise).prev_sample
        mean_only = scheduler.step(out, t, x, eta=0.7, variance_noise=torch.zeros_like(noise)).prev_sample
        prev, _, mean, std = ddim_step_with_logprob(
            scheduler, out, t, x, eta=0.7, prev_sample=mean_only + (expected - mean_only)
        )
        torch.testing.assert_close(mean, mean_only, atol=1e-5, rtol=1e-5)
        prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        expected_std = 0.7 * scheduler._get_variance(t, prev_t) ** 0.5
        torch.testing.assert_close(std.flatten(), torch.full((3,), float(expected_std)), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mean + std * noise, expected, atol=1e-5, rtol=1e-5)


def test_ddim_step_accepts_a_batch_of_different_timesteps():
    from trl_rpo.diffusion import ddim_step_with_logprob

    scheduler = _ddim()
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    ts = scheduler.timesteps[[1, 5]]
    _, _, mean, _ = ddim_step_with_logprob(scheduler, out, ts, x, eta=1.0)
    for i, t in enumerate(ts):
        ref = scheduler.step(out[i : i + 1], t, x[i : i + 1], eta=1.0, variance_noise=torch.zeros(1, 4, 8, 8))
        torch.testing.assert_close(mean[i : i + 1], ref.prev_sample, atol=1e-5, rtol=1e-5)


def test_ddim_log_prob_is_the_gaussian_density_of_the_drawn_sample():
    from trl_rpo.diffusion import ddim_step_with_logprob

    scheduler = _ddim()
    x, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = scheduler.timesteps[3]
    prev, log_prob, mean, std = ddim_step_with_logprob(
        scheduler, out, t, x, eta=1.0, generator=torch.Generator().manual_seed(0)
    )
    dist = torch.distributions.Normal(mean, std.expand_as(mean))
    torch.testing.assert_close(log_prob, dist.log_prob(prev).mean(dim=(1, 2, 3)))
    # The mean itself is the most likely sample.
    _, at_mean, _, _ = ddim_step_with_logprob(scheduler, out, t, x, eta=1.0, prev_sample=mean)
    assert torch.all(at_mean > log_prob)


def test_ddim_step_needs_positive_eta():
    from trl_rpo.diffusion import ddim_step_with_logprob

    scheduler = _ddim()
    with pytest.raises(ValueError, match="eta"):
        ddim_step_with_logprob(
            scheduler, torch.zeros(1, 4, 8, 8), scheduler.timesteps[0], torch.zeros(1, 4, 8, 8), eta=0.0
        )


@pytest.mark.parametrize("alpha_one", [True, False], ids=["set_alpha_to_one", "final_alpha_from_schedule"])
def test_ddim_step_variance_is_zero_only_at_the_last_step_with_final_alpha_one(alpha_one):
    from diffusers import DDIMScheduler

    from trl_rpo.diffusion import ddim_step_variance

    scheduler = DDIMScheduler.from_config(_ddim().config, set_alpha_to_one=alpha_one)
    scheduler.set_timesteps(10)
    variance = ddim_step_variance(scheduler, scheduler.timesteps)
    assert (variance[:-1] > 0).all()
    assert bool(variance[-1] == 0) is alpha_one


# -- masked errors for edit pairs ----------------------------------------------------------------------------


def test_masked_mse_with_a_mask_of_ones_is_the_plain_mse():
    from trl_rpo.diffusion import masked_per_sample_mse

    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 5, 5, generator=gen), torch.randn(3, 4, 5, 5, generator=gen)
    torch.testing.assert_close(
        masked_per_sample_mse(pred, target, torch.ones(3, 1, 5, 5)), per_sample_mse(pred, target)
    )


def test_masked_mse_by_hand_and_zero_weight_outside_ignores_changes_there():
    from trl_rpo.diffusion import masked_per_sample_mse

    target = torch.zeros(1, 2, 2, 2)
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]]])
    weight = torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]])
    # Channel 0: 1*1 + 0.5*16 = 9; channel 1: 0.5*4 = 2; weights sum 1.5 per channel, 2 channels -> 11 / 3.
    assert masked_per_sample_mse(pred, target, weight).item() == pytest.approx(11 / 3)
    changed = pred.clone()
    changed[..., 0, 1] += 100.0  # outside the mask (weight 0)
    changed[..., 1, 0] -= 7.0
    assert masked_per_sample_mse(changed, target, weight).item() == pytest.approx(11 / 3)
    # An all-zero weight map falls back to the plain error instead of dividing by zero.
    assert masked_per_sample_mse(pred, target, torch.zeros_like(weight)).item() == pytest.approx(
        per_sample_mse(pred, target).item()
    )


def test_latent_mask_weight_pools_dilates_and_weights_the_outside():
    from trl_rpo.diffusion import latent_mask_weight

    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 9, 9] = 1.0  # one edited pixel, inside latent cell (1, 1) at factor 8
    plain = latent_mask_weight(mask, (4, 4), dilation=0, weight_outside=0.0)
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., 1, 1] = 1.0
    torch.testing.assert_close(plain, expected)
    grown = latent_mask_weight(mask, (4, 4), dilation=1, weight_outside=0.25)
    expected = torch.full((1, 1, 4, 4), 0.25)
    expected[..., 0:3, 0:3] = 1.0
    torch.testing.assert_close(grown, expected)
    assert torch.equal(latent_mask_weight(mask, (4, 4), 1, 1.0), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="weight_outside"):
        latent_mask_weight(mask, (4, 4), 1, 1.5)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        latent_mask_weight(mask[0], (4, 4))
