"""The shapes world's base model: its pretraining script, the shipped checkpoint and its recorded alignment."""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from trl_rpo import shapes
from trl_rpo.shapes.pretrain import PretrainConfig, build_tokenizer, evaluate_base, main, pretrain, vocabulary

TINY = dict(images_per_scene=1, vae_steps=2, steps=2, batch_size=4, log_every=1, eval_prompts=2, eval_seeds=(0,),
            num_inference_steps=2)  # fmt: skip


def test_every_world_prompt_tokenizes_to_known_words_within_the_context():
    tokenizer = build_tokenizer()
    unk = tokenizer.unk_token_id
    for scene in shapes.all_scenes():
        ids = tokenizer(shapes.prompt_text(scene)).input_ids
        assert unk not in ids and len(ids) <= tokenizer.model_max_length
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


def test_tokenizer_maps_unknown_words_to_unk_and_pads_with_eos():
    tokenizer = build_tokenizer()
    ids = tokenizer("a Zebra", padding="max_length", max_length=6).input_ids
    assert ids == [tokenizer.bos_token_id, vocabulary().index("a"), tokenizer.unk_token_id] + [
        tokenizer.eos_token_id
    ] * 3


def test_pretraining_is_reproducible_and_saves_a_loadable_pipeline(tmp_path):
    logs = []
    record = pretrain(PretrainConfig(**TINY), tmp_path / "a", log=logs.append)
    pretrain(PretrainConfig(**TINY), tmp_path / "b", log=lambda _: None)
    a = StableDiffusionPipeline.from_pretrained(tmp_path / "a", local_files_only=True)
    b = shapes.load_pipeline(tmp_path / "b")
    for name in ("unet", "text_encoder", "vae"):
        for (key, pa), pb in zip(getattr(a, name).state_dict().items(), getattr(b, name).state_dict().values()):
            assert torch.equal(pa, pb), f"{name}.{key} differs between two runs with the same seed"
    info = shapes.training_info(tmp_path / "a")
    assert info["config"]["seed"] == 0 and info == json.loads(json.dumps(record))
    assert set(info["alignment"]) == {"protocol", "held_out", "train"}
    assert any(line.startswith("unet step 2/2") for line in logs)


def test_pretraining_options_shape_the_autoencoder_latents(tmp_path):
    config = PretrainConfig(**{**TINY, "latent_channels": 12, "vae_l1_weight": 1.0, "offset_noise": 0.1})
    pretrain(config, tmp_path / "c", log=lambda _: None)
    pipe = shapes.load_pipeline(tmp_path / "c")
    assert pipe.vae.config.latent_channels == 12 and pipe.unet.config.in_channels == 12
    assert shapes.training_info(tmp_path / "c")["config"]["offset_noise"] == 0.1
    assert pipe(["one red circle in the center, on a white background"], num_inference_steps=2,
                output_type="np").images.shape == (1, 32, 32, 3)  # fmt: skip


def test_v_prediction_on_a_zero_terminal_snr_schedule_is_saved_with_the_pipeline_on_a_reused_autoencoder(tmp_path):
    config = PretrainConfig(**{**TINY, "latent_channels": 8, "prediction_type": "v_prediction",
                               "zero_terminal_snr": True, "vae_from": str(shapes.model.CHECKPOINT_DIR)})  # fmt: skip
    pretrain(config, tmp_path / "v", log=lambda _: None)
    pipe, shipped = shapes.load_pipeline(tmp_path / "v"), shapes.load_pipeline()
    scheduler = pipe.scheduler.config
    assert scheduler.prediction_type == "v_prediction" and scheduler.rescale_betas_zero_snr
    assert scheduler.timestep_spacing == "trailing" and float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6
    for (key, a), b in zip(pipe.vae.state_dict().items(), shipped.vae.state_dict().values()):
        assert torch.equal(a, b), f"vae.{key} is not the reused autoencoder's"
    assert pipe.vae.config.scaling_factor == shipped.vae.config.scaling_factor
    assert shapes.training_info(tmp_path / "v")["final_vae_loss"] is None
    image = pipe(["one red circle in the center, on a white background"], num_inference_steps=2, output_type="np")
    assert np.isfinite(image.images).all()


def test_denoising_target_is_the_velocity_for_v_prediction_with_min_snr_weights_finite_at_zero_snr():
    from diffusers import DDIMScheduler

    from trl_rpo.shapes.pretrain import denoising_target

    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    timesteps = torch.tensor([10, 500, 999])
    eps = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    target, weight = denoising_target(eps, x0, noise, timesteps, snr_gamma=5.0)
    snr = eps.alphas_cumprod[timesteps] / (1 - eps.alphas_cumprod[timesteps])
    assert torch.equal(target, noise)
    assert torch.allclose(weight, torch.clamp(snr, max=5.0) / snr)
    v = DDIMScheduler.from_config(eps.config, prediction_type="v_prediction", rescale_betas_zero_snr=True)
    target, weight = denoising_target(v, x0, noise, timesteps, snr_gamma=5.0)
    abar = v.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    assert torch.allclose(target, abar.sqrt() * noise - (1 - abar).sqrt() * x0, atol=1e-6)
    assert torch.allclose(target[2], -x0[2], atol=1e-5)  # at zero SNR the velocity is the image itself
    snr = v.alphas_cumprod[timesteps] / (1 - v.alphas_cumprod[timesteps])
    assert torch.allclose(weight, torch.clamp(snr, max=5.0) / (snr + 1)) and weight[2] == 0.0
    assert torch.equal(denoising_target(v, x0, noise, timesteps, snr_gamma=None)[1], torch.ones(3))


@pytest.mark.parametrize(("fields", "message"), [
    ({"prediction_type": "sample"}, "prediction_type must be"),
    ({"zero_terminal_snr": True}, "zero_terminal_snr needs prediction_type='v_prediction'"),
])  # fmt: skip
def test_pretrain_config_refuses_an_objective_it_cannot_train(fields, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(**{**TINY, **fields})


def test_pretraining_refuses_an_autoencoder_whose_latents_do_not_fit_the_unet(tmp_path):
    config = PretrainConfig(**{**TINY, "latent_channels": 4, "vae_from": str(shapes.model.CHECKPOINT_DIR)})
    with pytest.raises(ValueError, match="8 latent channels.*latent_channels=4"):
        pretrain(config, tmp_path / "x", log=lambda _: None)
    assert not (tmp_path / "x").exists()


def test_pretraining_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        pretrain(PretrainConfig(**TINY), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_pretrain_command_line_reads_the_yaml_and_refuses_unknown_fields(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 2\nbogus: 1\n")
    with pytest.raises(SystemExit):
        main(["--config", str(config), "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_pretrain_command_line_overrides_the_yaml_even_to_null(tmp_path):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "eval_seeds": [0], "snr_gamma": 5.0, "offset_noise": 0.1}))
    main(["--config", str(config), "--snr_gamma", "null", "--offset_noise", "0", "--output-dir", str(tmp_path / "o")])
    recorded = shapes.training_info(tmp_path / "o")["config"]
    assert recorded["snr_gamma"] is None and recorded["offset_noise"] == 0 and recorded["steps"] == TINY["steps"]


def test_shipped_config_is_the_one_recorded_with_the_checkpoint():
    import yaml

    shipped = yaml.safe_load((shapes.CHECKPOINT_DIR.parent / "pretrain.yaml").read_text())
    recorded = shapes.training_info()["config"]
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in PretrainConfig(**shipped).__dict__.items()}
    assert config == recorded
    assert shapes.training_info()["train_seconds"] < 60 * 60  # the pretraining budget: an hour on 2 cores


def test_shipped_checkpoint_loads_offline_as_a_stable_diffusion_pipeline():
    pipe = shapes.load_pipeline()
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 32
    size = sum(p.stat().st_size for p in shapes.CHECKPOINT_DIR.rglob("*") if p.is_file())
    assert size < 12 * 2**20, f"the shipped checkpoint should stay a few MB, it is {size / 2**20:.1f} MiB"


def test_load_pipeline_names_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        shapes.load_pipeline(tmp_path)


@pytest.mark.slow
def test_shipped_base_alignment_is_the_recorded_one_and_in_the_range_worth_aligning():
    recorded = shapes.training_info()["alignment"]
    protocol = recorded["protocol"]
    config = PretrainConfig(eval_prompts=protocol["prompts"], eval_seeds=tuple(protocol["seeds"]),
                            num_inference_steps=protocol["num_inference_steps"],
                            guidance_scale=protocol["guidance_scale"])  # fmt: skip
    measured = evaluate_base(shapes.load_pipeline(), config)
    for split in ("held_out", "train"):
        # Same seeds and weights: only float rounding across CPUs can move a few attributes.
        assert measured[split]["alignment"] == pytest.approx(recorded[split]["alignment"], abs=0.03), split
    # Room both ways for preference optimization: right often enough to learn from, wrong often enough to improve.
    assert 0.45 <= measured["held_out"]["alignment"] <= 0.75
