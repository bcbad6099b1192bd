"""Small builders shared by the tests: configs, trainers, one fake Hub, one test reward."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def brightness(images, prompts, **kwargs):
    """The test reward: mean pixel value in [0, 1] (known exactly for flat images, cheap for generated ones)."""
    return [float(np.asarray(im, dtype=np.float32).mean() / 255.0) for im in images]


class FakeHubApi:
    """Stands in for `huggingface_hub.HfApi` in `push_to_hub` tests: records every call and uploaded file.

    `Trainer.push_to_hub` uploads folders (`uploads`); the dataset builder uploads its card with `upload_file`
    (`calls`). `instances` lists every API object made, so a test can find the one the code under test built.
    """

    instances: list[FakeHubApi] = []

    def __init__(self, token=None):
        self.token = token
        self.uploads: list[tuple[str, dict[str, bytes]]] = []
        self.calls: list[tuple] = []
        FakeHubApi.instances.append(self)

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", repo_id, {"private": private, "exist_ok": exist_ok, **kwargs}))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_file(self, path_or_fileobj, path_in_repo, repo_id, **kwargs):
        self.calls.append(("upload_file", repo_id, path_in_repo, path_or_fileobj.decode("utf-8"), kwargs))

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


def recorded_and_recomputed_policy_error(trainer, batch, noised_and_target) -> tuple[float, float, float]:
    """(`mse/policy_chosen` that `compute_loss` records for `batch`, that error recomputed here, the error against
    the noise instead), at latents, noise and timesteps drawn once and then held fixed.

    `noised_and_target(latents, noise, timesteps) -> (noisy, target)` is the test's own statement of the forward
    process and the target: a trainer that noised other latents or regressed another target records another value.
    The last value shows the check can tell the target from the noise (the epsilon target).
    """
    import torch

    latents, conditioning = trainer.encode_batch(batch)
    noise, timesteps = trainer.sample_noise_and_timesteps(latents)
    trainer.encode_batch = lambda inputs: (latents, conditioning)
    trainer.sample_noise_and_timesteps = lambda latents: (noise, timesteps)
    trainer.compute_loss(trainer.model, batch)
    noisy, target = noised_and_target(latents, noise, timesteps)
    with torch.no_grad():
        chosen = trainer.unet_forward(trainer.model, noisy, timesteps, conditioning).float()[: len(latents) // 2]
    half = len(latents) // 2
    return (
        trainer._metrics["train"]["mse/policy_chosen"][-1],
        float(((chosen - target[:half]) ** 2).mean()),
        float(((chosen - noise[:half]) ** 2).mean()),
    )
