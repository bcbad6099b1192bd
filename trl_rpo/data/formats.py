"""Preference dataset formats: TRL's (`prompt`, `chosen`, `rejected`) and Pick-a-Pic v2.

Every dataset that reaches a trainer goes through :func:`prepare_preference_dataset`, which checks each
row once (prompt is a non-empty string, both images decode within PIL's pixel limit) and reports a bad
row by index and column, or drops it when the user asks to skip invalid rows.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "InvalidRowError",
    "MASK_COLUMN",
    "ROW_INDEX",
    "PREFERENCE_COLUMNS",
    "PICKAPIC_COLUMNS",
    "load_image",
    "detect_format",
    "prepare_preference_dataset",
    "pickapic_to_preference",
    "load_preference_dataset",
    "load_saved_dataset",
    "prepare_prompt_dataset",
    "load_prompt_dataset",
]

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
PREFERENCE_FEATURES = Features({"prompt": Value("string"), "chosen": ImageFeature(), "rejected": ImageFeature()})
# Column holding each row's index in the dataset as given, so an image checked only when it is read can still be
# reported by row (ties dropped from Pick-a-Pic would otherwise shift the numbering).
ROW_INDEX = "row_index"
# Optional column of edit masks (mode "L", 255 = edited, or None per row), written by RichPreferenceDataBuilder.
MASK_COLUMN = "mask"


class InvalidRowError(ValueError):
    """A dataset row that cannot be used; names the row index and the column."""

    def __init__(self, row: int | None, column: str, reason: str, extra: str = ""):
        self.row, self.column, self.reason = row, column, reason
        where = f"row {row}, column {column!r}" if row is not None else f"column {column!r}"
        super().__init__(f"{where}: {reason}{extra}")


def load_image(value: Any, *, row: int | None = None, column: str = "image") -> Image.Image:
    """Decode one image cell into an RGB PIL image.

    Accepts a PIL image, raw encoded bytes, a file path, or the `{"bytes": ..., "path": ...}` dict that
    `datasets.Image(decode=False)` stores. Decoding is complete (truncated files fail here, not mid-
    training) and bounded by PIL's `MAX_IMAGE_PIXELS`: a decompression bomb is refused, not expanded.

    Raises:
        InvalidRowError: naming `row` and `column` when the value is of the wrong type or does not decode.
    """
    if isinstance(value, Image.Image):
        image = value
    else:
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            source = io.BytesIO(data) if data is not None else path
        elif isinstance(value, (bytes, bytearray, memoryview)):
            source = io.BytesIO(bytes(value))
        elif isinstance(value, (str, os.PathLike)):
            source = value
        else:
            raise InvalidRowError(
                row,
                column,
                f"expected an image (PIL image, bytes, file path or datasets.Image), got {type(value).__name__}",
            )
        if source is None:
            raise InvalidRowError(row, column, "image cell is empty (no bytes and no path)")
        if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
            raise InvalidRowError(row, column, f"image file not found: {os.fspath(source)!r}")
        try:
            with warnings.catch_warnings():
                # PIL only warns between 1x and 2x its pixel limit; treat that as the bomb it may be.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source)
                image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise InvalidRowError(row, column, f"image exceeds PIL's pixel limit ({err})") from None
        except Exception as err:  # PIL raises many types for corrupt data
            raise InvalidRowError(row, column, f"image does not decode ({type(err).__name__}: {err})") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def detect_format(column_names: list[str]) -> str:
    """`"preference"` for TRL's columns, `"pickapic"` for Pick-a-Pic v2's; else an error naming what is missing."""
    names = set(column_names)
    if set(PREFERENCE_COLUMNS) <= names:
        return "preference"
    if set(PICKAPIC_COLUMNS) <= names:
        return "pickapic"
    missing = [c for c in PREFERENCE_COLUMNS if c not in names]
    raise InvalidRowError(
        None,
        missing[0],
        f"missing column(s) {missing}: expected the TRL preference format {list(PREFERENCE_COLUMNS)} or the "
        f"Pick-a-Pic v2 format {list(PICKAPIC_COLUMNS)}; the dataset has columns {sorted(names)}",
    )


def _undecoded(dataset: Dataset, columns: tuple[str, ...]) -> Dataset:
    """The same dataset with Image columns left encoded, so validation reads bytes, not PIL objects."""
    for name in columns:
        feature = dataset.features.get(name)
        if isinstance(feature, ImageFeature) and feature.decode:
            dataset = dataset.cast_column(name, ImageFeature(decode=False))
    return dataset


def _row_error(example: dict, row: int, fmt: str, images: bool = True) -> tuple[str, str] | None:
    """`(column, reason)` of the first problem in one row, or None if the row is usable."""
    prompt_col = "prompt" if fmt == "preference" else "caption"
    image_cols = ("chosen", "rejected") if fmt == "preference" else ("jpg_0", "jpg_1")
    prompt = example[prompt_col]
    if not isinstance(prompt, str):
        return prompt_col, f"expected a string prompt, got {type(prompt).__name__}"
    if not prompt.strip():
        return prompt_col, "prompt is empty"
    if fmt == "pickapic":
        label = example["label_0"]
        if isinstance(label, bool) or not isinstance(label, (int, float)) or float(label) not in (0.0, 0.5, 1.0):
            return "label_0", f"expected 0, 0.5 or 1 (which image won), got {label!r}"
    for col in image_cols if images else ():
        try:
            load_image(example[col], row=row, column=col)
        except InvalidRowError as err:
            return col, err.reason
    return None


def _find_errors(examples: dict, indices: list[int], fmt: str, images: bool = True) -> dict:
    columns, reasons = [], []
    for i, row in enumerate(indices):
        found = _row_error({k: v[i] for k, v in examples.items()}, row, fmt, images)
        columns.append(found[0] if found else None)
        reasons.append(found[1] if found else None)
    return {"error_column": columns, "error_reason": reasons}


def prepare_preference_dataset(
    dataset: Dataset,
    *,
    skip_invalid_rows: bool = False,
    validate_images: bool = True,
    num_proc: int | None = None,
    name: str = "train_dataset",
) -> Dataset:
    """Validate a preference dataset and return it in TRL's format (`prompt`, `chosen`, `rejected`).

    * TRL format: images may be PIL images, `datasets.Image`, file paths or encoded bytes.
    * Pick-a-Pic v2 (`caption`, `jpg_0`, `jpg_1`, `label_0`): the chosen image is the one `label_0` says
      won; ties (`label_0 == 0.5`) carry no preference and are dropped, and the count is logged.

    Args:
        skip_invalid_rows: drop rows that fail validation (logging how many and why) instead of raising.
        validate_images: decode every image now (one full pass over the data). With False only prompts (and
            Pick-a-Pic labels) are checked here; the result keeps its images encoded (`datasets.Image(decode=
            False)`: `datasets` would otherwise decode them on access and raise PIL's error, naming no row) and
            gets a `row_index` column, so whoever reads an image later names its row
            (`load_image(example["chosen"], row=example["row_index"], column="chosen")`). Cannot be combined
            with `skip_invalid_rows`, which must see every image to drop the bad ones.
        num_proc: processes for the validation pass (it decodes every image once).
        name: how error messages refer to the dataset.

    Raises:
        InvalidRowError: on the first bad row (index and column), unless `skip_invalid_rows`.
    """
    if isinstance(dataset, DatasetDict):
        raise TypeError(f"{name} is a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['train']")
    if skip_invalid_rows and not validate_images:
        raise ValueError("skip_invalid_rows needs validate_images=True: a bad image is only found by decoding it")
    fmt = detect_format(dataset.column_names)
    image_cols = ("chosen", "rejected") if fmt == "preference" else ("jpg_0", "jpg_1")
    raw = _undecoded(dataset, image_cols)
    needed = [*PREFERENCE_COLUMNS] if fmt == "preference" else [*PICKAPIC_COLUMNS]
    checked = needed if validate_images else [c for c in needed if c not in image_cols]
    checks = raw.select_columns(checked).map(
        _find_errors,
        batched=True,
        with_indices=True,
        fn_kwargs={"fmt": fmt, "images": validate_images},
        remove_columns=checked,
        num_proc=num_proc,
        desc=f"Validating {name}",
    )
    bad = [(i, c, r) for i, (c, r) in enumerate(zip(checks["error_column"], checks["error_reason"])) if c is not None]
    if bad and not skip_invalid_rows:
        row, column, reason = bad[0]
        more = f" ({len(bad)} invalid rows in all)" if len(bad) > 1 else ""
        raise InvalidRowError(
            row, column, reason, f" in {name}{more}. Fix the data, or set skip_invalid_rows=True to drop such rows."
        )
    if bad:
        by_reason = Counter(f"{c}: {r.split(' (')[0]}" for _, c, r in bad)
        logger.warning(
            "Skipped %d invalid row(s) of %s out of %d: %s",
            len(bad),
            name,
            len(dataset),
            "; ".join(f"{n} x {why}" for why, n in by_reason.most_common()),
        )
        bad_rows = {i for i, _, _ in bad}
        raw = raw.select([i for i in range(len(raw)) if i not in bad_rows])
    columns = list(PREFERENCE_COLUMNS)
    if fmt == "preference" and MASK_COLUMN in raw.column_names:
        columns.append(MASK_COLUMN)  # edit masks of the builder's pairs (masked Diffusion-DPO); None where unknown
    if not validate_images:
        raw = raw.add_column(ROW_INDEX, list(range(len(raw))))
        columns.append(ROW_INDEX)
    if fmt == "pickapic":
        return pickapic_to_preference(raw, num_proc=num_proc, decode_images=validate_images)
    raw = raw.select_columns(columns)
    return _restore_decoding(raw, dataset) if validate_images else raw


def _restore_decoding(raw: Dataset, original: Dataset) -> Dataset:
    for name, feature in original.features.items():
        if name in raw.column_names and isinstance(feature, ImageFeature) and feature.decode:
            raw = raw.cast_column(name, ImageFeature())
    return raw


def _pickapic_rows(examples: dict) -> dict:
    chosen, rejected = [], []
    for first, second, label in zip(examples["jpg_0"], examples["jpg_1"], examples["label_0"]):
        win, lose = (first, second) if float(label) == 1.0 else (second, first)
        chosen.append(_as_image_cell(win))
        rejected.append(_as_image_cell(lose))
    rows = {"prompt": examples["caption"], "chosen": chosen, "rejected": rejected}
    if ROW_INDEX in examples:
        rows[ROW_INDEX] = examples[ROW_INDEX]
    return rows


def _as_image_cell(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value), "path": None}
    return value


def pickapic_to_preference(dataset: Dataset, *, num_proc: int | None = None, decode_images: bool = True) -> Dataset:
    """Convert Pick-a-Pic v2 rows to TRL's preference format, winner as `chosen`, dropping ties.

    Pick-a-Pic stores `label_0 = 1` when `jpg_0` won, `0` when `jpg_1` won and `0.5` for a tie. The
    diffusers DPO scripts turn a tie into "jpg_0 wins"; Diffusion-DPO's reference code drops ties, and
    so does this function (the count is logged). Rows are not otherwise validated unless this is
    reached through :func:`prepare_preference_dataset`. With `decode_images=False` the image columns stay
    encoded (`datasets.Image(decode=False)`), for readers that decode them with :func:`load_image`.
    """
    detect_format(dataset.column_names)
    dataset = _undecoded(dataset, ("jpg_0", "jpg_1"))
    labels = dataset["label_0"]
    keep = [i for i, label in enumerate(labels) if float(label) != 0.5]
    ties = len(labels) - len(keep)
    if ties:
        logger.warning("Pick-a-Pic: dropped %d tie(s) (label_0 == 0.5) out of %d pairs", ties, len(labels))
        dataset = dataset.select(keep)
    features = PREFERENCE_FEATURES.copy()
    if not decode_images:
        features["chosen"] = features["rejected"] = ImageFeature(decode=False)
    if ROW_INDEX in dataset.column_names:
        features[ROW_INDEX] = dataset.features[ROW_INDEX]
    return dataset.map(
        _pickapic_rows,
        batched=True,
        remove_columns=dataset.column_names,
        features=features,
        num_proc=num_proc,
        desc="Converting Pick-a-Pic to preference pairs",
    )


def prepare_prompt_dataset(dataset: Dataset, *, name: str = "train_dataset") -> Dataset:
    """Validate a prompt dataset for online trainers: a `prompt` column of non-empty strings.

    Raises:
        InvalidRowError: naming the column when it is missing, or the first bad row and its reason.
    """
    if isinstance(dataset, DatasetDict):
        raise TypeError(f"{name} is a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['train']")
    if "prompt" not in dataset.column_names:
        raise InvalidRowError(None, "prompt", f"{name} needs a 'prompt' column; it has {dataset.column_names}")
    for row, prompt in enumerate(dataset["prompt"]):
        if not isinstance(prompt, str):
            raise InvalidRowError(row, "prompt", f"expected a string prompt, got {type(prompt).__name__} in {name}")
        if not prompt.strip():
            raise InvalidRowError(row, "prompt", f"prompt is empty in {name}")
    if len(dataset) == 0:
        raise ValueError(f"{name} has no rows")
    return dataset.select_columns(["prompt"])


def load_saved_dataset(path: str | os.PathLike):
    """`datasets.load_from_disk`, except for a `Dataset` that `save_to_disk` wrote with no rows: it writes no shard
    and `datasets` cannot read it back, so that one is returned as an empty dataset with its saved features."""
    import json

    from datasets import DatasetInfo, load_from_disk

    state = os.path.join(path, "state.json")
    if os.path.isfile(state):
        with open(state, encoding="utf-8") as f:
            if not json.load(f).get("_data_files"):
                features = DatasetInfo.from_directory(str(path)).features
                return Dataset.from_dict({name: [] for name in features}, features=features)
    return load_from_disk(str(path))


def load_preference_dataset(name_or_path: str, split: str = "train") -> Dataset:
    """Load a dataset from a local `save_to_disk` folder, a local data folder, or the Hub.

    Note that the diffusers DPO scripts default to the `validation` split; here it is `train`.
    """
    from datasets import load_dataset

    if os.path.isdir(name_or_path) and (
        os.path.isfile(os.path.join(name_or_path, "dataset_info.json"))
        or os.path.isfile(os.path.join(name_or_path, "dataset_dict.json"))
    ):
        loaded = load_saved_dataset(name_or_path)
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise KeyError(f"{name_or_path!r} has splits {list(loaded)}, not {split!r}")
            return loaded[split]
        return loaded
    return load_dataset(name_or_path, split=split)


def load_prompt_dataset(name_or_path: str, split: str = "train", prompt_column: str = "prompt") -> Dataset:
    """Prompts for online training: a text file (one prompt per line), a `save_to_disk` folder, or a Hub dataset.

    `prompt_column` names the column holding the prompts (e.g. `caption`); it is renamed to `prompt`.
    """
    if os.path.isfile(name_or_path) and name_or_path.endswith(".txt"):
        with open(name_or_path, encoding="utf-8") as handle:
            prompts = [line.strip() for line in handle if line.strip()]
        if not prompts:
            raise ValueError(f"{name_or_path!r} holds no prompts (expected one per line)")
        return Dataset.from_dict({"prompt": prompts})
    dataset = load_preference_dataset(name_or_path, split)
    if prompt_column != "prompt":
        if prompt_column not in dataset.column_names:
            raise InvalidRowError(None, prompt_column, f"{name_or_path!r} has columns {dataset.column_names}")
        dataset = dataset.rename_column(prompt_column, "prompt")
    return prepare_prompt_dataset(dataset, name=name_or_path)
