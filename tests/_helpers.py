"""Small builders shared by the trainer tests."""

from __future__ import annotations

from pathlib import Path

from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_rpo.testing import tiny_lora_config, tiny_preference_dataset, tiny_sd_pipeline, tiny_sdxl_pipeline

# Fast, quiet, deterministic training arguments shared by every trainer test.
FAST_ARGS = dict(
    max_steps=2,
    per_device_train_batch_size=2,
    logging_steps=1,
    report_to=[],
    save_strategy="no",
    learning_rate=1e-3,
    disable_tqdm=True,
    seed=0,
)


def dpo_config(output_dir, **overrides) -> DiffusionDPOConfig:
    return DiffusionDPOConfig(output_dir=str(output_dir), **{**FAST_ARGS, **overrides})


class FakeHubApi:
    """Stands in for `huggingface_hub.HfApi` in `push_to_hub` tests: records each uploaded folder's files."""

    def __init__(self):
        self.uploads: list[tuple[str, dict[str, bytes]]] = []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False):
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = {
            p.relative_to(folder_path).as_posix(): p.read_bytes() for p in Path(folder_path).rglob("*") if p.is_file()
        }
        self.uploads.append((repo_id, files))


def fake_hub(monkeypatch) -> FakeHubApi:
    """Route `Trainer.push_to_hub` to a `FakeHubApi` and return it."""
    import transformers.trainer as hf_trainer

    api = FakeHubApi()
    monkeypatch.setattr(hf_trainer, "hf_api", lambda *a, **k: api)
    return api


def make_trainer(output_dir, sdxl=False, lora=True, pipe=None, dataset=None, prediction_type="epsilon", **overrides):
    if pipe is None:
        pipe = (tiny_sdxl_pipeline if sdxl else tiny_sd_pipeline)(prediction_type=prediction_type)
    return DiffusionDPOTrainer(
        model=pipe,
        args=dpo_config(output_dir, **overrides),
        train_dataset=dataset if dataset is not None else tiny_preference_dataset(8),
        peft_config=tiny_lora_config() if lora else None,
    )


def wide_preference_pairs(rows: int = 6):
    """Pairs of 64x40 images: at resolution 32 a random crop has room to move (its offset shows in time_ids)."""
    return tiny_preference_dataset(rows).map(lambda row: {k: row[k].resize((64, 40)) for k in ("chosen", "rejected")})
