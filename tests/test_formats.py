import io
import logging

import pytest
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from trl_rpo import InvalidRowError, pickapic_to_preference, prepare_preference_dataset
from trl_rpo.data import load_image, load_preference_dataset


def _png(color=(255, 0, 0), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


RED, GREEN, BLUE = _png((255, 0, 0)), _png((0, 255, 0)), _png((0, 0, 255))


def _color(image) -> tuple:
    return load_image(image).getpixel((0, 0))


def test_trl_format_accepts_pil_images():
    ds = Dataset.from_dict(
        {"prompt": ["a"], "chosen": [Image.open(io.BytesIO(RED))], "rejected": [Image.open(io.BytesIO(GREEN))]},
        features=Features({"prompt": Value("string"), "chosen": ImageFeature(), "rejected": ImageFeature()}),
    )
    out = prepare_preference_dataset(ds)
    assert out.column_names == ["prompt", "chosen", "rejected"]
    assert _color(out[0]["chosen"]) == (255, 0, 0)
    assert isinstance(out[0]["chosen"], Image.Image)  # decoding is restored after validation


def test_trl_format_accepts_file_paths(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(RED)
    b.write_bytes(BLUE)
    out = prepare_preference_dataset(Dataset.from_dict({"prompt": ["p"], "chosen": [str(a)], "rejected": [str(b)]}))
    assert _color(out[0]["chosen"]) == (255, 0, 0) and _color(out[0]["rejected"]) == (0, 0, 255)


def test_trl_format_accepts_raw_bytes():
    out = prepare_preference_dataset(Dataset.from_dict({"prompt": ["p"], "chosen": [RED], "rejected": [GREEN]}))
    assert _color(out[0]["rejected"]) == (0, 255, 0)


def test_pickapic_takes_chosen_from_label_and_drops_ties(caplog):
    ds = Dataset.from_dict(
        {
            "caption": ["jpg_0 wins", "jpg_1 wins", "tie"],
            "jpg_0": [RED, RED, RED],
            "jpg_1": [GREEN, GREEN, GREEN],
            "label_0": [1.0, 0.0, 0.5],
        }
    )
    with caplog.at_level(logging.WARNING):
        out = prepare_preference_dataset(ds)
    assert out["prompt"] == ["jpg_0 wins", "jpg_1 wins"]
    assert _color(out[0]["chosen"]) == (255, 0, 0) and _color(out[0]["rejected"]) == (0, 255, 0)
    assert _color(out[1]["chosen"]) == (0, 255, 0) and _color(out[1]["rejected"]) == (255, 0, 0)
    assert "dropped 1 tie" in caplog.text


def test_pickapic_conversion_function_alone():
    ds = Dataset.from_dict({"caption": ["c"], "jpg_0": [RED], "jpg_1": [GREEN], "label_0": [0]})
    out = pickapic_to_preference(ds)
    assert _color(out[0]["chosen"]) == (0, 255, 0)


def test_missing_column_names_the_column():
    ds = Dataset.from_dict({"prompt": ["p"], "chosen": [RED]})
    with pytest.raises(InvalidRowError, match="column 'rejected'"):
        prepare_preference_dataset(ds)


def test_image_that_does_not_decode_names_row_and_column():
    ds = Dataset.from_dict({"prompt": ["ok", "bad"], "chosen": [RED, b"not an image"], "rejected": [GREEN, GREEN]})
    with pytest.raises(InvalidRowError, match=r"row 1, column 'chosen': image does not decode") as info:
        prepare_preference_dataset(ds)
    assert (info.value.row, info.value.column) == (1, "chosen")


def test_truncated_image_does_not_decode():
    ds = Dataset.from_dict({"prompt": ["p"], "chosen": [RED], "rejected": [GREEN[: len(GREEN) // 2]]})
    with pytest.raises(InvalidRowError, match="row 0, column 'rejected'"):
        prepare_preference_dataset(ds)


def test_empty_prompt_names_row_and_column():
    ds = Dataset.from_dict({"prompt": ["fine", "  "], "chosen": [RED, RED], "rejected": [GREEN, GREEN]})
    with pytest.raises(InvalidRowError, match=r"row 1, column 'prompt': prompt is empty"):
        prepare_preference_dataset(ds)


def test_wrong_type_names_row_and_column():
    ints = Dataset.from_dict({"prompt": [1, 2], "chosen": [RED, RED], "rejected": [GREEN, GREEN]})
    with pytest.raises(InvalidRowError, match=r"row 0, column 'prompt': expected a string prompt, got int"):
        prepare_preference_dataset(ints)
    images_as_numbers = Dataset.from_dict({"prompt": ["a"], "chosen": [3], "rejected": [GREEN]})
    with pytest.raises(InvalidRowError, match=r"row 0, column 'chosen': expected an image"):
        prepare_preference_dataset(images_as_numbers)


def test_missing_image_file_names_the_path(tmp_path):
    ds = Dataset.from_dict({"prompt": ["p"], "chosen": [str(tmp_path / "gone.png")], "rejected": [GREEN]})
    with pytest.raises(InvalidRowError, match="gone.png"):
        prepare_preference_dataset(ds)


def test_bad_pickapic_label_names_row_and_column():
    ds = Dataset.from_dict({"caption": ["c"], "jpg_0": [RED], "jpg_1": [GREEN], "label_0": [0.7]})
    with pytest.raises(InvalidRowError, match=r"row 0, column 'label_0'"):
        prepare_preference_dataset(ds)


def test_skip_invalid_rows_drops_them_and_logs_count_and_reasons(caplog):
    ds = Dataset.from_dict(
        {"prompt": ["ok", "", "ok2", "bad img"], "chosen": [RED, RED, RED, b"xx"], "rejected": [GREEN] * 4}
    )
    with caplog.at_level(logging.WARNING):
        out = prepare_preference_dataset(ds, skip_invalid_rows=True)
    assert out["prompt"] == ["ok", "ok2"]
    assert "Skipped 2 invalid row(s)" in caplog.text
    assert "prompt is empty" in caplog.text and "image does not decode" in caplog.text


def test_error_counts_all_invalid_rows_and_suggests_skipping():
    ds = Dataset.from_dict({"prompt": ["", ""], "chosen": [RED, RED], "rejected": [GREEN, GREEN]})
    with pytest.raises(InvalidRowError, match=r"2 invalid rows in all.*skip_invalid_rows=True"):
        prepare_preference_dataset(ds)


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # an 8x8 image now exceeds the limit
    with pytest.raises(InvalidRowError, match="pixel limit"):
        load_image(RED, row=0, column="chosen")


def test_datasetdict_is_rejected_with_a_hint():
    from datasets import DatasetDict

    dd = DatasetDict({"train": Dataset.from_dict({"prompt": ["p"], "chosen": [RED], "rejected": [GREEN]})})
    with pytest.raises(TypeError, match=r"dataset\['train'\]"):
        prepare_preference_dataset(dd)


def test_load_preference_dataset_reads_save_to_disk_folders(tmp_path):
    from datasets import DatasetDict

    ds = Dataset.from_dict({"prompt": ["p"], "chosen": [RED], "rejected": [GREEN]})
    DatasetDict({"train": ds}).save_to_disk(tmp_path / "dd")
    ds.save_to_disk(tmp_path / "single")
    assert load_preference_dataset(str(tmp_path / "dd"))["prompt"] == ["p"]
    assert load_preference_dataset(str(tmp_path / "single"))["prompt"] == ["p"]
    with pytest.raises(KeyError, match="validation"):
        load_preference_dataset(str(tmp_path / "dd"), split="validation")


def test_prompt_dataset_loads_from_a_text_file_one_prompt_per_line(tmp_path):
    from trl_rpo.data import load_prompt_dataset

    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\n  a dog  \n")
    assert load_prompt_dataset(str(path))["prompt"] == ["a cat", "a dog"]


def test_prompt_dataset_renames_the_prompt_column_and_names_a_missing_one(tmp_path):
    from trl_rpo.data import load_prompt_dataset

    Dataset.from_dict({"caption": ["a cat", "a dog"]}).save_to_disk(tmp_path / "d")
    assert load_prompt_dataset(str(tmp_path / "d"), prompt_column="caption")["prompt"] == ["a cat", "a dog"]
    with pytest.raises(InvalidRowError, match="column 'text'"):
        load_prompt_dataset(str(tmp_path / "d"), prompt_column="text")


def test_lazy_validation_keeps_the_original_row_index_through_pick_a_pic_ties():
    data = Dataset.from_dict(
        {
            "caption": ["a", "tie", "c"],
            "jpg_0": [_png(), _png(), _png()],
            "jpg_1": [_png((0, 0, 255)), _png(), b"not an image"],
            "label_0": [1.0, 0.5, 0.0],
        }
    )
    prepared = prepare_preference_dataset(data, validate_images=False)  # the bad image is not read here
    assert prepared["row_index"] == [0, 2]
    row = prepared[1]
    with pytest.raises(InvalidRowError, match=r"row 2, column 'chosen'"):
        load_image(row["chosen"], row=row["row_index"], column="chosen")  # jpg_1 won row 2: it is `chosen`


def test_lazy_validation_cannot_skip_invalid_rows():
    with pytest.raises(ValueError, match="skip_invalid_rows needs validate_images=True"):
        prepare_preference_dataset(Dataset.from_dict({"prompt": ["a"], "chosen": [_png()], "rejected": [_png()]}),
                                   skip_invalid_rows=True, validate_images=False)  # fmt: skip
