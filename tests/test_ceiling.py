"""The supervised ceiling (`trl_rpo.shapes.ceiling`): fine-tuning the shapes base on perfect renders."""

import json

import numpy as np
import pytest
import torch

from trl_rpo.shapes import prompts
from trl_rpo.shapes.ceiling import CeilingVariant, _renders, fine_tune_on_renders, run_supervised_ceiling
from trl_rpo.shapes.demo import DemoConfig


@pytest.mark.parametrize("split", ["dev", "final", "held_out"])
def test_the_ceiling_refuses_to_fit_a_split_recipes_are_chosen_or_reported_on(split, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        run_supervised_ceiling(DemoConfig.quick(), tmp_path / "c", split=split)
    assert not (tmp_path / "c").exists()


def test_the_ceiling_refuses_a_first_guidance_other_than_the_configs(tmp_path):
    with pytest.raises(ValueError, match="guidance_scales starting with"):
        run_supervised_ceiling(DemoConfig.quick(guidance_scale=5.0), tmp_path / "c", guidance_scales=(2.0, 5.0))


@pytest.mark.parametrize("guidance", [1.0, 2.0, 5.0])
def test_the_ceiling_refuses_more_scored_prompts_than_the_split_holds(tmp_path, guidance):
    # past the guidance check: by default the ceiling starts at the config's guidance, whatever it is
    with pytest.raises(ValueError, match="dev2_a holds 54 scenes; cannot score 60"):
        run_supervised_ceiling(DemoConfig.quick(guidance_scale=guidance), tmp_path / "c", split="dev2_a",
                               scored_prompts=60)  # fmt: skip
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("seeds", [(), (1, 1)])
def test_the_ceiling_refuses_empty_or_repeated_training_seeds(seeds, tmp_path):
    with pytest.raises(ValueError, match="training_seeds must be distinct"):
        run_supervised_ceiling(DemoConfig.quick(), tmp_path / "c", scored_prompts=4, training_seeds=seeds)


@pytest.mark.parametrize("field", [{"params": "conv"}, {"steps": -1}, {"learning_rate": 0.0}, {"batch_size": 0},
                                   {"empty_prompt_probability": 1.0}])  # fmt: skip
def test_a_ceiling_variant_rejects_what_it_cannot_train(field):
    with pytest.raises(ValueError):
        CeilingVariant(**{"steps": 1, "learning_rate": 1e-4, **field})


def test_the_ceiling_fits_the_renders_pretraining_fits():
    from trl_rpo.shapes.pretrain import PretrainConfig, _render_dataset

    pixels, prompts = _renders("train", 32, 2)
    expected_pixels, expected_prompts = _render_dataset(PretrainConfig(seed=0, image_size=32, images_per_scene=2))
    assert prompts == expected_prompts
    assert torch.equal(pixels, expected_pixels)


def _fixed_loss(pipeline, pixels, prompts) -> float:
    """The denoising loss of `pipeline` on (`pixels`, `prompts`) at fixed timesteps and noise."""
    import torch.nn.functional as F

    from trl_rpo.shapes.pretrain import denoising_target

    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        x0 = pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor
        ids = pipeline.tokenizer(list(prompts), padding="max_length", truncation=True, return_tensors="pt",
                                 max_length=pipeline.tokenizer.model_max_length).input_ids  # fmt: skip
        hidden = pipeline.text_encoder(ids)[0]
        losses = []
        for _ in range(8):
            noise = torch.randn(x0.shape, generator=generator)
            t = torch.randint(pipeline.scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
            target, _ = denoising_target(pipeline.scheduler, x0, noise, t, None)
            prediction = pipeline.unet(pipeline.scheduler.add_noise(x0, noise, t), t, hidden).sample
            losses.append(F.mse_loss(prediction, target).item())
    return float(np.mean(losses))


@pytest.mark.parametrize("params", ["lora", "full"])
def test_fine_tuning_on_renders_lowers_their_denoising_loss(params):
    from trl_rpo.shapes.model import load_pipeline

    torch.manual_seed(0)
    pixels, prompts = _renders("dev2", 32, 1)
    pixels, prompts = pixels[:8], prompts[:8]
    pipeline = load_pipeline()
    before = _fixed_loss(pipeline, pixels, prompts)
    losses = fine_tune_on_renders(pipeline, pixels, prompts, CeilingVariant(40, 3e-3, params, batch_size=8), 8)
    assert len(losses) == 40
    assert _fixed_loss(pipeline, pixels, prompts) < before - 0.01  # the same noise and timesteps: a real drop
    assert not any(p.requires_grad for p in pipeline.unet.parameters())  # left ready for sampling


@pytest.mark.slow
def test_the_ceiling_pairs_each_variant_with_the_base_sampled_at_the_same_guidance(tmp_path):
    config = DemoConfig.quick(guidance_scale=5.0, eval_seeds=(0,), num_inference_steps=4, refine_strength=0.0)
    variants = {"untrained": CeilingVariant(0, 1e-4), "full": CeilingVariant(20, 3e-3, "full", batch_size=8)}
    results = run_supervised_ceiling(config, tmp_path / "c", variants=variants, scored_prompts=4,
                                     guidance_scales=(config.guidance_scale, 1.0), images_per_scene=1,
                                     log=lambda _: None)  # fmt: skip
    untrained, full = results["rows"]
    # no step: the same model, so the same images as the base at either guidance
    assert all(v["gain"] == 0.0 and v["gain_ci"] == [0.0, 0.0] for v in untrained["by_guidance"].values())
    assert untrained["loss_first"] is None
    # each variant is paired with the base sampled at its own guidance
    g = f"{config.guidance_scale:g}"
    scores = results["scores"]
    assert set(scores) == {"base", "base@1", "untrained@1", f"untrained@{g}", "full@1", f"full@{g}"}
    for guidance, base in ((g, "base"), ("1", "base@1")):
        expected = np.mean(scores[f"full@{guidance}"]) - np.mean(scores[base])
        assert full["by_guidance"][guidance]["gain"] == pytest.approx(expected, abs=1e-4)
        assert full["by_guidance"][guidance]["base"] == pytest.approx(np.mean(scores[base]), abs=1e-4)
    assert results["training_images"] == 120 and results["scored_prompts"] == prompts(4, seed=0, split="dev2")
    assert json.loads((tmp_path / "c" / "ceiling.json").read_text())["rows"][1]["variant"] == "full"
    assert "| full |" in (tmp_path / "c" / "ceiling.md").read_text()


@pytest.mark.parametrize("probability", [0.0, 0.5])
def test_fine_tuning_replaces_prompts_by_the_empty_one_at_its_probability(probability):
    from trl_rpo.shapes.model import load_pipeline

    pipeline = load_pipeline()
    pixels, prompts = _renders("dev2", 32, 1)
    with torch.no_grad():
        ids = pipeline.tokenizer([""], padding="max_length", truncation=True, return_tensors="pt",
                                 max_length=pipeline.tokenizer.model_max_length).input_ids  # fmt: skip
        empty = pipeline.text_encoder(ids)[0][0]
    seen = []
    forward = pipeline.unet.forward

    def recording(sample, timestep, encoder_hidden_states, *args, **kwargs):
        seen.extend(torch.equal(h, empty) for h in encoder_hidden_states.detach())
        return forward(sample, timestep, encoder_hidden_states, *args, **kwargs)

    pipeline.unet.forward = recording
    fine_tune_on_renders(pipeline, pixels[:16], prompts[:16], CeilingVariant(20, 1e-5, "full", batch_size=8,
                                                                             empty_prompt_probability=probability), 8)
    assert len(seen) == 160
    assert (sum(seen) == 0) if probability == 0 else (50 <= sum(seen) <= 110)  # Binomial(160, 0.5): mean 80, sd 6.3


@pytest.mark.slow
def test_the_transfer_ceiling_scores_the_other_halfs_unseen_pairs_and_pools_its_training_seeds(tmp_path):
    from trl_rpo.shapes.world import HELD_OUT_HALVES, all_scenes, parse_prompt, prompt_text
    from trl_rpo.statistics import hierarchical_bootstrap

    config = DemoConfig.quick(eval_seeds=(0,), num_inference_steps=2, refine_strength=0.0)
    variants = {"full": CeilingVariant(3, 3e-3, "full", batch_size=4)}
    results = run_supervised_ceiling(config, tmp_path / "c", split="dev2_a", variants=variants, scored_prompts=3,
                                     guidance_scales=(config.guidance_scale,), images_per_scene=1,
                                     training_seeds=(0, 1), log=lambda _: None)  # fmt: skip
    # fitted on half a's dev2 renders; the unseen prompts are every dev and dev2 scene of half b, nothing else
    assert results["training_images"] == 54
    assert results["unseen_prompts"] == [prompt_text(s) for part in ("dev_b", "dev2_b") for s in all_scenes(part)]
    assert {(s.shape, s.color) for s in map(parse_prompt, results["unseen_prompts"])} == HELD_OUT_HALVES["b"]
    # one fine-tuning per training seed, each scored on both sets against the base sampled alike
    g = f"{config.guidance_scale:g}"
    rows = results["rows"]
    assert [r["seed"] for r in rows] == [0, 1]
    runs = [f"full (seed {s})@{g}" for s in (0, 1)]
    unseen = results["unseen_scores"]
    assert unseen[runs[0]] != unseen[runs[1]]  # the seeds trained different models
    for row, run in zip(rows, runs):
        expected = np.mean(unseen[run]) - np.mean(unseen["base"])
        assert row["by_guidance"][g]["unseen"]["gain"] == pytest.approx(expected, abs=1e-4)
    # the pooled gain on the unseen pairs is the two-level bootstrap over both seeds' scores
    pooled = {p["prompts"]: p for p in results["pooled"]}
    assert set(pooled) == {"dev2_a", "unseen"}
    expected = hierarchical_bootstrap([unseen[r] for r in runs], [unseen["base"]] * 2, seed=0)
    assert pooled["unseen"]["gain"] == pytest.approx(expected.gain, abs=1e-4)
    assert pooled["unseen"]["gain_ci"] == [round(v, 4) for v in expected.ci]
    assert "gain on the unseen pairs" in (tmp_path / "c" / "ceiling.md").read_text()
