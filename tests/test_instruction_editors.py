"""Instruction editors on flow pipelines (FLUX.1 Kontext, Qwen-Image-Edit) and flow img2img refinement."""

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from trl_rpo.data import EditorRouter, FluxKontextEditor, Img2ImgRefiner, QwenImageEditEditor
from trl_rpo.data.instruction_editors import transformer_native_side, transformer_side_multiple
from trl_rpo.testing import (
    tiny_flux_kontext_pipeline,
    tiny_flux_pipeline,
    tiny_qwen_image_edit_pipeline,
    tiny_sd3_pipeline,
    tiny_sd_pipeline,
)

torch.set_num_threads(1)

TINY = {"_auto_resize": False, "max_sequence_length": 16, "max_area": 32 * 32}


def red(size=(32, 32)):
    return Image.new("RGB", size, (200, 20, 20))


def differ(a, b):
    return np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).max() > 0


def test_kontext_editor_edits_each_image_reproducibly_and_routes_by_kind():
    editor = FluxKontextEditor(
        tiny_flux_kontext_pipeline(), num_inference_steps=2, resolution=32, pipeline_kwargs=TINY
    )
    images = [red(), red((48, 32))]
    out = editor(images, [["make it blue"], ["add a cat"]], ["a red square", "a red square"])
    assert [im.size for im in out] == [(32, 32), (48, 32)]  # back at the input sizes
    assert np.abs(np.asarray(out[0], dtype=float) - np.asarray(images[0], dtype=float)).max() > 0
    again = editor([images[0]], [["make it blue"]], ["a red square"])[0]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out[0]))  # seeded per image, not per batch
    router = EditorRouter({"recolor": editor})
    routed = router([images[0]], [[{"kind": "recolor", "instruction": "make it blue"}]], ["a red square"])
    assert routed[0] is not None and router.last_methods == ["flux_kontext"]
    assert "FluxKontextPipeline" in repr(editor)


def test_tiny_qwen_image_edit_pipeline_is_the_real_pipeline_built_in_memory(tmp_path):
    pipe = tiny_qwen_image_edit_pipeline()
    assert type(pipe).__name__ == "QwenImageEditPipeline"
    assert {name: type(part).__name__ for name, part in pipe.components.items()} == {
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "vae": "AutoencoderKLQwenImage",
        "text_encoder": "Qwen2_5_VLForConditionalGeneration",
        "tokenizer": "Qwen2Tokenizer",
        "processor": "Qwen2VLProcessor",
        "transformer": "QwenImageTransformer2DModel",
    }
    assert pipe.processor.tokenizer is pipe.tokenizer and pipe.processor.video_processor is None
    # The encoder states of the template's system prefix are dropped: that prefix is the pipeline's drop index.
    system = pipe.prompt_template_encode.split("<|vision_start|>")[0]
    assert len(pipe.tokenizer(system)["input_ids"]) == pipe.prompt_template_encode_start_idx == 64
    again = tiny_qwen_image_edit_pipeline()
    for name in ("text_encoder", "transformer", "vae"):
        for a, b in zip(getattr(pipe, name).state_dict().values(), getattr(again, name).state_dict().values()):
            assert torch.equal(a, b)  # seeded: same weights
    with pytest.raises(AttributeError):  # documented: the processor has no video processor to save
        pipe.save_pretrained(tmp_path / "qwen")


def test_qwen_image_edit_editor_edits_each_image_reproducibly_and_routes_by_kind():
    editor = QwenImageEditEditor(tiny_qwen_image_edit_pipeline(), num_inference_steps=2, resolution=32)
    images = [red(), red(), red((64, 32))]
    out = editor(images, [["make it blue"], ["add a cat"], ["make it blue"]], ["a red square"] * 3)
    assert all(isinstance(im, Image.Image) for im in out)
    assert [im.size for im in out] == [(32, 32), (32, 32), (64, 32)]  # back at the input sizes
    assert differ(out[0], images[0]) and differ(out[0], out[1])  # edited, and the instruction matters
    router = EditorRouter({"recolor": editor})
    routed = router([images[0]], [[{"kind": "recolor", "instruction": "make it blue"}]], ["a red square"])
    assert router.last_methods == ["qwen_image_edit"]
    np.testing.assert_array_equal(np.asarray(routed[0]), np.asarray(out[0]))  # seeded per image: same pixels
    assert "QwenImageEditPipeline" in repr(editor)


def test_qwen_image_edit_editor_runs_true_cfg_with_a_negative_prompt_per_image(monkeypatch):
    from diffusers import QwenImageEditPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

    pipe = tiny_qwen_image_edit_pipeline()
    calls, passes, warnings = [], [], []
    real_call = QwenImageEditPipeline.__call__

    @functools.wraps(real_call)
    def recording_call(self, *args, **kwargs):
        calls.append(kwargs)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(QwenImageEditPipeline, "__call__", recording_call)
    monkeypatch.setattr(pipeline_qwenimage_edit.logger, "warning", lambda message, *a, **k: warnings.append(message))
    pipe.transformer.register_forward_hook(lambda *args: passes.append(1))
    images, instructions = [red(), red()], [["make it blue"], ["add a cat"]]

    def edit(**kwargs):
        editor = QwenImageEditEditor(pipe, num_inference_steps=2, resolution=32, batch_size=2, **kwargs)
        return editor(images, instructions)

    guided = edit()  # guidance_scale=4.0: one batch of two images
    assert calls[-1]["true_cfg_scale"] == 4.0 and calls[-1]["negative_prompt"] == [" ", " "]
    assert calls[-1]["guidance_scale"] is None  # not guidance-distilled: the pipeline's default, no warning
    assert len(passes) == 2 * 2  # conditional and unconditional transformer pass at each of the 2 steps
    plain = edit(guidance_scale=1.0)
    assert calls[-1]["true_cfg_scale"] == 1.0 and "negative_prompt" not in calls[-1]
    assert len(passes) == 2 * 2 + 2  # no guidance: one pass per step
    assert differ(guided[0], plain[0]) and differ(guided[1], plain[1])
    assert edit(pipeline_kwargs={"true_cfg_scale": 1.0})[0] == plain[0]  # pipeline_kwargs' scale decides
    assert "negative_prompt" not in calls[-1]
    assert warnings == []  # nothing the pipeline ignores (guidance_scale, a negative prompt without CFG)


def test_instruction_editors_refuse_other_pipelines():
    with pytest.raises(TypeError, match="FluxKontextPipeline"):
        FluxKontextEditor(tiny_sd_pipeline())
    with pytest.raises(TypeError, match="QwenImageEditPipeline"):
        QwenImageEditEditor(tiny_flux_pipeline())


def test_transformer_sizes_follow_the_vae_and_the_patch():
    flux, sd3 = tiny_flux_pipeline(), tiny_sd3_pipeline()
    assert transformer_side_multiple(flux) == 8  # VAE factor 2 x 2x2 packing, and of 8
    assert transformer_native_side(sd3) == 16 * 2 and transformer_native_side(flux, 64) == 64
    assert transformer_native_side(flux) == 128 * 2  # FluxPipeline.default_sample_size


@pytest.mark.parametrize("build", [tiny_sd3_pipeline, tiny_flux_pipeline], ids=["sd3", "flux"])
def test_refiner_runs_flow_img2img_from_a_text_to_image_pipeline(build):
    refiner = Img2ImgRefiner(
        build(), strength=0.5, num_inference_steps=2, resolution=32, pipeline_kwargs={"max_sequence_length": 16}
    )
    assert type(refiner.pipeline).__name__ in ("StableDiffusion3Img2ImgPipeline", "FluxImg2ImgPipeline")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 8, 8))
    refiner.mask_dilation = 0.0
    out = refiner([red()], ["a red square"], [mask])[0]
    changed = np.abs(np.asarray(out, dtype=float) - np.asarray(red(), dtype=float)).max(axis=2) > 0
    assert changed[:8, :8].any() and not changed[8:, :].any() and not changed[:, 8:].any()
