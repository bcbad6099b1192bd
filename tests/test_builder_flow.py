"""RichPreferenceDataBuilder with flow-matching models: an SD3 / FLUX.1 generator, FLUX.1 Kontext as the editor."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_rpo.data import (
    EditorRouter,
    FluxKontextEditor,
    Img2ImgRefiner,
    RichPreferenceConfig,
    RichPreferenceDataBuilder,
)
from trl_rpo.data.builder import BUILDER_FEATURES
from trl_rpo.testing import tiny_flux_kontext_pipeline, tiny_flux_pipeline, tiny_lora_config, tiny_sd3_pipeline

from ._helpers import FakeHubApi

torch.set_num_threads(1)

BUILDERS = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}
PIPELINE_CLASSES = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
PROMPTS = ["a red square", "a blue sky", "a red circle"]
# The tiny Kontext pipeline at the working size: no resizing to Kontext's preferred resolutions, a short T5.
KONTEXT_KWARGS = {"_auto_resize": False, "max_sequence_length": 16, "max_area": 32 * 32}


def critic(images, prompts):
    """Deterministic: red things are recolored, everything else is already good (no instructions)."""
    return [
        {"critique": "it is red", "instructions": [{"instruction": "make it blue", "kind": "recolor"}]}
        if "red" in prompt
        else {"critique": "fine", "instructions": []}
        for prompt in prompts
    ]


def no_editor(images, instructions, prompts):
    return [None for _ in images]


def config(output_dir, **overrides):
    values = dict(
        output_dir=str(output_dir),
        images_per_prompt=2,
        shard_size=2,
        batch_size=3,
        num_inference_steps=2,
        guidance_scale=3.5,
        resolution=32,
        disable_tqdm=True,
    )
    return RichPreferenceConfig(**{**values, **overrides})


def pixels(image):
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_builder_makes_pairs_with_a_flow_generator_and_the_kontext_editor(tmp_path, family, monkeypatch):
    # Every model goes through save_pretrained / from_pretrained, as a user's local checkpoints would.
    BUILDERS[family](seed=0).save_pretrained(tmp_path / "generator")
    tiny_flux_kontext_pipeline(seed=1).save_pretrained(tmp_path / "kontext")
    kontext = FluxKontextEditor(
        str(tmp_path / "kontext"), num_inference_steps=2, resolution=32, pipeline_kwargs=KONTEXT_KWARGS
    )
    router = EditorRouter({"recolor": kontext})
    builder = RichPreferenceDataBuilder(str(tmp_path / "generator"), critic, router, args=config(tmp_path / "out"))

    dataset = builder.build(PROMPTS)

    assert dataset.column_names == list(BUILDER_FEATURES)
    assert type(builder.generator.pipeline).__name__ == PIPELINE_CLASSES[family]
    # Prompts 0 and 2 are red: 2 images each are edited; the 2 images of "a blue sky" need no edit.
    assert builder.stats["kept"] == 4 and builder.stats["no_edit"] == 2 and builder.stats["edit_failed"] == 0
    assert [p["prompt_index"] for p in dataset["provenance"]] == [0, 0, 2, 2]
    for row in dataset:
        assert row["chosen"].size == row["rejected"].size == (32, 32)
        assert np.abs(pixels(row["chosen"]) - pixels(row["rejected"])).max() > 0
        assert row["edit_method"] == "flux_kontext"
        assert row["instructions"][0]["instruction"] == "make it blue" and row["critique"] == "it is red"
        assert row["provenance"]["generator"] == str(tmp_path / "generator")
        assert row["provenance"]["editors"] == ["router(flux_kontext)"]
    # The rejected image is the generator's own image for that seed, untouched.
    row = dataset[2]
    again = builder.generator([row["prompt"]], [row["provenance"]["seed"]])[0]
    np.testing.assert_array_equal(pixels(again), pixels(row["rejected"]))

    # Saved: a fresh builder on the same folder loads the pairs; rerunning does no work.
    reloaded = RichPreferenceDataBuilder(str(tmp_path / "generator"), critic, router, args=config(tmp_path / "out"))
    loaded = reloaded.load()
    assert len(loaded) == 4
    for a, b in zip(dataset, loaded):
        np.testing.assert_array_equal(pixels(a["chosen"]), pixels(b["chosen"]))
        np.testing.assert_array_equal(pixels(a["rejected"]), pixels(b["rejected"]))
    reloaded.build(PROMPTS)
    assert reloaded.run_stats["images"] == 0

    # Pushed: the dataset and a card naming the flow generator and the Kontext editor.
    FakeHubApi.instances = []
    pushed = []
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHubApi)
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, len(self))))
    builder.push_to_hub("me/rpo-flow-pairs")
    assert pushed == [("me/rpo-flow-pairs", 4)]
    card = FakeHubApi.instances[0].calls[1][3]
    assert str(tmp_path / "generator") in card and "flux_kontext" in card


def test_a_flow_img2img_refiner_runs_on_the_kontext_edits_and_the_pairs_train_the_generator(tmp_path):
    generator = tiny_flux_pipeline(seed=0)
    kontext = FluxKontextEditor(
        tiny_flux_kontext_pipeline(seed=1), num_inference_steps=2, resolution=32, pipeline_kwargs=KONTEXT_KWARGS
    )
    refiner = Img2ImgRefiner(
        generator, strength=0.5, num_inference_steps=2, resolution=32, pipeline_kwargs={"max_sequence_length": 16}
    )
    builder = RichPreferenceDataBuilder(generator, critic, kontext, args=config(tmp_path / "out"), refiner=refiner)
    dataset = builder.build(PROMPTS[:1])

    assert type(refiner.pipeline).__name__ == "FluxImg2ImgPipeline"
    assert builder.stats["kept"] == 2 and builder.stats["refine_failed"] == 0
    assert builder.stage_names()["refiner"].startswith("Img2ImgRefiner(") and "strength=0.5" in repr(refiner)
    # The chosen image is the Kontext edit refined by the generator's own img2img.
    edited = kontext([dataset[0]["rejected"]], [["make it blue"]], [dataset[0]["prompt"]])[0]
    refined = refiner([edited], [dataset[0]["prompt"]], [None])[0]
    np.testing.assert_array_equal(pixels(refined), pixels(dataset[0]["chosen"]))
    assert np.abs(pixels(refined) - pixels(edited)).max() > 0
    assert dataset[0]["mask"] is None  # Kontext and a whole-image refinement may change any pixel

    # The pairs train the flow model that generated them, as they are.
    trainer = DiffusionDPOTrainer(
        model=generator,
        args=DiffusionDPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_steps=1,
            per_device_train_batch_size=2,
            resolution=32,
            max_sequence_length=16,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
        ),
        train_dataset=dataset,
        peft_config=tiny_lora_config(),
    )
    trainer.train()
    assert trainer.state.global_step == 1 and trainer.prediction_type == "flow"


def test_a_negative_prompt_flux_would_ignore_is_refused_and_sd3_uses_it(tmp_path):
    with pytest.raises(ValueError, match=r"FluxPipeline applies a negative prompt only with true_cfg_scale > 1"):
        RichPreferenceDataBuilder(tiny_flux_pipeline(), critic, no_editor, args=config(tmp_path, negative_prompt="x"))

    # A folder is checked when it is loaded, before anything is generated.
    tiny_flux_pipeline().save_pretrained(tmp_path / "flux")
    builder = RichPreferenceDataBuilder(
        str(tmp_path / "flux"), critic, no_editor, args=config(tmp_path / "out", negative_prompt="x")
    )
    with pytest.raises(ValueError, match="negative_prompt is set, but FluxPipeline"):
        builder.generator(["a cat"], [0])

    # SD3 runs classifier-free guidance: the negative prompt changes the image.
    sd3 = tiny_sd3_pipeline()
    plain = RichPreferenceDataBuilder(sd3, critic, no_editor, args=config(tmp_path / "a")).generator(["a"], [0])
    negative = RichPreferenceDataBuilder(
        sd3, critic, no_editor, args=config(tmp_path / "b", negative_prompt="blurry")
    ).generator(["a"], [0])
    assert np.abs(pixels(plain[0]) - pixels(negative[0])).max() > 0


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_resolution_the_flow_pipeline_would_resize_or_reject_is_refused(tmp_path, family):
    # The real models' factors: an 8x VAE, and 2x2 patches on top (FLUX packs latents, SD3's transformer patchifies).
    pipe = BUILDERS[family]()
    pipe.vae_scale_factor = 8
    pipe.image_processor.register_to_config(vae_scale_factor=16 if family == "flux" else 8)
    with pytest.raises(ValueError, match=rf"resolution is 24, but {PIPELINE_CLASSES[family]} .* multiple of 16"):
        RichPreferenceDataBuilder(pipe, critic, no_editor, args=config(tmp_path, resolution=24))
    RichPreferenceDataBuilder(pipe, critic, no_editor, args=config(tmp_path, resolution=32))


def test_max_sequence_length_reaches_the_flux_text_encoder_and_is_refused_without_t5(tmp_path, monkeypatch):
    pipe = tiny_flux_pipeline()
    seen = []
    encode_prompt = pipe.encode_prompt

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_sequence_length"))
        return encode_prompt(*args, **kwargs)

    monkeypatch.setattr(pipe, "encode_prompt", spy)
    builder = RichPreferenceDataBuilder(pipe, critic, no_editor, args=config(tmp_path, max_sequence_length=8))
    builder.generator(["a red square"], [0])
    assert seen == [8]
    assert builder.args.fingerprint()["max_sequence_length"] == 8
    # Unset, it is not recorded, so outputs written before the field existed still resume.
    assert "max_sequence_length" not in config(tmp_path).fingerprint()

    from trl_rpo.testing import tiny_sd_pipeline

    with pytest.raises(ValueError, match="StableDiffusionPipeline takes no max_sequence_length"):
        RichPreferenceDataBuilder(tiny_sd_pipeline(), critic, no_editor, args=config(tmp_path, max_sequence_length=8))
