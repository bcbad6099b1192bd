import copy
import math
import os

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_rpo.testing import tiny_lora_config, tiny_preference_dataset, tiny_sd_pipeline, tiny_sdxl_pipeline

from ._helpers import dpo_config, fake_hub, make_trainer, recorded_and_recomputed_policy_error

METRICS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "mse/policy_chosen",
    "mse/policy_rejected",
    "mse/ref_chosen",
    "mse/ref_rejected",
}


def _first_log(trainer):
    return next(entry for entry in trainer.state.log_history if "loss" in entry)


def _generate(pipe, seed=0):
    return pipe(
        "a red square",
        num_inference_steps=3,
        guidance_scale=1.0,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
    ).images


# -- training runs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_lora_training_runs_and_logs_trl_metrics(tmp_path, sdxl):
    trainer = make_trainer(tmp_path, sdxl=sdxl, max_steps=3)
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 3
    assert METRICS <= set(logs[0])
    assert all(math.isfinite(e["loss"]) for e in logs)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_first_loss_is_ln2_when_policy_equals_reference(tmp_path, lora):
    trainer = make_trainer(tmp_path, lora=lora, max_steps=1)
    trainer.train()
    first = _first_log(trainer)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_v_prediction_regresses_the_velocity_of_the_noised_latents(tmp_path):
    trainer = make_trainer(tmp_path, prediction_type="v_prediction", max_steps=1)
    assert trainer.prediction_type == "v_prediction"
    scheduler = trainer.noise_scheduler  # diffusers' own DDPM forward process and velocity

    def noised_and_velocity(latents, noise, timesteps):
        return scheduler.add_noise(latents, noise, timesteps), scheduler.get_velocity(latents, noise, timesteps)

    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    recorded, expected, against_noise = recorded_and_recomputed_policy_error(trainer, batch, noised_and_velocity)
    assert recorded == pytest.approx(expected, rel=1e-5)
    assert against_noise != pytest.approx(expected, rel=1e-2)


def test_config_prediction_type_overrides_the_schedulers(tmp_path):
    pipe = tiny_sd_pipeline(prediction_type="epsilon")
    trainer = DiffusionDPOTrainer(
        model=pipe,
        args=dpo_config(tmp_path, prediction_type="v_prediction"),
        train_dataset=tiny_preference_dataset(4),
        peft_config=tiny_lora_config(),
    )
    assert trainer.prediction_type == "v_prediction"


def test_training_changes_the_pipeline_generations(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3, learning_rate=5e-2)
    before = _generate(trainer.pipeline)
    trainer.train()
    after = _generate(trainer.pipeline)
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))


def test_model_can_be_a_local_pipeline_folder(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    trainer = DiffusionDPOTrainer(
        model=str(tmp_path / "pipe"),
        args=dpo_config(tmp_path / "out", max_steps=1),
        train_dataset=tiny_preference_dataset(4),
        peft_config=tiny_lora_config(),
    )
    assert isinstance(trainer.pipeline, StableDiffusionPipeline)
    trainer.train()


def test_missing_model_gives_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="could not load the pipeline"):
        DiffusionDPOTrainer(model=str(tmp_path / "nowhere"), args=dpo_config(tmp_path))


def test_pickapic_dataset_trains_directly(tmp_path):
    import io

    from datasets import Dataset

    def png(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    base = tiny_preference_dataset(4)
    ds = Dataset.from_dict(
        {
            "caption": base["prompt"],
            "jpg_0": [png(im) for im in base["rejected"]],
            "jpg_1": [png(im) for im in base["chosen"]],
            "label_0": [0.0, 0.0, 0.5, 0.0],
        }
    )
    trainer = make_trainer(tmp_path, dataset=ds, max_steps=1)
    assert len(trainer.train_dataset) == 3  # the tie is dropped
    trainer.train()


# -- the step ---------------------------------------------------------------------------------------------------------


def test_chosen_and_rejected_share_noise_timestep_and_caption_dropout(tmp_path):
    from trl_rpo.trainer import encode_prompts

    trainer = make_trainer(tmp_path, caption_dropout_probability=0.5)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(8)]))
    latents, cond = trainer.encode_batch(batch)
    assert latents.shape[0] == 16
    torch.testing.assert_close(cond["prompt_embeds"][:8], cond["prompt_embeds"][8:])
    empty = encode_prompts(trainer.pipeline, [""])["prompt_embeds"][0]
    assert 0 < sum(torch.allclose(row, empty) for row in cond["prompt_embeds"][:8]) < 8  # some pairs dropped
    noise, t = trainer.sample_noise_and_timesteps(latents)
    torch.testing.assert_close(noise[:8], noise[8:])
    assert torch.equal(t[:8], t[8:])


def test_timestep_bias_restricts_the_training_timesteps(tmp_path):
    trainer = make_trainer(tmp_path, timestep_bias_strategy="range", timestep_bias_begin=600,
                           timestep_bias_end=700, timestep_bias_multiplier=1e9)  # fmt: skip
    latents = torch.zeros(64, 4, 4, 4)
    _, t = trainer.sample_noise_and_timesteps(latents)
    assert torch.equal(t[:32], t[32:]) and t.min() >= 600 and t.max() < 700
    _, uniform = make_trainer(tmp_path / "uniform").sample_noise_and_timesteps(latents)
    assert uniform.min() < 600 or uniform.max() >= 700


def test_caption_dropout_drops_pairs_at_the_configured_rate(tmp_path):
    from trl_rpo.trainer import encode_prompts

    trainer = make_trainer(tmp_path, caption_dropout_probability=0.3)
    empty = encode_prompts(trainer.pipeline, [""])["prompt_embeds"][0]
    rows = [trainer.train_dataset[i % len(trainer.train_dataset)] for i in range(100)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    # The rate is what is measured here, not the VAE: latents of zeros keep the 20 steps fast.
    trainer.model_adapter.encode_images = lambda pixels, generator=None: torch.zeros(len(pixels), 4, 16, 16)
    dropped = []
    for _ in range(20):  # 2000 pairs
        cond = trainer.encode_batch(batch)[1]["prompt_embeds"]
        dropped += [torch.allclose(row, empty) for row in cond[:100]]
    # Binomial(2000, 0.3): mean 600, standard deviation 20.5; 4 standard deviations either side are rates 0.26-0.34.
    assert 518 <= sum(dropped) <= 682


def test_caption_dropout_uses_the_empty_prompt_for_the_whole_pair(tmp_path):
    from trl_rpo.trainer import encode_prompts

    trainer = make_trainer(tmp_path, caption_dropout_probability=1.0)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    _, cond = trainer.encode_batch(batch)
    empty = encode_prompts(trainer.pipeline, [""])["prompt_embeds"]
    for row in cond["prompt_embeds"]:
        torch.testing.assert_close(row, empty[0])


def test_sdxl_time_ids_come_from_each_images_real_size_and_crop(tmp_path):
    from datasets import Dataset
    from PIL import Image

    wide = Image.new("RGB", (96, 48), (200, 10, 10))
    tall = Image.new("RGB", (30, 60), (10, 200, 10))
    ds = Dataset.from_dict({"prompt": ["p"], "chosen": [wide], "rejected": [tall]})
    trainer = make_trainer(tmp_path, sdxl=True, dataset=ds, per_device_train_batch_size=1)
    res = trainer.resolution
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
    _, cond = trainer.encode_batch(batch)
    chosen_ids, rejected_ids = cond["time_ids"].tolist()
    assert chosen_ids == [48, 96, 0, (2 * res - res) // 2, res, res]
    assert rejected_ids == [60, 30, (2 * res - res) // 2, 0, res, res]
    assert cond["pooled_prompt_embeds"].shape[0] == 2


def test_sd15_conditioning_has_a_single_encoder_and_no_time_ids(tmp_path):
    trainer = make_trainer(tmp_path)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[0]]))
    _, cond = trainer.encode_batch(batch)
    assert set(cond) == {"prompt_embeds"}
    assert cond["prompt_embeds"].shape[-1] == trainer.pipeline.text_encoder.config.hidden_size


def test_images_are_resized_and_cropped_to_the_configured_resolution(tmp_path):
    trainer = make_trainer(tmp_path, resolution=16, random_crop=True, random_flip=True)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["pixel_values"].shape == (4, 3, 16, 16)


def test_each_dataloader_worker_draws_its_own_crops():
    # Every worker holds a copy of the collator: one seeded stream, copied, would give every worker the same crops.
    from torch.utils.data import DataLoader

    from tests._helpers import wide_preference_pairs
    from trl_rpo.trainer.diffusion_dpo_trainer import DataCollatorForDiffusionPreference

    rows = list(wide_preference_pairs(8))
    collator = DataCollatorForDiffusionPreference(32, random_crop=True, seed=0)
    loader = DataLoader(rows, batch_size=1, num_workers=2, collate_fn=collator)
    crops = [batch["crop_top_lefts"][0].tolist() for batch in loader]
    # Batches 0, 2, 4, 6 come from worker 0 and 1, 3, 5, 7 from worker 1: one shared stream would repeat the same
    # four crops. (Two single crops may coincide by chance, about 1 in 300; four in a row about 1 in 10^10.)
    assert crops[0::2] != crops[1::2]


# -- the reference model ----------------------------------------------------------------------------------------------


def test_disabled_adapter_reference_equals_a_frozen_copy(tmp_path):
    pipe = tiny_sd_pipeline()
    frozen_copy = copy.deepcopy(pipe.unet).eval()
    trainer = make_trainer(tmp_path, pipe=pipe, max_steps=2, learning_rate=5e-2)
    trainer.train()  # LoRA weights are now non-zero
    device = trainer.accelerator.device  # the trainer moved the UNet there (CUDA when there is one)
    frozen_copy.to(device)
    x = torch.randn(2, 4, 16, 16, device=device)
    t = torch.tensor([10, 500], device=device)
    cond = {"prompt_embeds": torch.randn(2, 77, 32, device=device)}
    with torch.no_grad():
        with trainer.reference_model() as ref:
            ref_out = trainer.unet_forward(ref, x, t, cond)
        copy_out = trainer.unet_forward(frozen_copy, x, t, cond)
        policy_out = trainer.unet_forward(trainer.model, x, t, cond)
    torch.testing.assert_close(ref_out, copy_out)
    assert not torch.allclose(policy_out, copy_out)  # adapters are back on


def test_lora_weights_stay_trainable_after_reference_passes(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.train()
    lora = {n: p for n, p in trainer.model.named_parameters() if "lora" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    assert all(p.dtype == torch.float32 for p in lora.values())
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if "lora" not in n)


def test_adapters_are_reenabled_even_if_the_reference_pass_fails(tmp_path):
    trainer = make_trainer(tmp_path)
    with torch.no_grad():  # non-zero LoRA weights, so that the policy differs from the reference
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    device = trainer.accelerator.device  # the trainer moved the UNet there (CUDA when there is one)
    x, t = torch.randn(2, 4, 16, 16, device=device), torch.tensor([10, 500], device=device)
    cond = {"prompt_embeds": torch.randn(2, 77, 32, device=device)}
    with torch.no_grad():
        policy = trainer.unet_forward(trainer.model, x, t, cond)
        with trainer.reference_model() as ref:
            reference = trainer.unet_forward(ref, x, t, cond)
        assert not torch.allclose(policy, reference)
        with pytest.raises(RuntimeError, match="boom"):
            with trainer.reference_model():
                raise RuntimeError("boom")
        torch.testing.assert_close(trainer.unet_forward(trainer.model, x, t, cond), policy)
    assert all(p.requires_grad for n, p in trainer.model.named_parameters() if "lora" in n)


def test_full_finetuning_makes_a_frozen_copy_or_uses_ref_model(tmp_path):
    trainer = make_trainer(tmp_path, lora=False)
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not any(p.requires_grad for p in trainer.ref_model.parameters())
    explicit = tiny_sd_pipeline(seed=1).unet
    trainer2 = DiffusionDPOTrainer(
        model=tiny_sd_pipeline(),
        ref_model=explicit,
        args=dpo_config(tmp_path / "b"),
        train_dataset=tiny_preference_dataset(4),
    )
    assert trainer2.ref_model is explicit


def test_sft_loss_trains_without_a_reference(tmp_path):
    trainer = make_trainer(tmp_path, lora=False, loss_type="sft", max_steps=1)
    assert trainer.ref_model is None
    trainer.train()
    first = _first_log(trainer)
    assert "rewards/chosen" not in first and first["loss"] == pytest.approx(first["mse/policy_chosen"], rel=1e-5)


def test_loss_types_given_as_a_list_add_their_weighted_terms(tmp_path):
    # TRL's multi-loss form: Diffusion-DPO plus 300 x the denoising loss on the chosen image.
    trainer = make_trainer(tmp_path, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 300.0], max_steps=1)
    assert trainer.needs_reference
    trainer.train()
    first = _first_log(trainer)
    dpo = -math.log(1 / (1 + math.exp(-first["rewards/margins"])))  # policy == reference: ln 2 at the first step
    assert first["loss"] == pytest.approx(dpo + 300.0 * first["mse/policy_chosen"], rel=1e-4)


def test_a_single_loss_type_string_becomes_a_one_item_list_as_in_trl():
    assert DiffusionDPOConfig(output_dir="x", loss_type="hinge").loss_type == ["hinge"]
    assert DiffusionDPOConfig(output_dir="x").loss_type == ["sigmoid"]


def test_loss_type_and_loss_weights_parse_from_the_command_line():
    from trl import TrlParser

    (args,) = TrlParser((DiffusionDPOConfig,)).parse_args_and_config(
        args=["--output_dir", "x", "--loss_type", "sigmoid", "sft", "--loss_weights", "1", "250"]
    )
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 250.0]


# -- saving, loading, resuming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_saved_lora_loads_into_a_fresh_pipeline_and_reproduces_generations(tmp_path, sdxl):
    build = tiny_sdxl_pipeline if sdxl else tiny_sd_pipeline
    trainer = DiffusionDPOTrainer(
        model=build(),
        args=dpo_config(tmp_path, max_steps=3, learning_rate=5e-2),
        train_dataset=tiny_preference_dataset(8),
        peft_config=tiny_lora_config(r=4, lora_alpha=8),  # alpha != r: the scale must survive the round trip
    )
    trainer.train()
    trainer.save_model()
    assert os.path.isfile(tmp_path / "pytorch_lora_weights.safetensors")
    trained = _generate(trainer.pipeline)
    fresh = build()
    base = _generate(fresh)
    fresh.load_lora_weights(str(tmp_path))
    reloaded = _generate(fresh)
    assert not torch.allclose(torch.from_numpy(trained), torch.from_numpy(base), atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(reloaded), torch.from_numpy(trained), atol=1e-5, rtol=1e-5)


def test_full_finetuning_saves_a_diffusers_unet(tmp_path):
    trainer = make_trainer(tmp_path, lora=False, max_steps=2, learning_rate=1e-3)
    trainer.train()
    trainer.save_model()
    unet = UNet2DConditionModel.from_pretrained(str(tmp_path), subfolder="unet")
    for (name, a), b in zip(unet.state_dict().items(), trainer.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_model_card_has_base_model_hyperparameters_tags_and_citations(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, hub_token="hf_supersecret_token_value")
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    for needle in (
        "library_name: diffusers",
        "diffusion-dpo",
        "trl",
        "lora",
        "learning_rate",
        "wallace2024diffusion",
        "zhao2025rpo",
        "load_lora_weights",
    ):
        assert needle in card, needle
    assert "hf_supersecret" not in card


def test_hub_token_never_reaches_saved_files(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, hub_token="hf_supersecret_token_value")
    trainer.train()
    trainer.save_model()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"hf_supersecret" not in path.read_bytes(), path


def _lora_state(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora" in n}


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resume_from_checkpoint_continues_the_run_exactly(tmp_path, lora):
    # A constant schedule: the interrupted run is told max_steps=2, which would reshape a decaying one.
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-2, lr_scheduler_type="constant")
    straight = make_trainer(tmp_path / "a", lora=lora, **common)
    straight.train()

    interrupted = make_trainer(tmp_path / "b", lora=lora, **{**common, "max_steps": 4})
    interrupted.args.max_steps = 2  # stop after the first checkpoint, as a crash would
    interrupted.train()
    assert (tmp_path / "b" / "checkpoint-2").is_dir()

    resumed = make_trainer(tmp_path / "b", lora=lora, **common)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    a = dict(straight.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, a[name], msg=name, atol=1e-5, rtol=1e-4)


def test_resume_never_turns_the_reference_into_trained_weights(tmp_path):
    common = dict(max_steps=2, save_strategy="steps", save_steps=2, learning_rate=5e-2)
    make_trainer(tmp_path, lora=False, **common).train()
    base = tiny_sd_pipeline().unet
    resumed = make_trainer(tmp_path, lora=False, **{**common, "max_steps": 3})
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    for (name, ref), orig in zip(resumed.ref_model.state_dict().items(), base.state_dict().values()):
        torch.testing.assert_close(ref, orig, msg=name)


def test_lora_resume_keeps_reference_at_base_weights(tmp_path):
    common = dict(max_steps=2, save_strategy="steps", save_steps=2, learning_rate=5e-2)
    make_trainer(tmp_path, **common).train()
    resumed = make_trainer(tmp_path, **{**common, "max_steps": 3})
    resumed.train(resume_from_checkpoint=True)
    base = tiny_sd_pipeline().unet.eval()
    x, t, cond = torch.randn(1, 4, 16, 16), torch.tensor([100]), {"prompt_embeds": torch.randn(1, 77, 32)}
    with torch.no_grad(), resumed.reference_model() as ref:
        torch.testing.assert_close(resumed.unet_forward(ref, x, t, cond), resumed.unet_forward(base, x, t, cond))


def test_training_refuses_to_overwrite_an_earlier_runs_checkpoints(tmp_path):
    make_trainer(tmp_path, save_strategy="steps", save_steps=2).train()
    again = make_trainer(tmp_path, save_strategy="steps", save_steps=2)
    with pytest.raises(FileExistsError, match="resume_from_checkpoint=True"):
        again.train()


def test_resume_from_a_folder_without_weights_names_the_file(tmp_path):
    trainer = make_trainer(tmp_path)
    (tmp_path / "checkpoint-9").mkdir()
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-9"))


# -- speed and memory options --------------------------------------------------------------------------------


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_precomputed_latents_give_the_same_first_step(tmp_path, sdxl, monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    # The VAE posterior's mean instead of a draw: the two paths sample it at different times (dataset preparation
    # vs. the step), so only its mean is comparable.
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)
    # A cache of its own: another test's cache of the same rows holds posterior *samples*, not the mean patched here.
    trainer = make_trainer(tmp_path, sdxl=sdxl, precompute_latents=True, max_steps=1,
                           precompute_cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert "chosen_latents" in trainer.train_dataset.column_names
    assert "chosen" not in trainer.train_dataset.column_names
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert "latents" in batch and "pixel_values" not in batch
    trainer.train()
    assert trainer.pipeline.vae.device.type == "cpu"
    plain = make_trainer(tmp_path / "plain", sdxl=sdxl, max_steps=1)
    plain.train()
    precomputed, expected = _first_log(trainer), _first_log(plain)
    for key in ("mse/policy_chosen", "mse/policy_rejected", "grad_norm"):
        assert precomputed[key] == pytest.approx(expected[key], rel=1e-5), key


def test_precompute_with_caption_dropout_uses_null_embeddings(tmp_path):
    trainer = make_trainer(tmp_path, precompute_latents=True, caption_dropout_probability=1.0)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    _, cond = trainer.encode_batch(batch)
    null = trainer._null_conditioning["prompt_embeds"][0]
    for row in cond["prompt_embeds"]:
        torch.testing.assert_close(row, null)


def test_gradient_checkpointing_is_enabled_on_the_unet(tmp_path):
    trainer = make_trainer(tmp_path, activation_checkpointing=True, max_steps=1)
    assert trainer.model.is_gradient_checkpointing
    trainer.train()


def test_bf16_mixed_precision_keeps_lora_in_float32(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, max_steps=1, use_cpu=True)
    assert trainer.pipeline.text_encoder.dtype == torch.bfloat16
    base = [p for n, p in trainer.model.named_parameters() if "lora" not in n]
    assert base[0].dtype == torch.bfloat16
    trainer.train()
    assert math.isfinite(_first_log(trainer)["loss"])


def test_vae_stays_float32_under_fp16_when_its_config_asks(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.weight_dtype = torch.float16
    trainer.pipeline.vae.register_to_config(force_upcast=True)
    assert trainer._vae_dtype(trainer.args) == torch.float32
    trainer.pipeline.vae.register_to_config(force_upcast=False)
    assert trainer._vae_dtype(trainer.args) == torch.float16
    trainer.args.vae_dtype = "bfloat16"
    assert trainer._vae_dtype(trainer.args) == torch.bfloat16


def test_8bit_adamw_through_the_optim_argument(tmp_path):
    pytest.importorskip("bitsandbytes")
    # bitsandbytes keeps tensors under 4096 elements in 32 bit; full fine-tuning has larger ones.
    trainer = make_trainer(tmp_path, lora=False, optim="adamw_bnb_8bit", max_steps=2)
    trainer.train()
    states = [t for state in trainer.optimizer.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    assert any(t.dtype == torch.uint8 for t in states)  # quantized moments
    assert math.isfinite(_first_log(trainer)["loss"])


# -- evaluation, validation images, subclassing ------------------------------------------------------------


def test_evaluate_reports_eval_metrics_and_is_repeatable(tmp_path):
    trainer = DiffusionDPOTrainer(
        model=tiny_sd_pipeline(),
        args=dpo_config(tmp_path),
        train_dataset=tiny_preference_dataset(4),
        eval_dataset=tiny_preference_dataset(4, seed=1),
        peft_config=tiny_lora_config(),
    )
    trainer.train()
    first, second = trainer.evaluate(), trainer.evaluate()
    assert {"eval_loss", "eval_rewards/accuracies", "eval_mse/policy_chosen"} <= set(first)
    assert first["eval_loss"] == second["eval_loss"]


def test_validation_images_are_saved_every_n_steps(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=2,
        validation_prompts=["a red square", "a blue square"],
        validation_steps=1,
        validation_num_inference_steps=2,
        num_validation_images=2,
    )
    trainer.train()
    for step in (1, 2):
        folder = tmp_path / "validation" / f"step-{step:06d}"
        assert len(list(folder.glob("*.png"))) == 4


def test_a_subclass_can_replace_the_loss_in_a_few_lines(tmp_path):
    calls = []

    class MarginDPOTrainer(DiffusionDPOTrainer):
        def preference_loss(self, pc, pr, rc, rr):
            losses, chosen, rejected = super().preference_loss(pc, pr, rc, rr)
            calls.append(1)
            return losses + 0.1 * torch.relu(pc - rc), chosen, rejected

    trainer = MarginDPOTrainer(
        model=tiny_sd_pipeline(),
        args=dpo_config(tmp_path, max_steps=2),
        train_dataset=tiny_preference_dataset(4),
        peft_config=tiny_lora_config(),
    )
    trainer.train()
    assert len(calls) == 2


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="loss_type"):
        DiffusionDPOConfig(output_dir="x", loss_type="dpo")
    with pytest.raises(ValueError, match="loss_type"):
        DiffusionDPOConfig(output_dir="x", loss_type=["sigmoid", "sft", "sigmoid"])
    with pytest.raises(ValueError, match="one weight per type"):
        DiffusionDPOConfig(output_dir="x", loss_type=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="loss_weights"):
        DiffusionDPOConfig(output_dir="x", loss_type=["sigmoid", "sft"], loss_weights=[1.0, -2.0])
    with pytest.raises(ValueError, match="beta"):
        DiffusionDPOConfig(output_dir="x", beta=0)
    with pytest.raises(ValueError, match="caption_dropout"):
        DiffusionDPOConfig(output_dir="x", caption_dropout_probability=1.5)
    with pytest.raises(ValueError, match="timestep_bias_strategy"):
        DiffusionDPOConfig(output_dir="x", timestep_bias_strategy="middle")
    with pytest.raises(ValueError, match="timestep_bias_portion"):
        DiffusionDPOConfig(output_dir="x", timestep_bias_strategy="later", timestep_bias_portion=1.5)
    with pytest.raises(ValueError, match="timestep_bias_begin"):
        DiffusionDPOConfig(output_dir="x", timestep_bias_begin=500, timestep_bias_end=200)


def test_pipeline_without_a_unet_is_rejected(tmp_path):
    class NotAPipeline:
        unet = None

    with pytest.raises(TypeError, match="StableDiffusionPipeline"):
        DiffusionDPOTrainer(model=NotAPipeline(), args=dpo_config(tmp_path))


def test_push_to_hub_uploads_lora_and_card_without_secrets(tmp_path, monkeypatch):
    hub = fake_hub(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_env_secret_value")
    trainer = make_trainer(tmp_path / "sd-dpo", max_steps=1, hub_model_id="me/sd-dpo", hub_token="hf_arg_secret_value")
    trainer.train()
    trainer.push_to_hub(dataset_name="me/pairs")
    ((repo_id, files),) = hub.uploads
    assert repo_id == "me/sd-dpo"
    assert {"pytorch_lora_weights.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert "me/pairs" in card and 'load_lora_weights("me/sd-dpo")' in card
    for name, data in files.items():
        assert b"hf_env_secret" not in data and b"hf_arg_secret" not in data, name


def test_vae_encoding_ignores_an_enclosing_autocast():
    from trl_rpo.trainer import encode_images

    vae = tiny_sd_pipeline().vae
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    plain = encode_images(vae, pixels, torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = encode_images(vae, pixels, torch.Generator().manual_seed(0))
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, plain)


def test_training_refuses_to_replace_weights_saved_by_an_earlier_run(tmp_path):
    first = make_trainer(tmp_path, max_steps=1)
    first.train()
    first.save_model()
    with pytest.raises(FileExistsError, match="pytorch_lora_weights.safetensors"):
        make_trainer(tmp_path, max_steps=1).train()


def test_resume_accepts_the_command_line_spelling_of_true(tmp_path):
    make_trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=1).train()
    resumed = make_trainer(tmp_path, max_steps=3, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint="true")
    assert resumed.state.global_step == 3


def test_model_card_lists_the_method_hyperparameters_as_plain_values(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, beta=2500, loss_type="hinge")
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert "| beta | 2500 |" in card and "| loss_type | hinge |" in card and "loss_weights" not in card
    assert "OptimizerNames" not in card and "SchedulerType" not in card and '"None"' not in card


def test_model_card_writes_combined_loss_types_and_their_weights(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 250.0])
    trainer.train()
    trainer.save_model()
    card = (tmp_path / "README.md").read_text()
    assert "| loss_type | sigmoid + sft |" in card and "| loss_weights | [1.0, 250.0] |" in card


def test_model_card_writes_the_timestep_bias(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, timestep_bias_strategy="later", timestep_bias_portion=0.5,
                           timestep_bias_multiplier=0.0)  # fmt: skip
    trainer.train()
    trainer.save_model()
    assert "| timestep_bias | later 0.5 of the timesteps x 0 |" in (tmp_path / "README.md").read_text()


# -- MaPO and masked Diffusion-DPO ------------------------------------------------------------------------------


def test_mapo_loss_trains_without_any_reference_pass_and_matches_its_equation(tmp_path, monkeypatch):
    from trl_rpo.losses import mapo_loss

    trainer = make_trainer(tmp_path, lora=False, loss_type="mapo", max_steps=1, mapo_beta=0.3, mapo_snr_value=0.7)
    assert trainer.ref_model is None and not trainer.needs_reference
    monkeypatch.setattr(trainer, "reference_model", lambda: pytest.fail("MaPO must not run the reference"))
    seen = []
    real = trainer.preference_loss

    def recording(*errors):
        out = real(*errors)
        seen.append((errors, out))
        return out

    trainer.preference_loss = recording
    trainer.train()
    ((errors, (losses, chosen, rejected)),) = seen
    assert errors[2] is None and errors[3] is None
    expected = mapo_loss(errors[0].detach(), errors[1].detach(), beta=0.3, snr_value=0.7, num_train_timesteps=1000)
    torch.testing.assert_close(losses.detach(), expected[0])
    torch.testing.assert_close(chosen, expected[1])
    first = _first_log(trainer)
    assert "mse/ref_chosen" not in first
    assert first["loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
    assert first["loss"] > first["mse/policy_chosen"]  # the margin term -beta * logsigmoid(...) is positive


def _masked_dataset(rows=4, none_rows=(3,)):
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    data = tiny_preference_dataset(rows)
    left = Image.new("L", (32, 32), 0)
    left.paste(255, (0, 0, 16, 32))  # the edit covers the left half
    masks = [None if i in none_rows else left for i in range(rows)]
    features = Features({**data.features, "mask": ImageFeature()})  # as the builder writes it
    return Dataset.from_dict({**data.to_dict(), "mask": masks}, features=features)


def _mask_batch(trainer, rows=4):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(rows)])


def test_masked_collator_carries_masks_and_weights_follow_them(tmp_path):
    trainer = make_trainer(tmp_path, dataset=_masked_dataset(), mask_dilation=0, mask_weight_outside=0.0,
                           per_device_train_batch_size=4)  # fmt: skip
    assert "mask" in trainer.train_dataset.column_names
    batch = _mask_batch(trainer)
    assert batch["masks"].shape == (4, 1, 32, 32) and batch["has_mask"].tolist() == [True, True, True, False]
    latents = torch.zeros(8, 4, 16, 16)
    weight = trainer.loss_weights(batch, latents)
    assert weight.shape == (8, 1, 16, 16)
    for pair in range(3):  # chosen (pair) and rejected (pair + 4) get the pair's mask
        for row in (pair, pair + 4):
            assert torch.all(weight[row, :, :, :8] == 1) and torch.all(weight[row, :, :, 8:] == 0)
    assert torch.all(weight[3] == 1) and torch.all(weight[7] == 1)  # no mask: the plain loss


def test_mask_of_ones_gives_the_plain_loss_and_zero_weight_outside_ignores_errors_there(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, dataset=_masked_dataset(none_rows=()), mask_dilation=0,
                           per_device_train_batch_size=4)  # fmt: skip
    batch = _mask_batch(trainer)
    plain = {k: v for k, v in batch.items() if k not in ("masks", "has_mask")}

    def policy_errors(inputs, perturb_right_half=False):
        real_forward = type(trainer).unet_forward

        def forward(self, unet, noisy, timesteps, conditioning):
            out = real_forward(self, unet, noisy, timesteps, conditioning)
            if perturb_right_half:
                out = out.clone()
                out[..., 8:] += 3.0
            return out

        monkeypatch.setattr(type(trainer), "unet_forward", forward)
        trainer._metrics["train"].clear()
        trainer.rank_generator.manual_seed(0)  # the same noise and timesteps
        torch.manual_seed(0)  # the same VAE posterior draw
        with torch.no_grad():
            trainer.compute_loss(trainer.model, inputs)
        monkeypatch.setattr(type(trainer), "unet_forward", real_forward)
        return trainer._metrics["train"]["mse/policy_chosen"][-1], trainer._metrics["train"]["mse/ref_chosen"][-1]

    ones = {**batch, "masks": torch.ones_like(batch["masks"])}
    assert policy_errors(ones) == pytest.approx(policy_errors(plain), rel=1e-6)
    masked = policy_errors(batch)
    assert masked != pytest.approx(policy_errors(plain), rel=1e-3)  # the left-half mask does change the errors
    # Errors changed only outside the mask (right half) leave the masked errors, policy and reference, unchanged.
    assert policy_errors(batch, perturb_right_half=True) == pytest.approx(masked, rel=1e-6)
    assert policy_errors(plain, perturb_right_half=True)[0] > policy_errors(plain)[0]


def test_precomputed_cache_carries_masks_at_latent_resolution(tmp_path):
    trainer = make_trainer(tmp_path, dataset=_masked_dataset(), precompute_latents=True, mask_dilation=1,
                           mask_weight_outside=0.25, per_device_train_batch_size=4,
                           precompute_cache_dir=str(tmp_path / "cache"))  # fmt: skip
    assert {"latent_mask", "has_mask"} <= set(trainer.train_dataset.column_names)
    batch = _mask_batch(trainer)
    assert batch["has_mask"].tolist() == [True, True, True, False]
    raw = make_trainer(tmp_path / "raw", dataset=_masked_dataset(), mask_dilation=1, mask_weight_outside=0.25,
                       per_device_train_batch_size=4)  # fmt: skip
    latents = torch.zeros(8, 4, 16, 16)
    torch.testing.assert_close(trainer.loss_weights(batch, latents), raw.loss_weights(_mask_batch(raw), latents))
    trainer.train()
    assert math.isfinite(_first_log(trainer)["loss"])
