"""Edit masks and the img2img refiner (the builder's on-manifold stage)."""

import numpy as np
import pytest
from PIL import Image

from trl_rpo.data import EditorRouter, Img2ImgRefiner, InpaintEditor, difference_mask, dilate_mask, union_masks
from trl_rpo.data.editors import edit_masks
from trl_rpo.testing import tiny_sd_pipeline


def square(color, box=None, size=32):
    image = Image.new("RGB", (size, size), "white")
    if box is not None:
        image.paste(color, box)
    return image


def test_difference_mask_marks_exactly_the_changed_pixels():
    mask = difference_mask(square("red"), square("red", (4, 4, 8, 8)))
    assert mask.mode == "L"
    on = np.asarray(mask) > 0
    assert on.sum() == 16 and on[4:8, 4:8].all()


def test_difference_mask_ignores_changes_within_the_threshold():
    a = square("white")
    b = Image.new("RGB", (32, 32), (250, 250, 250))
    assert np.asarray(difference_mask(a, b, threshold=10)).max() == 0
    assert np.asarray(difference_mask(a, b)).min() == 255


def test_dilation_grows_the_mask_by_the_given_pixels():
    mask = difference_mask(square("red"), square("red", (10, 10, 12, 12)))
    assert (np.asarray(dilate_mask(mask, 2)) > 0).sum() == 6 * 6
    assert dilate_mask(mask, 0) is mask or np.array_equal(np.asarray(dilate_mask(mask, 0)), np.asarray(mask))


def test_union_of_masks_is_unknown_when_one_edit_has_no_region():
    a = difference_mask(square("red"), square("red", (0, 0, 2, 2)))
    b = difference_mask(square("red"), square("red", (30, 30, 32, 32)))
    assert (np.asarray(union_masks([a, b])) > 0).sum() == 8
    assert union_masks([a, None]) is None and union_masks([]) is None


def test_edit_masks_reads_an_editors_last_masks_or_reports_none():
    class Reports:
        last_masks = [Image.new("L", (4, 4), 255), None]

    assert edit_masks(Reports(), 2)[0].size == (4, 4) and edit_masks(Reports(), 2)[1] is None
    assert edit_masks(object(), 3) == [None, None, None]
    assert edit_masks(Reports(), 5) == [None] * 5  # stale state of another call is not trusted


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


def test_inpaint_editor_reports_its_pasted_back_region(pipe):
    from diffusers import StableDiffusionInpaintPipeline

    editor = InpaintEditor(StableDiffusionInpaintPipeline(**pipe.components), num_inference_steps=2, resolution=32)
    image = square("red", (0, 0, 32, 32))
    out = editor([image], [[{"instruction": "make it blue", "kind": "recolor", "region": [0, 0, 0.5, 0.5]}]],
                 ["a red square"])  # fmt: skip
    mask = np.asarray(editor.last_masks[0]) > 0
    assert mask[:10, :10].all() and not mask[24:, 24:].any()
    changed = np.asarray(difference_mask(image, out[0])) > 0
    assert not (changed & ~mask).any()  # nothing outside the reported region changed


def test_a_router_reports_the_union_of_its_editors_masks():
    class Left:
        def __call__(self, images, instructions, prompts):
            self.last_masks = [Image.new("L", im.size, 255) for im in images]
            return list(images)

    router = EditorRouter({"recolor": Left()})
    router([square("red")], [[{"instruction": "x", "kind": "recolor"}]], ["p"])
    assert np.asarray(router.last_masks[0]).min() == 255


def test_refiner_changes_only_pixels_inside_the_dilated_mask(pipe):
    refiner = Img2ImgRefiner(pipe, strength=0.5, num_inference_steps=4, guidance_scale=1.0, mask_dilation=2 / 32)
    image = square("red", (8, 8, 16, 16))
    mask = difference_mask(square("white"), image)
    refined = refiner([image], ["a red square"], [mask])[0]
    changed = np.asarray(difference_mask(image, refined)) > 0
    allowed = np.asarray(dilate_mask(mask, 2)) > 0
    assert changed.any() and not (changed & ~allowed).any()


def test_refiner_without_a_mask_refines_the_whole_image_and_is_seeded(pipe):
    refiner = Img2ImgRefiner(pipe, strength=0.5, num_inference_steps=4, guidance_scale=1.0)
    image = square("red", (8, 8, 16, 16))
    first = refiner([image], ["a red square"])[0]
    again = refiner([image, image], ["a red square", "a red square"], [None, None])
    changed = np.asarray(difference_mask(image, first)) > 0
    assert changed.mean() > 0.5
    # Same seed per image: the same result alone or in a batch (up to batched-matmul rounding).
    np.testing.assert_allclose(np.asarray(first, dtype=float), np.asarray(again[1], dtype=float), atol=2)


def test_refiner_refuses_mismatched_inputs(pipe):
    refiner = Img2ImgRefiner(pipe, strength=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="1 images for 2 prompts"):
        refiner([square("red")], ["a", "b"])
    with pytest.raises(ValueError, match="mask 0 has size"):
        refiner([square("red")], ["a"], [Image.new("L", (8, 8))])


def test_a_strength_too_low_for_the_step_count_is_refused_before_any_image(pipe):
    with pytest.raises(ValueError, match=r"strength 0.2 x num_inference_steps 4 runs no denoising step"):
        Img2ImgRefiner(pipe, strength=0.2, num_inference_steps=4)
