import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from trl_rpo.data.schema import Critique, EditInstruction
from trl_rpo.rewards import combine_rewards
from trl_rpo.shapes import (
    BACKGROUNDS,
    HELD_OUT_PAIRS,
    PALETTE,
    SHAPES,
    Critic,
    Editor,
    Scene,
    alignment_score,
    all_scenes,
    analyze,
    parse_prompt,
    prompt_text,
    prompts,
    render,
)

# Every shape, color, count, position and background appears among these.
SCENES = [
    Scene("circle", "red", 2, "left", "white"),
    Scene("square", "blue", 1, "center", "black"),
    Scene("triangle", "yellow", 3, "top", "gray"),
    Scene("diamond", "purple", 2, "bottom", "white"),
    Scene("circle", "orange", 3, "right", "black"),
    Scene("triangle", "green", 1, "right", "gray"),
    Scene("diamond", "green", 3, "center", "gray"),
]
SIZES = [64, 32]


def _other(options, value):
    return next(o for o in options if o != value)


def _fix(image, prompt):
    """The critic's critique of an image and the editor's execution of its instructions."""
    critique = Critic()([image], [prompt])[0]
    edited = Editor()([image], [critique.instructions], [prompt])[0]
    return critique, edited


# World and prompts


def test_prompts_are_deterministic_for_a_seed():
    assert prompts(50, seed=3) == prompts(50, seed=3)
    assert prompts(50, seed=3) != prompts(50, seed=4)


def test_prompts_are_distinct_up_to_the_split_size_and_cycle_beyond():
    train = prompts(720, seed=0)
    assert len(set(train)) == 720
    assert len(prompts(1000, seed=0)) == 1000


def test_split_sizes_match_the_scenes_of_each_split():
    from trl_rpo.shapes.world import SPLIT_SIZES, SPLITS

    assert set(SPLIT_SIZES) == set(SPLITS)
    assert {split: len(all_scenes(split)) for split in SPLITS} == SPLIT_SIZES


def test_the_held_out_halves_split_dev_and_dev2_by_pair_with_no_pair_or_color_shared():
    from trl_rpo.shapes.world import HELD_OUT_HALVES, HELD_OUT_PAIRS

    a, b = HELD_OUT_HALVES["a"], HELD_OUT_HALVES["b"]
    assert a | b == HELD_OUT_PAIRS and not a & b
    assert not {color for _, color in a} & {color for _, color in b}
    for part in ("dev", "dev2"):
        halves = {half: all_scenes(f"{part}_{half}") for half in "ab"}
        assert sorted(map(repr, halves["a"] + halves["b"])) == sorted(map(repr, all_scenes(part)))
        for half, scenes in halves.items():
            assert {(s.shape, s.color) for s in scenes} == HELD_OUT_HALVES[half], (part, half)


@pytest.mark.parametrize("split", ["dev2_a", "dev2_b", "train"])
def test_unseen_pair_splits_hold_only_pairs_the_split_does_not(split):
    from trl_rpo.shapes.world import unseen_pair_splits

    fitted = {(s.shape, s.color) for s in all_scenes(split)}
    dev, dev2 = unseen_pair_splits(split)
    unseen = {(s.shape, s.color) for part in (dev, dev2) for s in all_scenes(part)}
    assert unseen and fitted.isdisjoint(unseen)
    assert {(s.shape, s.color) for s in all_scenes(dev)} == {(s.shape, s.color) for s in all_scenes(dev2)}


@pytest.mark.parametrize("split", ["dev2", "dev", "final"])
def test_unseen_pair_splits_refuse_a_split_whose_pairs_dev_holds(split):
    from trl_rpo.shapes.world import unseen_pair_splits

    with pytest.raises(ValueError, match="no dev split holds only pairs unseen"):
        unseen_pair_splits(split)


def test_train_held_out_and_final_splits_are_disjoint_and_cover_the_world():
    train, held_out = set(prompts(720, 0, "train")), set(prompts(180, 0, "held_out"))
    final = set(prompts(180, 0, "final"))
    assert not train & held_out and not train & final and not held_out & final
    assert len(train) + len(held_out) + len(final) == len(all_scenes())


def test_dev_and_dev2_partition_the_held_out_scenes_whatever_the_prompt_seed():
    dev, dev2 = set(prompts(60, 0, "dev")), set(prompts(120, 5, "dev2"))
    assert len(dev) == 60 and len(dev2) == 120 and not dev & dev2
    assert dev | dev2 == set(prompts(180, 0, "held_out"))
    assert set(prompts(60, 3, "dev")) == dev  # another seed reorders, never moves a scene across


def test_the_dev_split_is_unchanged_by_the_final_split():
    # The dev sweeps' tables in docs/shapes.md stay comparable: the same 60 scenes as before "final" existed.
    assert prompts(3, 0, "dev") == ["two purple circles in the center, on a gray background",
                                    "three orange squares on the right, on a black background",
                                    "three orange squares on the left, on a white background"]  # fmt: skip


def test_an_empty_split_is_refused_instead_of_cycled_forever(monkeypatch):
    from trl_rpo.shapes import world

    monkeypatch.setattr(world, "all_scenes", lambda split=None: [])
    with pytest.raises(ValueError, match="holds no scenes"):
        world.prompts(3, split="final")


def test_the_old_test_split_name_says_where_it_went():
    with pytest.raises(ValueError, match="renamed \"dev2\""):
        all_scenes("test")


def test_held_out_prompts_use_only_shape_color_pairs_never_seen_in_train():
    train_pairs = {(s.shape, s.color) for s in map(parse_prompt, prompts(720, 0, "train"))}
    held_pairs = {(s.shape, s.color) for s in map(parse_prompt, prompts(180, 0, "held_out"))}
    assert held_pairs == set(HELD_OUT_PAIRS)
    assert not held_pairs & train_pairs
    # ... while every shape and color on its own is seen in train.
    assert {shape for shape, _ in train_pairs} == set(SHAPES) and {c for _, c in train_pairs} == set(PALETTE)


def test_final_prompts_use_new_pairs_one_per_shape_each_color_at_most_once():
    from trl_rpo.shapes.world import FINAL_PAIRS

    train_pairs = {(s.shape, s.color) for s in map(parse_prompt, prompts(720, 0, "train"))}
    final_pairs = {(s.shape, s.color) for s in map(parse_prompt, prompts(180, 0, "final"))}
    assert final_pairs == set(FINAL_PAIRS) and not final_pairs & (train_pairs | set(HELD_OUT_PAIRS))
    assert sorted(shape for shape, _ in FINAL_PAIRS) == sorted(SHAPES)
    assert len({color for _, color in FINAL_PAIRS}) == len(FINAL_PAIRS)
    # Every color is still seen in train with at least two shapes, so a final prompt's color is familiar.
    assert all(sum(c == color for _, c in train_pairs) >= 2 for color in PALETTE)


def test_prompts_reject_an_unknown_split():
    with pytest.raises(ValueError, match="split"):
        prompts(3, split="validation")


def test_prompt_text_reads_naturally():
    assert prompt_text(SCENES[0]) == "two red circles on the left, on a white background"
    assert prompt_text(SCENES[1]) == "one blue square in the center, on a black background"


def test_parse_prompt_inverts_prompt_text_on_every_scene():
    for scene in all_scenes():
        assert parse_prompt(prompt_text(scene)) == scene


def test_parse_prompt_ignores_case_and_spacing():
    assert parse_prompt("  Two RED circles   on the left, on a white background ") == SCENES[0]


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("two pink circles on the left, on a white background", "color 'pink'"),
        ("two red hexagons on the left, on a white background", "shape 'hexagon'"),
        ("four red circles on the left, on a white background", "count 'four'"),
        ("two red circles in the corner, on a white background", "position 'in the corner'"),
        ("two red circles on the left, on a teal background", "background 'teal'"),
        ("two red circle on the left, on a white background", "shape 'circle'"),
        ("two red circles on the left", "missing ', on a <background> background'"),
    ],
)
def test_parse_prompt_names_the_unparseable_part(text, part):
    with pytest.raises(ValueError, match=part):
        parse_prompt(text)


# Renderer


def test_render_is_deterministic_and_seeded():
    prompt = prompt_text(SCENES[2])
    assert np.array_equal(np.asarray(render(prompt, seed=1)), np.asarray(render(prompt, seed=1)))
    assert not np.array_equal(np.asarray(render(prompt, seed=1)), np.asarray(render(prompt, seed=2)))


def test_render_uses_only_the_scene_colors_without_anti_aliasing():
    scene = SCENES[0]
    colors = {tuple(c) for c in np.asarray(render(scene, size=32)).reshape(-1, 3)}
    assert colors == {PALETTE[scene.color], BACKGROUNDS[scene.background]}


def test_render_accepts_a_prompt_or_a_scene_and_a_size():
    image = render(prompt_text(SCENES[1]), size=32)
    assert image.size == (32, 32) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), np.asarray(render(SCENES[1], size=32)))


# Analysis


def test_analyze_reads_back_a_render():
    observation = analyze(render(SCENES[0]))
    assert observation.background == "white" and observation.size == (64, 64)
    assert [(o.color, o.shape, o.position) for o in observation.objects] == [("red", "circle", "left")] * 2
    x0, y0, x1, y1 = observation.objects[0].bbox
    assert observation.objects[0].mask.shape == (y1 - y0, x1 - x0)


def test_analyze_ignores_tiny_blobs():
    pixels = np.asarray(render(SCENES[1])).copy()
    pixels[2:4, 2:4] = PALETTE["red"]
    assert [o.color for o in analyze(Image.fromarray(pixels)).objects] == ["blue"]


def test_analyze_tolerates_mild_blur_and_upsampling():
    prompt = prompt_text(SCENES[0])
    image = render(prompt).resize((256, 256), Image.BILINEAR).filter(ImageFilter.GaussianBlur(2))
    assert alignment_score([image], [prompt]) == [1.0]


# Evaluator


@pytest.mark.parametrize("size", SIZES)
def test_alignment_score_is_one_on_renders_of_many_prompts(size):
    texts = prompts(150, seed=size) + prompts(30, seed=size, split="held_out")
    images = [render(text, size=size, seed=i) for i, text in enumerate(texts)]
    assert alignment_score(images, texts) == [1.0] * len(texts)


def test_alignment_score_is_lower_on_wrong_images():
    scene = SCENES[0]
    wrong = [
        dataclasses.replace(scene, color="blue"),
        dataclasses.replace(scene, count=3),
        dataclasses.replace(scene, position="right"),
        dataclasses.replace(scene, background="black"),
        dataclasses.replace(scene, shape="square"),
    ]
    scores = alignment_score([render(s) for s in wrong], [prompt_text(scene)] * len(wrong))
    assert all(score < 1.0 for score in scores)


def test_alignment_score_of_an_empty_image_counts_only_background_and_exclusivity():
    empty = Image.new("RGB", (64, 64), "white")
    assert alignment_score([empty], [prompt_text(SCENES[0])]) == [pytest.approx(2 / 6)]


def test_alignment_score_is_named_for_its_reward_metric():
    assert alignment_score.__name__ == "alignment_score"


def test_alignment_score_works_as_a_tailorpo_reward_through_combine_rewards():
    texts = [prompt_text(SCENES[0])] * 2
    images = [render(texts[0]), render(dataclasses.replace(SCENES[0], background="black"))]
    total, per_function = combine_rewards([alignment_score], [2.0], images, texts, step=3)
    assert per_function["alignment_score"].tolist() == pytest.approx([1.0, 5 / 6])
    assert total.tolist() == pytest.approx([2.0, 5 / 3])


# Critic and editor


@pytest.mark.parametrize("size", SIZES)
def test_critic_returns_no_instructions_on_a_correct_render(size):
    texts = [prompt_text(s) for s in SCENES]
    critiques = Critic()([render(t, size=size) for t in texts], texts)
    assert all(isinstance(c, Critique) and not c.needs_edit for c in critiques)
    assert "matches the prompt" in critiques[0].critique


def _injected_errors():
    """(scene, wrong scene, instruction kinds the critic must use) for each kind of error, with an id."""
    cases = []
    for scene in SCENES:
        cases.append(("color", scene, dataclasses.replace(scene, color=_other(PALETTE, scene.color)), {"recolor"}))
        if scene.count < 3:
            cases.append(("extra", scene, dataclasses.replace(scene, count=scene.count + 1), {"remove"}))
        if scene.count > 1:
            cases.append(("missing", scene, dataclasses.replace(scene, count=scene.count - 1), {"add"}))
        other_position = "center" if scene.position != "center" else "left"
        cases.append(("position", scene, dataclasses.replace(scene, position=other_position), {"move"}))
        other_background = _other(BACKGROUNDS, scene.background)
        cases.append(("background", scene, dataclasses.replace(scene, background=other_background), {"background"}))
        cases.append(
            ("shape", scene, dataclasses.replace(scene, shape=_other(SHAPES, scene.shape)), {"remove", "add"})
        )
    return [pytest.param(*case[1:], id=f"{case[0]}:{prompt_text(case[1])}") for case in cases]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("scene", "wrong", "kinds"), _injected_errors())
def test_critic_finds_each_injected_error_and_the_editor_fixes_it(scene, wrong, kinds, size):
    prompt = prompt_text(scene)
    image = render(wrong, size=size, seed=1)
    assert alignment_score([image], [prompt])[0] < 1.0
    critique, edited = _fix(image, prompt)
    assert {i.kind for i in critique.instructions} == kinds
    assert edited is not None and edited.size == image.size
    assert alignment_score([edited], [prompt]) == [1.0]


def test_critic_fixes_several_errors_at_once():
    scene = SCENES[0]
    wrong = Scene("circle", "blue", 3, "right", "gray")
    critique, edited = _fix(render(wrong), prompt_text(scene))
    assert {i.kind for i in critique.instructions} == {"recolor", "remove", "move", "background"}
    assert alignment_score([edited], [prompt_text(scene)]) == [1.0]


def test_critic_explains_the_error_in_words():
    critique = Critic()([render(dataclasses.replace(SCENES[0], color="blue"))], [prompt_text(SCENES[0])])[0]
    assert "should be red, not blue" in critique.critique


def test_critic_instructions_follow_the_critique_schema():
    scene = SCENES[0]
    critique = Critic()([render(dataclasses.replace(scene, color="blue"))], [prompt_text(scene)])[0]
    recolor = critique.instructions[0]
    assert recolor.target == "blue circle" and recolor.params["color"] == "red"
    assert recolor.region is not None and all(0.0 <= v <= 1.0 for v in recolor.region)
    assert Critique.coerce(critique.to_dict()).instructions[0].kind == "recolor"


def test_editor_is_deterministic():
    scene = SCENES[3]
    image = render(dataclasses.replace(scene, position="top"))
    first, second = _fix(image, prompt_text(scene))[1], _fix(image, prompt_text(scene))[1]
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_editor_with_no_instructions_returns_the_image_unchanged():
    image = render(SCENES[0])
    assert np.array_equal(np.asarray(Editor()([image], [[]])[0]), np.asarray(image))


@pytest.mark.parametrize(
    "instruction",
    [
        EditInstruction("make it prettier", kind="style"),
        EditInstruction("say hi"),
        EditInstruction("recolor the circle to pink", kind="recolor", target="red circle", params={"color": "pink"}),
        EditInstruction("remove the square", kind="remove", target="red square", region=(0.0, 0.0, 1.0, 1.0)),
        EditInstruction("move it to the corner", kind="move", target="red circle", params={"to": "corner"}),
        EditInstruction("add a hexagon", kind="add", params={"shape": "hexagon", "color": "red", "to": "left"}),
    ],
    ids=["unknown-kind", "no-kind", "unknown-color", "no-such-object", "unknown-region", "unknown-shape"],
)
def test_editor_returns_none_for_an_instruction_it_cannot_execute(instruction):
    assert Editor()([render(SCENES[0])], [[instruction]]) == [None]


def test_editor_returns_none_when_there_is_no_room():
    add = EditInstruction(
        "add nine squares",
        kind="add",
        params={"shape": "square", "color": "red", "count": 9, "to": "center", "size": 0.3},
    )
    assert Editor()([render(SCENES[1])], [[add]]) == [None]


def test_editor_repaints_the_background_and_keeps_the_objects():
    image = render(SCENES[0])
    instruction = EditInstruction("change the background to gray", kind="background", params={"color": "gray"})
    edited = Editor()([image], [[instruction]])[0]
    before, after = np.asarray(image), np.asarray(edited)
    objects = (before != BACKGROUNDS["white"]).any(-1)
    assert np.array_equal(after[objects], before[objects])
    assert (after[~objects] == BACKGROUNDS["gray"]).all()
