"""The word-swap check (`trl_rpo.shapes.word_check`): does a shapes model see each word of its prompt?"""

import json
import re

import pytest

from trl_rpo.shapes.world import Scene, split_of


@pytest.fixture(scope="module")
def base():
    from trl_rpo.shapes.model import load_pipeline

    return load_pipeline()


def test_swap_word_changes_only_that_word_and_stays_in_the_train_split():
    from trl_rpo.shapes.word_check import WORDS, swap_word
    from trl_rpo.shapes.world import all_scenes

    for scene in all_scenes("train")[:60]:
        for word in WORDS:
            swapped = swap_word(scene, word)
            assert swapped is not None and split_of(swapped) == "train"
            changed = [f for f in ("background", "color", "shape", "count", "position")
                       if getattr(swapped, f) != getattr(scene, f)]  # fmt: skip
            assert changed == [word]


def test_swap_word_refuses_an_unknown_word():
    from trl_rpo.shapes.word_check import swap_word

    with pytest.raises(ValueError, match="'size'"):
        swap_word(Scene("circle", "red", 1, "left", "white"), "size")


def test_observed_value_reads_each_word_off_a_ground_truth_render():
    from trl_rpo.shapes.analysis import analyze
    from trl_rpo.shapes.render import render
    from trl_rpo.shapes.word_check import WORDS, observed_value

    scene = Scene("triangle", "blue", 3, "bottom", "black")
    observation = analyze(render(scene, size=32))
    assert {word: observed_value(observation, word) for word in WORDS} == {
        "background": "black", "color": "blue", "shape": "triangle", "count": 3, "position": "bottom"}  # fmt: skip


def test_encoder_distance_is_zero_for_one_prompt_and_positive_for_a_color_swap(base):
    from trl_rpo.shapes.word_check import encoder_distance

    same, other = encoder_distance(base, ["one red circle on the left, on a white background"] * 2,
                                   ["one red circle on the left, on a white background",
                                    "one blue circle on the left, on a white background"])  # fmt: skip
    assert same == pytest.approx(0.0, abs=1e-6) and other > 0.1


def test_word_check_reads_a_word_the_text_encoder_drops_as_unseen(base, tmp_path):
    # Every position phrase encoded as "on the left": the position word cannot reach the image, so its swap must
    # read as no encoder distance, no pixel change and the attribute unchanged, while a color swap still shows.
    from trl_rpo.shapes.word_check import run_word_check

    encode = base.encode_prompt

    def deaf(prompt, *args, **kwargs):
        texts = [re.sub(r"(on the (left|right)|at the (top|bottom)|in the center)", "on the left", p) for p in prompt]
        return encode(texts, *args, **kwargs)

    base.encode_prompt = deaf
    try:
        results = run_word_check(base, tmp_path / "check", num_prompts=4, num_inference_steps=4, log=lambda m: None)
    finally:
        del base.encode_prompt
    rows = {row["word"]: row for row in results["rows"]}
    assert list(rows) == ["background", "color", "shape", "count", "position"]
    assert rows["position"]["encoder_distance"] == 0.0 and rows["position"]["pixel_change"] == 0.0
    assert rows["position"]["unchanged"] in (1.0, None)
    assert rows["color"]["encoder_distance"] > 0.1 and rows["color"]["pixel_change"] > 0.0
    for word in ("background", "color"):  # words the shipped base sees: each image shows the new word
        assert rows[word]["follows"] == 1.0 and rows[word]["unchanged"] == 0.0
    for row in rows.values():
        assert row["pairs"] == 4 and 0.0 <= row["follows"] <= 1.0
    saved = json.loads((tmp_path / "check" / "word_check.json").read_text())
    assert saved["rows"] == results["rows"]
    assert (tmp_path / "check" / "word_check.md").read_text().startswith("| word |")


def test_word_check_never_writes_over_an_earlier_check(base, tmp_path):
    from trl_rpo.shapes.word_check import run_word_check

    (tmp_path / "check").mkdir()
    (tmp_path / "check" / "word_check.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not empty"):
        run_word_check(base, tmp_path / "check", num_prompts=2, log=lambda m: None)
    assert (tmp_path / "check" / "word_check.json").read_text() == "{}"


def test_dev_sweep_words_stage_checks_the_base_and_each_trained_model_into_its_own_folder(base, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    base.unet.save_pretrained(tmp_path / "run-a" / "unet")  # a fully fine-tuned UNet folder, as a trainer saves one
    script = Path(__file__).parents[1] / "examples" / "shapes" / "dev_sweep.py"
    result = subprocess.run([sys.executable, str(script), "--stage", "words", "--quick", "--output-dir",
                             str(tmp_path / "words"), "--trained", str(tmp_path / "run-a")],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    checks = {name: json.loads((tmp_path / "words" / name / "word_check.json").read_text())
              for name in ("base", "run-a")}  # fmt: skip
    assert all(check["num_prompts"] == 4 and len(check["rows"]) == 5 for check in checks.values())
    assert checks["base"]["rows"] == checks["run-a"]["rows"]  # the same UNet: the same check


def test_word_check_records_how_often_each_check_passes_on_the_unswapped_images(base, tmp_path, monkeypatch):
    # A check made to pass everything but position: the recorded rates must be its, image for image.
    from trl_rpo.shapes import word_check

    def every_check_but_position(observation, scene):
        return {"background": True, "color": True, "shape": True, "count": True, "position": False, "exclusive": True}

    monkeypatch.setattr(word_check, "check_attributes", every_check_but_position)
    results = word_check.run_word_check(base, tmp_path / "check", num_prompts=2, num_inference_steps=2,
                                        log=lambda m: None)  # fmt: skip
    assert results["pass_rates"] == {"background": 1.0, "color": 1.0, "shape": 1.0, "count": 1.0, "position": 0.0,
                                     "exclusive": 1.0}  # fmt: skip
    table = (tmp_path / "check" / "word_check.md").read_text()
    assert "| unswapped images | background | color | shape | count | position | exclusive |" in table
    assert "| pass rate | 1.00 | 1.00 | 1.00 | 1.00 | 0.00 | 1.00 |" in table
