import pytest

from trl_rpo.data.schema import Critique, EditInstruction, InvalidCritiqueError


def test_a_dict_with_string_and_structured_instructions_becomes_a_critique():
    critique = Critique.coerce(
        {
            "critique": "The circle is blue, the prompt asks for red.",
            "instructions": [
                "make the background white",
                {"instruction": "recolor the circle to red", "kind": "recolor", "target": "circle",
                 "region": [0.1, 0.2, 0.5, 0.6], "params": {"color": "red"}},
            ],
        }
    )  # fmt: skip
    assert critique.needs_edit and len(critique.instructions) == 2
    assert critique.instructions[0] == EditInstruction("make the background white")
    assert critique.instructions[1].region == (0.1, 0.2, 0.5, 0.6) and critique.instructions[1].kind == "recolor"


def test_no_instructions_means_nothing_to_fix():
    assert not Critique.coerce({"critique": "Looks right."}).needs_edit


def test_round_trip_through_a_dict_drops_empty_fields():
    critique = Critique("c", [EditInstruction("recolor the circle to red", kind="recolor")])
    data = critique.to_dict()
    assert data == {"critique": "c", "instructions": [{"instruction": "recolor the circle to red", "kind": "recolor"}]}
    assert Critique.coerce(data) == critique


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"instructions": []}, "needs a 'critique' field"),
        ({"critique": "c", "instructions": "fix it"}, "instructions must be a list"),
        ({"critique": "c", "instructions": [""]}, "non-empty string"),
        ({"critique": "c", "instructions": [{"kind": "recolor"}]}, "needs an 'instruction' field"),
        ({"critique": "c", "instructions": [{"instruction": "x", "region": [0.5, 0, 0.2, 1]}]}, "0 <= x0 < x1"),
        ({"critique": "c", "instructions": [{"instruction": "x", "colour": "red"}]}, "unknown instruction field"),
        ({"critique": "c", "instructions": [{"instruction": "x", "region": 5}]}, "region must be 4 numbers"),
        ({"critique": "c", "instructions": [{"instruction": "x", "region": [0, 0, True, 1]}]}, "region must be 4"),
        ({"critique": "c", "score": 3}, "unknown critique field"),
        ("just text", "must be a Critique or a dict"),
    ],
)
def test_malformed_critic_output_is_refused_with_the_reason(value, message):
    with pytest.raises(InvalidCritiqueError, match=message):
        Critique.coerce(value)


def test_the_editor_protocol_check_coerces_instructions_and_defaults_prompts():
    from trl_rpo.data.schema import coerce_edit_batch

    images, instructions, prompts = coerce_edit_batch(["img"], [["make it red"]])
    assert instructions == [[EditInstruction("make it red")]] and prompts == [""]
    with pytest.raises(ValueError, match="got 2 instruction lists for 1 images"):
        coerce_edit_batch(["img"], [[], []])
    with pytest.raises(TypeError, match="must be a list of instructions"):
        coerce_edit_batch(["img"], ["make it red"])


def test_every_editor_refuses_a_bare_string_where_a_list_of_instructions_belongs():
    from PIL import Image

    from trl_rpo.shapes import Editor

    with pytest.raises(TypeError, match="must be a list of instructions"):
        Editor()([Image.new("RGB", (32, 32), "white")], ["remove one circle"])
