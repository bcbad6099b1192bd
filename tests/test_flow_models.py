"""Flow-matching models (SD3 / SD3.5, FLUX.1): the adapter, the flow math and Flow-DPO on tiny pipelines."""

import math
import os

import numpy as np
import pytest
import torch

from trl_rpo import DiffusionDPOTrainer
from trl_rpo.diffusion import (
    flow_noisy_latents,
    flow_sde_step_with_logprob,
    flow_velocity_target,
    sample_flow_sigmas,
    sample_pair_flow_noise_and_timesteps,
)
from trl_rpo.models import (
    DenoiserAdapter,
    detect_family,
    flux_latent_image_ids,
    pack_latents,
    unpack_latents,
)
from trl_rpo.testing import (
    tiny_flux_pipeline,
    tiny_lora_config,
    tiny_preference_dataset,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
)

from ._helpers import dpo_config, recorded_and_recomputed_policy_error

torch.set_num_threads(1)

BUILDERS = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}
T5_LENGTH = 16


def _generate(pipe, seed=0):
    return pipe(
        "a red square",
        num_inference_steps=3,
        guidance_scale=1.0,
        height=32,
        width=32,
        max_sequence_length=T5_LENGTH,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    ).images


def _first_log(trainer):
    return next(entry for entry in trainer.state.log_history if "loss" in entry)


def _flow_trainer(tmp_path, family, lora=True, **overrides):
    args = {"resolution": 32, "max_sequence_length": T5_LENGTH, "max_steps": 1, **overrides}
    return DiffusionDPOTrainer(
        model=BUILDERS[family](),
        args=dpo_config(tmp_path, **args),
        train_dataset=tiny_preference_dataset(4),
        peft_config=tiny_lora_config() if lora else None,
    )


# -- pure flow math ---------------------------------------------------------------------------------------------------


def test_flow_interpolation_and_velocity_target():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    s = torch.tensor([0.0, 0.5, 1.0])
    noisy = flow_noisy_latents(x0, eps, s)
    torch.testing.assert_close(noisy[0], x0[0])
    torch.testing.assert_close(noisy[1], 0.5 * (x0[1] + eps[1]))
    torch.testing.assert_close(noisy[2], eps[2])
    # d x_s / d s is the velocity target eps - x0
    h = 1e-3
    derivative = (flow_noisy_latents(x0, eps, s * 0 + 0.3 + h) - flow_noisy_latents(x0, eps, s * 0 + 0.3)) / h
    torch.testing.assert_close(derivative, flow_velocity_target(x0, eps), atol=1e-2, rtol=1e-2)


def test_pair_flow_noise_and_timesteps_are_shared_within_a_pair_and_follow_the_schedule():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    latents = torch.randn(8, 4, 4, 4)
    noise, timesteps, sigmas = sample_pair_flow_noise_and_timesteps(
        latents, scheduler, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(noise[:4], noise[4:])
    torch.testing.assert_close(timesteps[:4], timesteps[4:])
    torch.testing.assert_close(sigmas, timesteps / 1000)
    assert not torch.equal(noise[0], noise[1])
    # the shifted schedule: every sigma is one of the scheduler's training sigmas
    assert all(bool((scheduler.sigmas - s).abs().min() < 1e-6) for s in sigmas)
    with pytest.raises(ValueError, match="even"):
        sample_pair_flow_noise_and_timesteps(latents[:3], scheduler)


@pytest.mark.parametrize("scheme", ["logit_normal", "mode", "uniform"])
def test_flow_sigma_densities(scheme):
    u = sample_flow_sigmas(20000, scheme, generator=torch.Generator().manual_seed(0))
    assert u.min() > 0 and u.max() < 1
    if scheme == "logit_normal":  # sigmoid(N(0, 1)): median 0.5, little mass near the ends
        assert abs(u.median().item() - 0.5) < 0.02 and (u < 0.05).float().mean() < 0.01
    else:
        assert (u < 0.05).float().mean() > 0.02
    logit = sample_flow_sigmas(20000, "logit_normal", logit_mean=1.0, generator=torch.Generator().manual_seed(0))
    assert logit.median() > 0.7
    with pytest.raises(ValueError, match="weighting_scheme"):
        sample_flow_sigmas(4, "cosmap")


def test_flow_sde_step_log_prob_is_the_density_of_the_drawn_sample():
    generator = torch.Generator().manual_seed(0)
    x, v = torch.randn(3, 4, 4, 4, generator=generator), torch.randn(3, 4, 4, 4, generator=generator)
    sigma, next_sigma = torch.tensor([0.9, 0.5, 0.2]), torch.tensor([0.8, 0.4, 0.0])
    prev, log_prob, mean, std = flow_sde_step_with_logprob(v, sigma, next_sigma, x, 0.7, generator=generator)
    density = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(prev.float()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, density)
    # the drawn sample is mean + std * z with z standard normal
    z = (prev - mean) / std
    assert abs(z.mean().item()) < 0.2 and abs(z.std().item() - 1) < 0.2
    # evaluating a given sample gives its density, and the mean is highest
    _, at_mean, _, _ = flow_sde_step_with_logprob(v, sigma, next_sigma, x, 0.7, prev_sample=mean)
    assert (at_mean > log_prob).all()
    # std follows g = a sqrt(s / (1 - s)) times sqrt(|ds|)
    expected = 0.7 * (sigma / (1 - sigma)).sqrt() * (sigma - next_sigma).sqrt()
    torch.testing.assert_close(std.flatten(), expected)


def test_flow_sde_mean_tends_to_the_euler_ode_step_and_keeps_marginals_of_a_gaussian():
    x, v = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    sigma, next_sigma = torch.tensor(0.6), torch.tensor(0.5)
    _, _, mean, _ = flow_sde_step_with_logprob(v, sigma, next_sigma, x, 1e-4)
    torch.testing.assert_close(mean, x + v * (next_sigma - sigma), atol=1e-6, rtol=1e-6)
    # With x0 = 0 exactly, x_s = s * eps and the true velocity is x / s: the SDE must keep x_s' ~ N(0, s'^2).
    s, s_next, n = 0.6, 0.55, 200_000
    samples = s * torch.randn(n, 1)
    prev, _, _, _ = flow_sde_step_with_logprob(samples / s, torch.tensor(s), torch.tensor(s_next), samples, 0.7)
    assert prev.std().item() == pytest.approx(s_next, rel=0.01)
    with pytest.raises(ValueError, match="noise_level"):
        flow_sde_step_with_logprob(v, sigma, next_sigma, x, 0.0)
    with pytest.raises(ValueError, match="smaller"):
        flow_sde_step_with_logprob(v, next_sigma, sigma, x, 0.7)


def test_flux_packing_round_trips_and_matches_the_pipeline():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(latents, 2, 4, 6, 8))
    torch.testing.assert_close(unpack_latents(packed, 6, 8), latents)
    torch.testing.assert_close(
        flux_latent_image_ids(6, 8), FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    )
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 4, 5, 4))


# -- the adapter ------------------------------------------------------------------------------------------------------


def test_family_is_chosen_from_the_pipeline():
    assert detect_family(tiny_sd_pipeline()).name == "sd"
    sd3, flux = detect_family(tiny_sd3_pipeline()), detect_family(tiny_flux_pipeline())
    assert (sd3.name, sd3.denoiser, sd3.flow_matching) == ("sd3", "transformer", True)
    assert flux.name == "flux" and flux.text_encoders == ("text_encoder", "text_encoder_2")
    with pytest.raises(TypeError, match="neither a `unet` nor a `transformer`"):
        detect_family(object())


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_adapter_prediction_matches_the_pipelines_own_transformer_call(family):
    """The adapter's call reproduces the pipeline's (conditioning, timestep scale, ids, guidance, packing)."""
    pipe = BUILDERS[family]()
    adapter = DenoiserAdapter(pipe, max_sequence_length=T5_LENGTH, embedded_guidance_scale=1.0)
    calls = []
    forward = pipe.transformer.forward

    def recording_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append((kwargs["hidden_states"], kwargs["timestep"], out[0]))
        return out

    pipe.transformer.forward = recording_forward
    pipe(
        "a red square", num_inference_steps=2, guidance_scale=1.0, height=32, width=32,
        max_sequence_length=T5_LENGTH, output_type="latent",
    )  # fmt: skip
    hidden, timestep, output = calls[0]
    cond = adapter.encode_prompts(["a red square"])
    if family == "flux":  # packed tokens and timestep / 1000 in the pipeline; unpacked and t in [0, 1000] here
        latents, t, expected = unpack_latents(hidden, 16, 16), timestep * 1000, unpack_latents(output, 16, 16)
    else:
        latents, t, expected = hidden, timestep, output
    with torch.no_grad():
        prediction = adapter.predict(pipe.transformer, latents, t, cond)
    torch.testing.assert_close(prediction, expected, atol=1e-5, rtol=1e-5)


def test_prediction_type_is_refused_on_flow_models():
    with pytest.raises(ValueError, match="velocity"):
        DenoiserAdapter(tiny_sd3_pipeline(), prediction_type="epsilon")


# -- Flow-DPO on tiny SD3 and FLUX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_first_flow_dpo_loss_is_ln2_and_training_is_finite(tmp_path, family, lora):
    trainer = _flow_trainer(tmp_path, family, lora=lora, max_steps=2, learning_rate=1e-3)
    assert trainer.prediction_type == "flow" and trainer.family.name == family
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(e["loss"]) for e in logs)
    assert logs[-1]["mse/policy_chosen"] != logs[0]["mse/policy_chosen"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_dpo_lora_round_trips_through_load_lora_weights(tmp_path, family):
    trainer = DiffusionDPOTrainer(
        model=BUILDERS[family](),
        args=dpo_config(tmp_path, resolution=32, max_sequence_length=T5_LENGTH, max_steps=3, learning_rate=5e-2),
        train_dataset=tiny_preference_dataset(4),
        peft_config=tiny_lora_config(r=4, lora_alpha=8),  # alpha != r: the scale must survive the round trip
    )
    trainer.train()
    trainer.save_model()
    assert os.path.isfile(tmp_path / "pytorch_lora_weights.safetensors")
    trained = _generate(trainer.pipeline)
    fresh = BUILDERS[family]()
    base = _generate(fresh)
    assert np.abs(trained - base).max() > 1e-3  # training changed the images
    fresh.load_lora_weights(str(tmp_path))
    torch.testing.assert_close(torch.from_numpy(_generate(fresh)), torch.from_numpy(trained), atol=1e-5, rtol=1e-5)
    card = (tmp_path / "README.md").read_text()
    assert type(fresh).__name__ in card and "load_lora_weights" in card
    assert "base_model" in card or "local pipeline" in card


def test_flow_dpo_model_card_names_the_base_model(tmp_path):
    path = tmp_path / "tiny-sd3"
    tiny_sd3_pipeline().save_pretrained(path)
    trainer = DiffusionDPOTrainer(
        model=str(path),
        args=dpo_config(tmp_path / "out", resolution=32, max_sequence_length=T5_LENGTH, max_steps=1),
        train_dataset=tiny_preference_dataset(2),
        peft_config=tiny_lora_config(),
    )
    assert type(trainer.pipeline).__name__ == "StableDiffusion3Pipeline"
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert str(path) in card and "StableDiffusion3Pipeline" in card


def test_flow_dpo_full_finetuning_saves_a_transformer_folder(tmp_path):
    from diffusers import FluxTransformer2DModel

    trainer = _flow_trainer(tmp_path, "flux", lora=False, max_steps=1)
    trainer.train()
    trainer.save_model()
    transformer = FluxTransformer2DModel.from_pretrained(str(tmp_path), subfolder="transformer")
    for (name, a), b in zip(transformer.state_dict().items(), trainer.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert "FluxTransformer2DModel.from_pretrained" in (tmp_path / "README.md").read_text()


def _flow_noised_and_velocity(latents, noise, timesteps):
    """Rectified flow written out: `x = (1 - s) x0 + s eps` with `s = t / 1000`, target `eps - x0`."""
    s = (timesteps / 1000.0).view(-1, 1, 1, 1)
    return (1 - s) * latents + s * noise, noise - latents


def test_flow_dpo_precomputed_latents_are_the_vae_samples_and_train_on_the_velocity(tmp_path):
    from trl_rpo.data.transforms import prepare_image
    from trl_rpo.trainer.diffusion_dpo_trainer import row_seed

    trainer = _flow_trainer(
        tmp_path, "flux", precompute_latents=True, precompute_cache_dir=str(tmp_path / "cache"),
        caption_dropout_probability=0.5,
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) >= {"latents", "prompt_embeds", "pooled_prompt_embeds"} and "time_ids" not in batch
    assert batch["prompt_embeds"].shape[1] == T5_LENGTH
    # Row 0's cached chosen latents: its VAE posterior sample (drawn with the row's own seed), shifted and scaled as
    # the FLUX pipeline expects.
    vae = trainer.pipeline.vae
    pixels = prepare_image(tiny_preference_dataset(4)[0]["chosen"], 32).pixel_values[None]
    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
    eps = torch.randn(posterior.mean.shape[1:], generator=torch.Generator().manual_seed(row_seed(0, 0)))
    expected = (posterior.mean[0] + posterior.std[0] * eps - vae.config.shift_factor) * vae.config.scaling_factor
    cached = torch.as_tensor(trainer.train_dataset[0]["chosen_latents"])
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)
    # A training step on the cached latents regresses the velocity of their flow interpolation.
    recorded, recomputed, against_noise = recorded_and_recomputed_policy_error(
        trainer, trainer._prepare_inputs(batch), _flow_noised_and_velocity
    )
    assert recorded == pytest.approx(recomputed, rel=1e-4)
    assert against_noise != pytest.approx(recomputed, rel=1e-2)


def _two_sample_ks(a: np.ndarray, b: np.ndarray) -> float:
    """The largest gap between the empirical distribution functions of two samples (Kolmogorov-Smirnov)."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.mark.parametrize("scheme", ["mode", "uniform"])
def test_flow_dpo_draws_timesteps_from_the_configured_weighting_scheme(tmp_path, scheme):
    from diffusers.training_utils import compute_density_for_timestep_sampling

    trainer = _flow_trainer(tmp_path, "sd3", weighting_scheme=scheme)
    assert trainer.model_adapter.weighting_scheme == scheme
    _, drawn = trainer.sample_noise_and_timesteps(torch.zeros(8000, 1, 1, 1))  # 4000 pairs
    scheduler = trainer.noise_scheduler

    def reference(name: str) -> np.ndarray:
        """Timesteps as diffusers' SD3 script draws them: u of the scheme, then the shifted schedule's t[u N]."""
        u = compute_density_for_timestep_sampling("none" if name == "uniform" else name, 4000, logit_mean=0.0,
                                                  logit_std=1.0, mode_scale=1.29,
                                                  generator=torch.Generator().manual_seed(1))  # fmt: skip
        indices = (u * scheduler.config.num_train_timesteps).long().clamp(0, len(scheduler.timesteps) - 1)
        return scheduler.timesteps[indices].float().numpy()

    drawn = drawn[:4000].numpy()
    # KS distance of two 4000-draw samples of one law: below 0.043 at the 99.9% level; the schemes are 0.09 or more
    # apart (mode and logit_normal the closest).
    assert _two_sample_ks(drawn, reference(scheme)) < 0.043
    for other in {"mode", "uniform", "logit_normal"} - {scheme}:
        assert _two_sample_ks(drawn, reference(other)) > 0.065, other


def test_flow_dpo_refuses_a_ddpm_timestep_bias(tmp_path):
    with pytest.raises(ValueError, match="weighting_scheme instead"):
        _flow_trainer(tmp_path, "sd3", timestep_bias_strategy="later")


def test_flow_config_fields_are_validated(tmp_path):
    from trl_rpo import DiffusionDPOConfig

    with pytest.raises(ValueError, match="weighting_scheme"):
        DiffusionDPOConfig(output_dir="x", weighting_scheme="cosmap")
    with pytest.raises(ValueError, match="max_sequence_length"):
        DiffusionDPOConfig(output_dir="x", max_sequence_length=1000)
    with pytest.raises(ValueError, match="velocity"):
        _flow_trainer(tmp_path, "sd3", prediction_type="epsilon")
