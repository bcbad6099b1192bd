"""Diffusion editors and the editor router, on tiny offline pipelines (`trl_rpo.testing`)."""

import numpy as np
import pytest
from PIL import Image

from trl_rpo.data.editors import (
    ControlNetEditor,
    EditorRouter,
    Img2ImgEditor,
    InpaintEditor,
    InstructPix2PixEditor,
    canny_edges,
    default_inpaint_prompt,
    region_mask,
    rewrite_prompt,
)
from trl_rpo.data.schema import EditInstruction
from trl_rpo.testing import (
    tiny_controlnet_pipeline,
    tiny_img2img_pipeline,
    tiny_inpaint_pipeline,
    tiny_instruct_pix2pix_pipeline,
    tiny_sd_pipeline,
    tiny_sdxl_inpaint_pipeline,
    tiny_sdxl_instruct_pix2pix_pipeline,
)

FAST = {"num_inference_steps": 2}
BOX = (0.25, 0.25, 0.75, 0.75)


def _image(seed: int, size: tuple[int, int] = (40, 24)) -> Image.Image:
    """A noisy image whose size is not the models' 32x32, so resizing back is exercised."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


# Pipelines are built once per module: construction dominates the run time of these tests.
@pytest.fixture(scope="module")
def ip2p():
    return InstructPix2PixEditor(tiny_instruct_pix2pix_pipeline(), **FAST)


@pytest.fixture(scope="module")
def inpaint():
    return InpaintEditor(tiny_inpaint_pipeline(), mask_dilation=0.0, **FAST)


@pytest.fixture(scope="module")
def controlnet():
    return ControlNetEditor(tiny_controlnet_pipeline(), **FAST)


@pytest.fixture(scope="module")
def img2img():
    return Img2ImgEditor(tiny_img2img_pipeline(), **FAST)


EDITORS = ["ip2p", "inpaint", "controlnet", "img2img"]
IMAGES = [_image(0), _image(1, (32, 32))]
INSTRUCTIONS = [
    [EditInstruction("make the sky red", kind="recolor", target="sky", region=BOX, params={"color": "red"})],
    [{"instruction": "add a cat", "region": [0.0, 0.5, 0.5, 1.0]}],
]
PROMPTS = ["a landscape", "a room"]


@pytest.mark.parametrize("fixture", EDITORS)
def test_editor_returns_one_image_per_input_at_the_original_size(fixture, request):
    editor = request.getfixturevalue(fixture)
    out = editor(IMAGES, INSTRUCTIONS, PROMPTS)
    assert [image.size for image in out] == [image.size for image in IMAGES]


@pytest.mark.parametrize("fixture", EDITORS)
def test_editor_is_deterministic_for_a_seed(fixture, request):
    editor = request.getfixturevalue(fixture)
    first, second = editor(IMAGES, INSTRUCTIONS, PROMPTS), editor(IMAGES, INSTRUCTIONS, PROMPTS)
    assert all(np.array_equal(_array(a), _array(b)) for a, b in zip(first, second))


@pytest.mark.parametrize("fixture", EDITORS)
def test_editor_changes_the_image(fixture, request):
    editor = request.getfixturevalue(fixture)
    out = editor(IMAGES, INSTRUCTIONS, PROMPTS)
    assert all(not np.array_equal(_array(a), _array(b)) for a, b in zip(out, IMAGES))


def test_an_image_edit_does_not_depend_on_its_batch(ip2p):
    alone = ip2p(IMAGES[1:], INSTRUCTIONS[1:], PROMPTS[1:])[0]
    batched = ip2p(IMAGES, INSTRUCTIONS, PROMPTS)[1]
    assert np.abs(_array(alone) - _array(batched)).max() <= 1


def test_an_image_without_instructions_is_returned_unchanged(ip2p):
    out = ip2p([IMAGES[0]], [[]], ["p"])
    assert np.array_equal(_array(out[0]), _array(IMAGES[0]))


def test_mismatched_instruction_lists_are_refused(ip2p):
    with pytest.raises(ValueError, match="instruction lists for 2 images"):
        ip2p(IMAGES, INSTRUCTIONS[:1], PROMPTS)


def test_instruct_pix2pix_joins_instructions_into_one_prompt(ip2p):
    seen = []
    pipeline_call = ip2p.pipeline.__class__.__call__

    def spy(self, **kwargs):
        seen.append(kwargs["prompt"])
        return pipeline_call(self, **kwargs)

    ip2p.pipeline.__class__.__call__ = spy
    try:
        ip2p([IMAGES[0]], [["make it red", "add a hat"]], ["p"])
    finally:
        ip2p.pipeline.__class__.__call__ = pipeline_call
    assert seen == [["make it red; add a hat"]]


def test_instruct_pix2pix_refuses_a_pipeline_of_another_kind():
    with pytest.raises(TypeError, match="StableDiffusionInstructPix2PixPipeline"):
        InstructPix2PixEditor(tiny_sd_pipeline())


def test_instruct_pix2pix_edits_with_an_sdxl_pipeline():
    editor = InstructPix2PixEditor(tiny_sdxl_instruct_pix2pix_pipeline(), **FAST)
    out = editor(IMAGES, INSTRUCTIONS, PROMPTS)
    assert [image.size for image in out] == [image.size for image in IMAGES]
    assert not np.array_equal(_array(out[0]), _array(IMAGES[0]))


def test_inpaint_edits_with_an_sdxl_pipeline():
    editor = InpaintEditor(tiny_sdxl_inpaint_pipeline(), **FAST)
    out = editor(IMAGES, INSTRUCTIONS, PROMPTS)
    assert [image.size for image in out] == [image.size for image in IMAGES]
    assert not np.array_equal(_array(out[0]), _array(IMAGES[0]))


def test_inpaint_changes_pixels_only_inside_the_region(inpaint):
    image = _image(3, (32, 32))
    out = inpaint([image], [[EditInstruction("paint a red square", region=BOX)]], ["p"])[0]
    changed = np.any(_array(out) != _array(image), axis=-1)
    inside = np.asarray(region_mask(image.size, [BOX])) > 0
    assert not changed[~inside].any()
    assert changed[inside].mean() > 0.5


def test_inpaint_dilates_the_mask_by_a_fraction_of_the_image():
    mask = np.asarray(region_mask((100, 100), [(0.4, 0.4, 0.6, 0.6)], dilation=0.1)) > 0
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (30, 69, 30, 69)


def test_inpaint_fails_an_image_whose_instruction_has_no_region(inpaint):
    out = inpaint(IMAGES, [["make it red"], INSTRUCTIONS[1]], PROMPTS)
    assert out[0] is None and out[1] is not None


def test_inpaint_can_repaint_the_whole_image_when_a_region_is_missing():
    editor = InpaintEditor(tiny_inpaint_pipeline(), missing_region="full", **FAST)
    out = editor([IMAGES[0]], [["make it red"]], ["p"])[0]
    assert np.any(_array(out) != _array(IMAGES[0]), axis=-1).mean() > 0.5


def test_inpaint_prompt_is_a_caption_built_from_target_and_color():
    instruction = EditInstruction("recolor the circle to red", target="circle", params={"color": "red"})
    assert default_inpaint_prompt(instruction, "shapes") == "red circle"
    assert default_inpaint_prompt(EditInstruction("add a dog"), "a park") == "add a dog"


def test_regenerating_editors_append_the_instructions_to_the_prompt():
    items = [EditInstruction("make it red"), EditInstruction("add a hat")]
    assert rewrite_prompt("a cat", items) == "a cat, make it red, add a hat"


def test_canny_edges_trace_the_border_of_a_square():
    array = np.zeros((32, 32, 3), dtype=np.uint8)
    array[8:24, 8:24] = 255
    edges = np.asarray(canny_edges(Image.fromarray(array)))[..., 0] > 0
    assert edges[16, 7:9].any() and edges[7:9, 16].any()  # left and top borders
    assert not edges[12:20, 12:20].any() and not edges[:4].any()  # flat areas


def test_controlnet_accepts_a_callable_condition():
    calls = []

    def condition(image):
        calls.append(image.size)
        return Image.new("RGB", image.size)

    editor = ControlNetEditor(tiny_controlnet_pipeline(), condition=condition, **FAST)
    editor([IMAGES[0]], [["make it red"]], ["p"])
    assert calls == [IMAGES[0].size] and editor.name == "controlnet"


def test_img2img_converts_a_text_to_image_pipeline():
    editor = Img2ImgEditor(tiny_sd_pipeline(), **FAST)
    assert type(editor.pipeline).__name__ == "StableDiffusionImg2ImgPipeline"


@pytest.mark.parametrize(
    ("editor_class", "builder"),
    [
        (InstructPix2PixEditor, tiny_instruct_pix2pix_pipeline),
        (InpaintEditor, tiny_inpaint_pipeline),
        (ControlNetEditor, tiny_controlnet_pipeline),
        (Img2ImgEditor, tiny_img2img_pipeline),
    ],
)
def test_editor_loads_its_pipeline_from_a_local_folder(editor_class, builder, tmp_path):
    builder().save_pretrained(tmp_path)
    editor = editor_class(str(tmp_path), **FAST)
    out = editor(IMAGES[:1], INSTRUCTIONS[:1], PROMPTS[:1])
    assert out[0].size == IMAGES[0].size


def test_controlnet_loads_from_a_base_and_a_controlnet_folder(tmp_path):
    pipeline = tiny_controlnet_pipeline()
    tiny_sd_pipeline().save_pretrained(tmp_path / "base")
    pipeline.controlnet.save_pretrained(tmp_path / "controlnet")
    editor = ControlNetEditor((str(tmp_path / "base"), str(tmp_path / "controlnet")), **FAST)
    assert type(editor.pipeline).__name__ == "StableDiffusionControlNetImg2ImgPipeline"


# -- router ------------------------------------------------------------------------------------------------------


class _Recorder:
    """An editor that appends its name's value to a pixel and records what it was given; fails on "fail"."""

    def __init__(self, name: str, value: int):
        self.name, self.value, self.calls = name, value, []

    def __call__(self, images, instructions, prompts):
        self.calls.append([[i.instruction for i in items] for items in instructions])
        out = []
        for image, items in zip(images, instructions):
            if any(i.instruction == "fail" for i in items):
                out.append(None)
                continue
            array = np.asarray(image).copy()
            array[0, 0, 0] = array[0, 0, 0] * 10 + self.value
            out.append(Image.fromarray(array))
        return out


def _blank() -> Image.Image:
    return Image.new("RGB", (4, 4))


def _first_pixel(image: Image.Image) -> int:
    return int(np.asarray(image)[0, 0, 0])


def test_router_dispatches_each_instruction_by_kind():
    a, b = _Recorder("a", 1), _Recorder("b", 2)
    router = EditorRouter({"recolor": a, "style": b})
    out = router(
        [_blank(), _blank()], [[{"instruction": "x", "kind": "recolor"}], [{"instruction": "y", "kind": "style"}]]
    )
    assert [_first_pixel(image) for image in out] == [1, 2]
    assert a.calls == [[["x"]]] and b.calls == [[["y"]]]


def test_router_chains_editors_in_instruction_order():
    a, b = _Recorder("a", 1), _Recorder("b", 2)
    router = EditorRouter({"recolor": a, "style": b})
    items = [
        {"instruction": "s", "kind": "style"},
        {"instruction": "r1", "kind": "recolor"},
        {"instruction": "r2", "kind": "recolor"},
    ]
    out = router([_blank()], [items])
    assert _first_pixel(out[0]) == 21  # b then a: (0 * 10 + 2) * 10 + 1
    assert a.calls == [[["r1", "r2"]]]  # consecutive instructions of one editor go in one call
    assert router.last_methods == ["b+a"]


def test_router_fails_an_image_whose_kind_has_no_route():
    router = EditorRouter({"recolor": _Recorder("a", 1)})
    out = router(
        [_blank(), _blank()], [[{"instruction": "x", "kind": "move"}], [{"instruction": "x", "kind": "recolor"}]]
    )
    assert out[0] is None and out[1] is not None
    assert router.last_methods == ["", "a"]


def test_router_sends_unrouted_kinds_to_the_default():
    default = _Recorder("d", 3)
    router = EditorRouter({"recolor": _Recorder("a", 1)}, default=default)
    out = router([_blank()], [["no kind at all"]])
    assert _first_pixel(out[0]) == 3 and router.last_methods == ["d"]


def test_router_fails_an_image_when_an_editor_fails():
    a, b = _Recorder("a", 1), _Recorder("b", 2)
    router = EditorRouter({"recolor": a, "style": b})
    out = router([_blank()], [[{"instruction": "fail", "kind": "recolor"}, {"instruction": "y", "kind": "style"}]])
    assert out == [None] and b.calls == []


def test_router_name_lists_its_editors():
    assert EditorRouter({"x": _Recorder("b", 1)}, default=_Recorder("a", 2)).name == "router(a+b)"


def test_router_runs_diffusion_editors_in_sequence(ip2p, inpaint):
    router = EditorRouter({"recolor": inpaint, "background": ip2p})
    items = [
        {"instruction": "make the circle red", "kind": "recolor", "region": list(BOX)},
        {"instruction": "make the background blue", "kind": "background"},
    ]
    out = router([IMAGES[0]], [items], ["p"])
    assert out[0].size == IMAGES[0].size and router.last_methods == ["inpaint+instruct_pix2pix"]
