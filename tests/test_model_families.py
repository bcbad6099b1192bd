"""Every flow family of the registry end to end on its tiny pipeline: detection and `from_pretrained`, rollouts that
reproduce the pipeline's own sampling, every trainer one step from the CLI (first DPO loss ln 2), LoRA round trips.

SD3 and FLUX.1 have their own tests (`test_flow_models.py`); they join the rollout-vs-pipeline check here. The
families added through the registry (Qwen-Image, Z-Image, FLUX.2 [klein]) get every check; [klein], which diffusers
gives no img2img pipeline, refines through its family's SDEdit on the text-to-image pipeline.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from trl_rpo import DiffusionDPOTrainer, DiffusionNFTConfig, DiffusionNFTTrainer
from trl_rpo.cli import main
from trl_rpo.families import detect_family
from trl_rpo.families.flow import pack_latents
from trl_rpo.testing import (
    tiny_flux2_klein_pipeline,
    tiny_flux_pipeline,
    tiny_lora_config,
    tiny_preference_dataset,
    tiny_qwen_image_pipeline,
    tiny_sd3_pipeline,
    tiny_z_image_pipeline,
)

from ._helpers import FAST_ARGS, brightness, dpo_config

torch.set_num_threads(1)

TEXT_LENGTH = 32
PROMPTS = Dataset.from_dict({"prompt": ["a red square", "a blue circle", "a green triangle", "a yellow star"]})


@dataclass(frozen=True)
class Spec:
    """A family's tiny pipeline and how its pipeline is called for CFG scale `s` on `n` prompts (`guidance(s, n)`)."""

    build: Callable[[], Any]
    pipeline_class: str
    guidance: Callable[[float, int], dict] = field(default=lambda s, n: {"guidance_scale": s})
    # Rollout keywords that give the pipeline's own guidance (FLUX.1: none; its embedding is not CFG).
    rollout_guidance: dict = field(default_factory=lambda: {"guidance_scale": 2.0})


FLOW_FAMILIES = {
    "sd3": Spec(tiny_sd3_pipeline, "StableDiffusion3Pipeline"),
    "flux": Spec(
        tiny_flux_pipeline, "FluxPipeline", guidance=lambda s, n: {"guidance_scale": 3.5}, rollout_guidance={}
    ),
    "qwen_image": Spec(
        tiny_qwen_image_pipeline, "QwenImagePipeline",
        guidance=lambda s, n: {"true_cfg_scale": s, "negative_prompt": [""] * n},
    ),  # fmt: skip
    # Z-Image's guidance_scale g: CFG for g > 0, `cond + g (cond - uncond)`; the trainers' guidance_scale is g.
    "z_image": Spec(tiny_z_image_pipeline, "ZImagePipeline", rollout_guidance={"guidance_scale": 0.5},
                    guidance=lambda s, n: {"guidance_scale": s}),  # fmt: skip
    "flux2_klein": Spec(tiny_flux2_klein_pipeline, "Flux2KleinPipeline"),
}
NEW_FAMILIES = ["qwen_image", "z_image", "flux2_klein"]
# Rollout checks: every flow family, and the step-distilled FLUX.2 [klein], whose pipeline runs no CFG at any scale.
ROLLOUT_CASES = {
    **FLOW_FAMILIES,
    "flux2_klein-distilled": Spec(lambda: tiny_flux2_klein_pipeline(is_distilled=True), "Flux2KleinPipeline"),
    # FLUX.1-schnell's scheduler: a static shift, and still the pipeline's linspace(1, 1/N, N) sigmas.
    "flux-schnell-scheduler": Spec(lambda: _with_static_shift(tiny_flux_pipeline()), "FluxPipeline",
                                   guidance=lambda s, n: {"guidance_scale": 3.5}, rollout_guidance={}),  # fmt: skip
}


def _with_static_shift(pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return pipe


def _generate(pipe, spec: Spec, seed: int = 0, **kwargs) -> np.ndarray:
    return pipe(
        prompt=["a red square"], num_inference_steps=3, height=32, width=32, max_sequence_length=TEXT_LENGTH,
        output_type="np", generator=torch.Generator().manual_seed(seed), **{**spec.guidance(2.0, 1), **kwargs},
    ).images  # fmt: skip


# -- detection and loading --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_a_saved_tiny_pipeline_loads_with_from_pretrained_as_its_family(tmp_path, family):
    from diffusers import DiffusionPipeline

    spec = FLOW_FAMILIES[family]
    pipe = spec.build()
    assert detect_family(pipe).name == family and type(pipe).__name__ == spec.pipeline_class
    size = sum(p.numel() for p in pipe.components.values() if isinstance(p, torch.nn.Module) for p in p.parameters())
    assert size < 1_000_000  # a few MB
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / "pipe"))
    assert type(loaded).__name__ == spec.pipeline_class and detect_family(loaded).name == family
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_generate(loaded, spec), _generate(pipe, spec), atol=1e-5)
    # the same seed gives the same weights
    np.testing.assert_allclose(_generate(spec.build(), spec), _generate(pipe, spec), atol=1e-6)


# -- rollouts reproduce the pipeline ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(ROLLOUT_CASES))
def test_a_deterministic_rollout_ends_on_the_pipelines_image_for_the_same_noise(tmp_path, case):
    """Sigmas, shift, guidance and the denoiser call of the rollout sampler are the pipeline's own."""
    spec = ROLLOUT_CASES[case]
    args = DiffusionNFTConfig(
        output_dir=str(tmp_path), **{**FAST_ARGS, "max_steps": 1, "per_device_train_batch_size": 2},
        num_generations=2, num_inference_steps=3, sampler="ode", resolution=32, max_sequence_length=TEXT_LENGTH,
        **spec.rollout_guidance,
    )  # fmt: skip
    trainer = DiffusionNFTTrainer(
        model=spec.build(), reward_funcs=brightness, args=args, train_dataset=PROMPTS, peft_config=tiny_lora_config()
    )
    rollout = trainer.rollout(["a red square"], generator=torch.Generator().manual_seed(5))
    start, final = rollout.latents[:1, 0], rollout.latents[:1, -1]
    latents = pack_latents(start) if trainer.family.packed_latents else start
    images = trainer.pipeline(
        prompt=["a red square"], latents=latents.clone(), num_inference_steps=3, height=32, width=32,
        max_sequence_length=TEXT_LENGTH, output_type="pt",
        **spec.guidance(spec.rollout_guidance.get("guidance_scale", 2.0), 1),
    ).images  # fmt: skip
    torch.testing.assert_close(trainer.decode(final), images.float(), atol=1e-4, rtol=0)


# -- every trainer from the CLI ---------------------------------------------------------------------------------------


def _masked_dataset() -> Dataset:
    from datasets import Features
    from datasets import Image as ImageFeature
    from PIL import Image

    data = tiny_preference_dataset(2)
    left = Image.new("L", (32, 32), 0)
    left.paste(255, (0, 0, 16, 32))
    features = Features({**data.features, "mask": ImageFeature()})
    return Dataset.from_dict({**data.to_dict(), "mask": [left, left]}, features=features)


COMMON = ["--max_steps", "1", "--use_peft", "--lora_r", "4", "--report_to", "none", "--resolution", "32",
          "--max_sequence_length", str(TEXT_LENGTH), "--per_device_train_batch_size", "2", "--logging_steps", "1",
          "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip
ONLINE = ["--reward_funcs", "jpeg_compressibility", "--num_inference_steps", "2"]
COMMANDS = {
    "dpo": ["dpo"],
    "dpo-mapo": ["dpo", "--loss_type", "mapo"],
    "dpo-masked": ["dpo", "--mask_weight_outside", "0.0"],
    "grpo": ["grpo", *ONLINE, "--num_generations", "2"],
    "nft": ["nft", *ONLINE, "--num_generations", "2"],
    "tailorpo": ["tailorpo", *ONLINE],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_trainer_trains_one_step_from_the_cli(tmp_path, family, command):
    FLOW_FAMILIES[family].build().save_pretrained(tmp_path / "pipe")
    argv = [*COMMANDS[command], "--model_name_or_path", str(tmp_path / "pipe"), "--output_dir", str(tmp_path / "out")]
    if command.startswith("dpo"):
        data = _masked_dataset() if command == "dpo-masked" else tiny_preference_dataset(2)
        data.save_to_disk(tmp_path / "data")
        argv += ["--dataset_name", str(tmp_path / "data")]
    else:
        (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
        argv += ["--prompts_name_or_path", str(tmp_path / "prompts.txt")]
    assert main([*argv, *COMMON]) == 0
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    state = json.loads((tmp_path / "out" / "checkpoint-1" / "trainer_state.json").read_text())
    first = next(entry for entry in state["log_history"] if "loss" in entry)
    assert math.isfinite(first["loss"])
    if command in ("dpo", "dpo-masked"):  # policy == reference at the first step
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)


# -- LoRA round trip --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_a_trained_lora_reloads_into_the_familys_pipeline_with_identical_images(tmp_path, family):
    spec = FLOW_FAMILIES[family]
    trainer = DiffusionDPOTrainer(
        model=spec.build(),
        args=dpo_config(tmp_path, resolution=32, max_sequence_length=TEXT_LENGTH, max_steps=3, learning_rate=5e-2),
        train_dataset=tiny_preference_dataset(4),
        peft_config=tiny_lora_config(r=4, lora_alpha=8),  # alpha != r: the scale must survive the round trip
    )
    trainer.train()
    trainer.save_model()
    trained = _generate(trainer.pipeline, spec)
    fresh = spec.build()
    assert np.abs(trained - _generate(fresh, spec)).max() > 1e-3  # training changed the images
    fresh.load_lora_weights(str(tmp_path))
    np.testing.assert_allclose(_generate(fresh, spec), trained, atol=1e-5)
    assert spec.pipeline_class in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_validation_images_use_the_familys_guidance_convention(tmp_path, family):
    spec = FLOW_FAMILIES[family]
    prompts = ["a red square", "a blue circle"]
    trainer = DiffusionDPOTrainer(
        model=spec.build(),
        args=dpo_config(tmp_path, resolution=32, max_sequence_length=TEXT_LENGTH, validation_prompts=prompts,
                        validation_num_inference_steps=2, validation_guidance_scale=3.0, seed=7),  # fmt: skip
        train_dataset=tiny_preference_dataset(2),
        peft_config=tiny_lora_config(),
    )
    images = trainer.generate_validation_images()
    expected = spec.build()(
        prompt=prompts, num_inference_steps=2, height=32, width=32, max_sequence_length=TEXT_LENGTH, output_type="np",
        generator=torch.Generator().manual_seed(7), **spec.guidance(3.0, 2),
    ).images  # fmt: skip
    assert len(images) == 2
    np.testing.assert_allclose(np.stack([np.asarray(im) for im in images]), (expected * 255).round(), atol=1)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_dpo_on_precomputed_latents_and_text_with_caption_dropout(tmp_path, family):
    """The cache holds every conditioning entry of the family (text masks included) at one fixed shape."""
    trainer = DiffusionDPOTrainer(
        model=FLOW_FAMILIES[family].build(),
        args=dpo_config(tmp_path, resolution=32, max_sequence_length=TEXT_LENGTH, max_steps=2, precompute_latents=True,
                        precompute_cache_dir=str(tmp_path / "cache"), caption_dropout_probability=0.5),  # fmt: skip
        train_dataset=tiny_preference_dataset(4),
        peft_config=tiny_lora_config(),
    )
    cond = trainer.model_adapter.encode_prompts(["a red square"])
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(cond) <= set(batch) and all(batch[k].shape[1:] == v.shape[1:] for k, v in cond.items())
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and all(math.isfinite(e["loss"]) for e in logs)


# -- the data builder: generator and img2img refinement ---------------------------------------------------------------


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_the_builders_generator_calls_the_pipeline_in_its_familys_guidance_convention(tmp_path, family):
    from trl_rpo.data import RichPreferenceConfig
    from trl_rpo.data.builder.generation import PipelineGenerator

    spec = FLOW_FAMILIES[family]
    config = RichPreferenceConfig(output_dir=str(tmp_path), num_inference_steps=3, guidance_scale=2.0, resolution=32,
                                  max_sequence_length=TEXT_LENGTH)  # fmt: skip
    generated = PipelineGenerator(spec.build(), config)(["a red square"], [0])
    expected = _generate(spec.build(), spec)  # seed 0, 3 steps, CFG 2 in the family's convention
    np.testing.assert_allclose(np.asarray(generated[0], dtype=np.float32), (expected[0] * 255).round(), atol=1)


@pytest.mark.parametrize("family", ["qwen_image", "z_image"])
def test_an_img2img_refiner_runs_on_the_familys_img2img_sibling(family):
    from trl_rpo.data import Img2ImgRefiner

    refiner = Img2ImgRefiner(FLOW_FAMILIES[family].build(), strength=0.5, num_inference_steps=4, guidance_scale=2.0,
                             resolution=32, pipeline_kwargs={"max_sequence_length": TEXT_LENGTH})  # fmt: skip
    assert "Img2Img" in type(refiner.pipeline).__name__
    image = tiny_preference_dataset(1)[0]["chosen"].convert("RGB")
    (refined,) = refiner([image], ["a red square"])
    assert refined.size == image.size
    assert np.abs(np.asarray(refined, dtype=np.int16) - np.asarray(image, dtype=np.int16)).max() > 0


# FLUX.2 [klein]: diffusers has no klein img2img pipeline; the family does SDEdit on the text-to-image pipeline.


def _klein_refiner(strength: float, steps: int, **kwargs):
    from trl_rpo.data import Img2ImgRefiner

    kwargs["pipeline_kwargs"] = {"max_sequence_length": TEXT_LENGTH, **kwargs.get("pipeline_kwargs", {})}
    return Img2ImgRefiner(tiny_flux2_klein_pipeline(), strength=strength, num_inference_steps=steps,
                          **{"guidance_scale": 2.0, "resolution": 32, **kwargs})  # fmt: skip


def _step_recorder() -> tuple[list[float], Callable]:
    timesteps: list[float] = []

    def record(pipe, i, t, tensors):
        timesteps.append(float(t))
        return {}

    return timesteps, record


@pytest.mark.parametrize("strength", [0.3, 0.5, 0.25, 1.0])
def test_flux2_klein_sdedit_runs_the_last_strength_fraction_of_the_pipelines_own_schedule(strength):
    from types import SimpleNamespace

    from diffusers import FluxImg2ImgPipeline

    full, record = _step_recorder()  # the pipeline's own 10-step schedule at 32 px
    tiny_flux2_klein_pipeline()(prompt=["a red square"], num_inference_steps=10, height=32, width=32,
                                max_sequence_length=TEXT_LENGTH, callback_on_step_end=record)  # fmt: skip
    kept, record = _step_recorder()
    refiner = _klein_refiner(strength, 10, pipeline_kwargs={"callback_on_step_end": record})
    refiner([tiny_preference_dataset(1)[0]["chosen"]], ["a red square"])
    # As many steps as diffusers' flow img2img pipelines keep (N s; 2.5 rounds up), the last ones of the schedule.
    steps = FluxImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=SimpleNamespace(timesteps=[], order=1)),
                                              10, strength, "cpu")[1]  # fmt: skip
    assert len(kept) == steps == {0.3: 3, 0.5: 5, 0.25: 3, 1.0: 10}[strength]
    np.testing.assert_allclose(kept, full[-steps:], rtol=1e-6)


def test_flux2_klein_sdedit_stays_near_the_input_at_a_low_strength_and_forgets_it_at_strength_1():
    from trl_rpo.families import FAMILIES

    pipe = tiny_flux2_klein_pipeline()
    images = [row["chosen"].convert("RGB") for row in tiny_preference_dataset(2)]
    sdedit = FAMILIES["flux2_klein"].img2img(pipe)

    def refine(image, strength, steps):  # the VAE latents (the tiny VAE does not reconstruct; its latents do)
        return sdedit(prompt=["a red square"], image=[image], strength=strength, num_inference_steps=steps,
                      generator=[torch.Generator().manual_seed(0)], output_type="latent", guidance_scale=2.0,
                      max_sequence_length=TEXT_LENGTH).images  # fmt: skip

    pixels = pipe.image_processor.preprocess(images[:1], 32, 32)
    x0 = pipe.vae.encode(pixels).latent_dist.sample(generator=torch.Generator().manual_seed(0))
    distance = lambda latents: ((latents - x0).norm() / x0.norm()).item()  # noqa: E731
    assert distance(refine(images[0], 0.02, 50)) < 0.25  # one step from sigma 0.09
    assert distance(refine(images[0], 1.0, 10)) > 1.0
    # At strength 1 the input is all noise: two different images give the same result.
    torch.testing.assert_close(refine(images[0], 1.0, 4), refine(images[1], 1.0, 4))
    assert (refine(images[0], 0.5, 4) - refine(images[1], 0.5, 4)).abs().max() > 1e-3


def test_flux2_klein_refinement_pastes_back_outside_the_dilated_mask():
    from trl_rpo.data import dilate_mask

    image = Image.new("RGB", (32, 32), "white")
    image.paste("red", (8, 8, 16, 16))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 16, 16))
    refiner = _klein_refiner(0.5, 4, mask_dilation=2 / 32)
    (refined,) = refiner([image], ["a red square"], [mask])
    changed = np.abs(np.asarray(refined, dtype=np.int16) - np.asarray(image, dtype=np.int16)).max(axis=-1) > 0
    allowed = np.asarray(dilate_mask(mask, 2)) > 0
    assert changed.any() and not (changed & ~allowed).any()
    assert np.array_equal(np.asarray(refiner.last_masks[0]) > 0, allowed)


def test_flux2_klein_refinement_is_deterministic_for_a_seed():
    image = tiny_preference_dataset(1)[0]["chosen"].convert("RGB")
    refiner = _klein_refiner(0.5, 4)
    first = np.asarray(refiner([image], ["a red square"])[0], dtype=np.float32)
    assert np.abs(first - np.asarray(image, dtype=np.float32)).max() > 0
    np.testing.assert_array_equal(first, np.asarray(refiner([image], ["a red square"])[0], dtype=np.float32))
    # Each image has its own seeded generator: the same result in a batch (up to batched-matmul rounding).
    batched = refiner([image, image.transpose(Image.FLIP_LEFT_RIGHT)], ["a red square", "a blue circle"])
    np.testing.assert_allclose(np.asarray(batched[0], dtype=np.float32), first, atol=2)
    other = np.asarray(_klein_refiner(0.5, 4, seed=1)([image], ["a red square"])[0], dtype=np.float32)
    assert np.abs(other - first).max() > 0


# -- evaluation: `trl-rpo eval` loads what the trainers save --------------------------------------------------------


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_eval_loads_the_saved_lora_or_transformer_onto_a_copy_of_the_base(tmp_path, family, lora):
    from trl_rpo.evaluation import generate_images, load_trained_pipeline

    spec = FLOW_FAMILIES[family]
    trainer = DiffusionDPOTrainer(
        model=spec.build(),
        args=dpo_config(tmp_path, resolution=32, max_sequence_length=TEXT_LENGTH, max_steps=2, learning_rate=5e-2),
        train_dataset=tiny_preference_dataset(2),
        peft_config=tiny_lora_config() if lora else None,
    )
    trainer.train()
    trainer.save_model()
    sample = dict(seed=0, num_inference_steps=2, guidance_scale=2.0, height=32, width=32,
                  max_sequence_length=TEXT_LENGTH)  # fmt: skip
    base = spec.build()
    before = np.asarray(generate_images(base, ["a red square"], **sample)[0], dtype=np.int16)
    loaded = load_trained_pipeline(tmp_path, base)
    trained = np.asarray(generate_images(trainer.pipeline, ["a red square"], **sample)[0], dtype=np.int16)
    np.testing.assert_array_equal(np.asarray(generate_images(loaded, ["a red square"], **sample)[0]), trained)
    after = np.asarray(generate_images(base, ["a red square"], **sample)[0], dtype=np.int16)
    np.testing.assert_array_equal(after, before)  # the base itself is untouched
    assert np.abs(trained - before).max() > 0


# -- online training starts on-policy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_grpo_recomputes_the_rollouts_log_probabilities_exactly(tmp_path, family):
    """The training pass (the family's guided denoiser call on the SDE step) gives ratio 1 and KL 0 at first."""
    from trl_rpo import DiffusionGRPOConfig, DiffusionGRPOTrainer

    args = DiffusionGRPOConfig(
        output_dir=str(tmp_path), **{**FAST_ARGS, "max_steps": 1, "per_device_train_batch_size": 4},
        num_generations=2, num_inference_steps=3, beta=0.05, resolution=32, max_sequence_length=TEXT_LENGTH,
        **FLOW_FAMILIES[family].rollout_guidance,
    )  # fmt: skip
    trainer = DiffusionGRPOTrainer(model=FLOW_FAMILIES[family].build(), reward_funcs=brightness, args=args,
                                   train_dataset=PROMPTS, peft_config=tiny_lora_config())  # fmt: skip
    prompts = ["a red square", "a blue circle"]
    rollout = trainer.rollout(prompts)
    assert rollout.train_steps == [0, 1, 2] and torch.isfinite(rollout.log_probs).all()
    cond, uncond = trainer.encode_conditioning(prompts)
    with torch.no_grad():
        recomputed = trainer.step_log_probs(trainer.model, rollout, cond, uncond)
    ratio = torch.exp(recomputed - rollout.log_probs[:, rollout.train_steps].transpose(0, 1))
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)
    trainer.train()
    first = next(e for e in trainer.state.log_history if "loss" in e)
    assert first["kl"] == 0.0 and first["clip_ratio/region_mean"] == 0.0 and math.isfinite(first["loss"])
