"""`trl-rpo eval` and the evaluation API under it: a trained model (LoRA, UNet or pipeline folder) vs its base."""

import json

import numpy as np
import pytest
import torch

from trl_rpo.evaluation import compare_with_base, evaluate_pipeline, load_trained_pipeline
from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline

from ._helpers import brightness

PROMPTS = ["a red circle", "two blue squares", "a green triangle"]
FAST = dict(num_inference_steps=2, guidance_scale=1.0)


def save_lora(pipe, folder, scale: float = 0.5):
    """A LoRA on `pipe.unet` with non-zero weights, saved as a trainer's `save_model` saves it."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    unet = pipe.unet
    unet.add_adapter(tiny_lora_config())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # zero at init: the LoRA would change nothing
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    type(pipe).save_lora_weights(
        folder,
        unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
    )


def pixels(pipe, prompt="a red circle"):
    image = pipe([prompt], generator=torch.Generator().manual_seed(0), output_type="pil", **FAST).images[0]
    return np.asarray(image, dtype=np.float32)


def test_a_lora_folder_is_applied_to_a_copy_of_the_base(tmp_path):
    save_lora(tiny_sd_pipeline(seed=0), tmp_path / "lora")
    base = tiny_sd_pipeline(seed=0)
    before = pixels(base)
    trained = load_trained_pipeline(tmp_path / "lora", base)
    assert np.array_equal(pixels(base), before)  # the base itself is untouched
    assert np.abs(pixels(trained) - before).mean() > 0.5


def test_a_unet_folder_and_a_pipeline_folder_load(tmp_path):
    trained = tiny_sd_pipeline(seed=0)  # the base with a changed UNet, as full fine-tuning leaves it
    with torch.no_grad():
        for param in trained.unet.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(1)))
    trained.unet.save_pretrained(tmp_path / "full" / "unet")
    other = tiny_sd_pipeline(seed=1)  # a whole other pipeline
    other.save_pretrained(tmp_path / "pipe")
    base = tiny_sd_pipeline(seed=0)
    before = pixels(base)
    assert np.array_equal(pixels(load_trained_pipeline(tmp_path / "full", base)), pixels(trained))
    assert np.array_equal(pixels(base), before) and not np.array_equal(pixels(trained), before)
    assert np.array_equal(pixels(load_trained_pipeline(tmp_path / "pipe", base)), pixels(other))


def test_a_folder_of_no_known_layout_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights.safetensors"):
        load_trained_pipeline(tmp_path, tiny_sd_pipeline())


class Brighter:
    """The base pipeline with every image brightened: a "trained" model whose gain is known to be positive."""

    def __init__(self, pipe):
        self.pipe = pipe

    def __call__(self, *args, **kwargs):
        from PIL import ImageEnhance

        out = self.pipe(*args, **kwargs)
        out.images = [ImageEnhance.Brightness(im).enhance(1.5) for im in out.images]
        return out


def test_compare_with_base_reports_every_reward_and_a_grid():
    base = tiny_sd_pipeline()

    def darkness(images, prompts, **kwargs):
        return [1 - b for b in brightness(images, prompts)]

    result = compare_with_base(Brighter(base), base, PROMPTS, [brightness, darkness], seeds=[0, 1], n_resamples=500,
                               grid_prompts=2, **FAST)  # fmt: skip
    up, down = result.comparisons["brightness"], result.comparisons["darkness"]
    assert up.gain > 0 and up.win_rate == 1.0 and up.gain_ci[0] > 0
    assert down.gain == pytest.approx(-up.gain) and down.win_rate == 0.0
    assert up.n_prompts == 3 and up.n_images == 6
    assert result.grid.size[0] > 2 * 32 and result.grid.size[1] >= 2 * 32
    report = json.loads(json.dumps(result.to_dict()))
    assert set(report["rewards"]) == {"brightness", "darkness"} and report["seeds"] == [0, 1]
    assert "brightness:" in result.summary() and "better" in result.summary() and "worse" in result.summary()


def test_a_precomputed_base_result_gives_the_same_comparison_as_rendering_the_base_again():
    base = tiny_sd_pipeline()
    rendered = compare_with_base(Brighter(base), base, PROMPTS, brightness, seeds=[0, 1], n_resamples=500,
                                 grid_prompts=2, **FAST)  # fmt: skip
    base_result = evaluate_pipeline(base, PROMPTS, brightness, seeds=[0, 1], return_images=True, **FAST)
    reused = compare_with_base(Brighter(base), base_result, PROMPTS, brightness, seeds=[0, 1], n_resamples=500,
                               grid_prompts=2, **FAST)  # fmt: skip
    assert reused.comparisons["brightness"].to_dict() == rendered.comparisons["brightness"].to_dict()
    assert reused.base_result is base_result and reused.grid.size == rendered.grid.size
    assert reused.trained_result.scores == rendered.trained_result.scores


@pytest.mark.parametrize(
    ("seeds", "reward", "match"),
    [([0], brightness, r"\(1, 3\) \(seeds, prompts\), expected \(2, 3\)"), ([0, 1], "other", "no scores for reward")],
)
def test_a_base_result_from_other_seeds_or_rewards_is_refused(seeds, reward, match):
    base = tiny_sd_pipeline()

    def other(images, prompts, **kwargs):
        return [0.0] * len(images)

    base_result = evaluate_pipeline(base, PROMPTS, brightness, seeds=seeds, **FAST)
    with pytest.raises(ValueError, match=match):
        compare_with_base(base, base_result, PROMPTS, other if reward == "other" else reward, seeds=[0, 1], **FAST)


def test_trl_rpo_eval_writes_a_report_and_a_grid(tmp_path, capsys):
    from trl_rpo.cli import main

    tiny_sd_pipeline(seed=0).save_pretrained(tmp_path / "base")
    save_lora(tiny_sd_pipeline(seed=0), tmp_path / "lora")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    code = main(["eval", "--model", str(tmp_path / "lora"), "--base", str(tmp_path / "base"),
                 "--prompts", str(tmp_path / "prompts.txt"), "--reward_funcs", "tests._helpers:brightness",
                 "jpeg_compressibility", "--seeds", "0", "1", "--num_inference_steps", "2", "--guidance_scale", "1",
                 "--n_resamples", "200", "--output_dir", str(tmp_path / "eval")])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["rewards"]) == {"brightness", "jpeg_compressibility"}
    for stats in report["rewards"].values():
        assert {"gain", "gain_ci", "win_rate", "p_value", "mean_a", "mean_b"} <= set(stats)
        assert stats["n_prompts"] == 3 and stats["n_images"] == 6
    assert report["rewards"]["brightness"]["gain"] != 0  # the LoRA changed the images
    assert (tmp_path / "eval" / "grid.png").is_file()
    assert report["settings"]["per_image_noise"] is True  # independent draws unless asked otherwise
    out = capsys.readouterr().out
    assert "brightness:" in out and "win rate" in out


def test_trl_rpo_eval_names_a_missing_model_folder(tmp_path, capsys):
    from trl_rpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", str(tmp_path / "nope"), "--base", "shapes", "--prompts", "shapes:4"])
    assert exit_info.value.code == 2
    assert f"--model {tmp_path / 'nope'}: no such file or folder" in capsys.readouterr().err
