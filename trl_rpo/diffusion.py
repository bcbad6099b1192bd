"""Pure diffusion math shared by the trainers and the data builder.

Small functions with no model or trainer state, in the spirit of `diffusers.training_utils`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "sample_pair_noise_and_timesteps",
    "diffusion_target",
    "per_sample_mse",
]


def sample_pair_noise_and_timesteps(
    latents: torch.Tensor,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Noise and timesteps for a stacked preference batch `[chosen; rejected]`.

    Diffusion-DPO (Wallace et al., 2024, Eq. 14 and `train.py`) compares the two images of a pair on the
    *same* noisy trajectory: both halves get the same noise :math:`\epsilon \sim \mathcal N(0, I)` and
    the same timestep :math:`t \sim \mathcal U\{0, \dots, T-1\}`. Drawing them independently would add
    variance that does not depend on the preference.

    Args:
        latents: `[2B, C, H, W]`, chosen latents first, rejected second.
        num_train_timesteps: `T` of the noise scheduler.
        generator: optional generator for reproducible draws.

    Returns:
        `(noise, timesteps)` of shapes `[2B, C, H, W]` and `[2B]`, each half a copy of the other.
    """
    if latents.shape[0] % 2:
        raise ValueError(f"a pair batch must have an even leading dimension, got shape {tuple(latents.shape)}")
    half = latents.shape[0] // 2
    noise = torch.randn(
        (half, *latents.shape[1:]), generator=generator, device=generator.device if generator else "cpu"
    ).to(device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(
        0, num_train_timesteps, (half,), generator=generator, device=generator.device if generator else "cpu"
    ).to(latents.device)
    return noise.repeat(2, *([1] * (latents.ndim - 1))), timesteps.repeat(2)


def diffusion_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    r"""The regression target of the denoiser for a given parameterisation.

    * ``"epsilon"``: :math:`\epsilon` (Ho et al., 2020).
    * ``"v_prediction"``: :math:`v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0`
      (Salimans & Ho, 2022), computed by the scheduler's own `get_velocity`.
    * ``"sample"``: :math:`x_0`.
    """
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "sample":
        return latents
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected 'epsilon', 'v_prediction' or 'sample'")


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error per sample, :math:`\lVert \hat y - y \rVert^2 / (C H W)`, computed in float32.

    This is the per-example denoising error that Diffusion-DPO's loss compares (its `model_losses`).
    """
    err = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return err.mean(dim=tuple(range(1, err.ndim)))
