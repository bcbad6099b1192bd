"""Diffusion-DPO's precompute pass: what it caches, in which dtype, from which rows, and how bad rows surface.

The 2-process case (each process encodes its own shard, all see the whole cache) is in tests/test_distributed.py.
"""

import io
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature

from trl_rpo.data.formats import InvalidRowError
from trl_rpo.testing import tiny_preference_dataset
from trl_rpo.trainer.diffusion_dpo_trainer import DiffusionDPOTrainer, from_storage, shard_bounds, to_storage

from ._helpers import make_trainer, wide_preference_pairs

ENCODED = ("chosen_latents", "rejected_latents", "prompt_embeds", "pooled_prompt_embeds", "chosen_time_ids")


def _cache(trainer) -> dict[str, np.ndarray]:
    data = trainer.train_dataset
    return {k: np.stack([np.asarray(row[k]) for row in data]) for k in ENCODED if k in data.column_names}


def _precompute(tmp_path, name, **overrides):
    overrides.setdefault("dataset", wide_preference_pairs())
    return make_trainer(
        tmp_path / name, sdxl=True, precompute_latents=True, precompute_cache_dir=str(tmp_path / name / "cache"),
        random_crop=True, random_flip=True, resolution=32, **overrides,
    )  # fmt: skip


def test_bfloat16_round_trips_exactly_through_the_cache_storage():
    values = torch.randn(3, 4).to(torch.bfloat16)
    stored = to_storage(values)
    assert stored.dtype == np.int16
    restored = from_storage(stored)
    assert restored.dtype == torch.bfloat16 and torch.equal(restored, values)


def test_contiguous_shards_cover_every_row_once():
    for rows in (0, 1, 7, 8):
        bounds = [shard_bounds(rows, 3, i) for i in range(3)]
        assert [i for start, end in bounds for i in range(start, end)] == list(range(rows))


def test_cache_and_batches_follow_the_training_dtype(tmp_path):
    fp32 = make_trainer(tmp_path / "fp32", precompute_latents=True, precompute_cache_dir=str(tmp_path / "c32"))
    bf16 = make_trainer(tmp_path / "bf16", precompute_latents=True, precompute_cache_dir=str(tmp_path / "c16"),
                        bf16=True, use_cpu=True)  # fmt: skip
    for trainer, dtype in ((fp32, torch.float32), (bf16, torch.bfloat16)):
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
        assert batch["latents"].dtype == dtype and batch["prompt_embeds"].dtype == dtype
    # The bf16 cache holds the fp32 encoder outputs rounded to bf16 (half the bytes, same values to bf16 precision).
    a = fp32.data_collator([fp32.train_dataset[0]])["prompt_embeds"]
    b = bf16.data_collator([bf16.train_dataset[0]])["prompt_embeds"]
    torch.testing.assert_close(b.float(), a, rtol=2e-2, atol=2e-2)


def test_max_train_samples_is_applied_before_any_row_is_encoded(tmp_path, monkeypatch):
    encoded_rows: list[int] = []
    original = DiffusionDPOTrainer._encode_rows

    def counting(self, batch, indices):
        encoded_rows.extend(indices)
        return original(self, batch, indices)

    monkeypatch.setattr(DiffusionDPOTrainer, "_encode_rows", counting)
    trainer = _precompute(tmp_path, "limited", max_train_samples=3)
    assert len(trainer.train_dataset) == 3
    assert set(encoded_rows) == {0, 1, 2}


def test_same_seed_gives_the_same_cache_whatever_the_global_random_state(tmp_path):
    torch.manual_seed(1), random.seed(1)
    first = _cache(_precompute(tmp_path, "a", seed=7))
    torch.manual_seed(2), random.seed(2)
    again = _cache(_precompute(tmp_path, "b", seed=7))
    other = _cache(_precompute(tmp_path, "c", seed=8))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    # Another seed draws other crops (the crop offsets sit in time_ids) and other VAE samples.
    assert not np.array_equal(first["chosen_time_ids"], other["chosen_time_ids"])
    assert not np.array_equal(first["chosen_latents"], other["chosen_latents"])


def test_an_existing_shard_is_reused_not_encoded_again(tmp_path, monkeypatch):
    first = _cache(_precompute(tmp_path, "run"))
    monkeypatch.setattr(DiffusionDPOTrainer, "_encode_rows", lambda *a: pytest.fail("encoded again"))
    monkeypatch.setattr(DiffusionDPOTrainer, "_precomputed_features", lambda *a: pytest.fail("probed again"))
    again = _cache(_precompute(tmp_path, "run"))
    np.testing.assert_array_equal(first["chosen_latents"], again["chosen_latents"])


def _with_bad_image(row: int, column: str) -> Dataset:
    good = tiny_preference_dataset(6)
    data = {"prompt": list(good["prompt"]), "chosen": [], "rejected": []}
    for image_column in ("chosen", "rejected"):
        for image in good[image_column]:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data[image_column].append(buffer.getvalue())
    data[column][row] = b"not an image"
    # As datasets.Image columns (the common case), which datasets would otherwise decode, unnamed, on access.
    cells = {k: [{"bytes": v, "path": None} for v in data[k]] for k in ("chosen", "rejected")}
    features = Features({"prompt": Value("string"), "chosen": ImageFeature(), "rejected": ImageFeature()})
    return Dataset.from_dict({**data, **cells}, features=features)


def test_a_bad_image_is_reported_by_row_and_column_when_a_batch_reads_it(tmp_path):
    # Construction no longer decodes every image (a full pass over Pick-a-Pic); the bad one surfaces when read.
    trainer = make_trainer(tmp_path, dataset=_with_bad_image(4, "rejected"))
    trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    with pytest.raises(InvalidRowError, match=r"row 4, column 'rejected': image does not decode"):
        trainer.data_collator([trainer.train_dataset[i] for i in range(3, 5)])


def test_a_bad_image_is_reported_by_row_and_column_when_precomputed(tmp_path):
    with pytest.raises(InvalidRowError, match=r"row 3, column 'chosen': image does not decode"):
        make_trainer(tmp_path, dataset=_with_bad_image(3, "chosen"), precompute_latents=True,
                     precompute_cache_dir=str(tmp_path / "cache"))  # fmt: skip


def test_skip_invalid_rows_still_decodes_every_image_up_front_to_drop_bad_ones(tmp_path):
    trainer = make_trainer(tmp_path, dataset=_with_bad_image(3, "chosen"), skip_invalid_rows=True)
    assert len(trainer.train_dataset) == 5


def test_the_shard_size_is_logged_before_the_shard_is_written(tmp_path, caplog):
    seen = []

    class FileState(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Precomputing train rows"):
                path = Path(record.args[-1])
                seen.append((record.args[-3], path.exists(), path))

    handler = FileState()
    logging.getLogger("trl_rpo.trainer.diffusion_dpo_trainer").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="trl_rpo.trainer.diffusion_dpo_trainer"):
            _precompute(tmp_path, "logged")
    finally:
        logging.getLogger("trl_rpo.trainer.diffusion_dpo_trainer").removeHandler(handler)
    ((mib, existed, path),) = seen
    assert not existed
    # The logged estimate is the size of the arrays written (the file adds Arrow's framing and the prompts).
    assert 0.5 < mib * 2**20 / path.stat().st_size <= 1.0
