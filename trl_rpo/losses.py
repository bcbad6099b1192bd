r"""Preference losses for diffusion models, as pure functions of per-sample denoising errors.

Notation (Wallace et al., "Diffusion Model Alignment Using Direct Preference Optimization", CVPR 2024):
for a pair (chosen :math:`x^w`, rejected :math:`x^l`) noised with the same :math:`\epsilon` and
:math:`t`, let :math:`e^{\theta}_w = \lVert \epsilon_\theta(x^w_t, t, c) - \epsilon \rVert^2` be the
per-sample mean squared error of the policy, :math:`e^{ref}_w` the reference model's, likewise for
:math:`l`. The implicit rewards are

.. math::
    r_w = -\tfrac{\beta}{2} (e^{\theta}_w - e^{ref}_w), \qquad r_l = -\tfrac{\beta}{2} (e^{\theta}_l - e^{ref}_l)

and every loss below is a function of the margin :math:`h = r_w - r_l`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["DIFFUSION_DPO_LOSS_TYPES", "diffusion_dpo_loss", "stepwise_dpo_loss"]

DIFFUSION_DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "sft")


def diffusion_dpo_loss(
    policy_chosen_err: torch.Tensor,
    policy_rejected_err: torch.Tensor,
    ref_chosen_err: torch.Tensor | None,
    ref_rejected_err: torch.Tensor | None,
    beta: float = 5000.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    r"""Per-pair Diffusion-DPO losses and implicit rewards.

    Each ``*_err`` is the per-sample MSE of the noise (or v) prediction, averaged over all non-batch
    dimensions (shape ``[B]``). With :math:`h = r_w - r_l` as in the module docstring:

    * ``"sigmoid"`` — Diffusion-DPO (Wallace et al., 2024, Eq. 14):
      :math:`\mathcal L = -\log\sigma(h)`. With :math:`\beta = 5000` in this convention it equals the
      reference implementation (`-0.5 * beta * ...` inside the log-sigmoid) and the diffusers script's
      `beta_dpo = 2500` without the 1/2.
    * ``"hinge"`` — SLiC-HF hinge (Zhao et al., 2023), as in the diffusers DPO scripts:
      :math:`\mathcal L = \max(0, 1 - h)`. Stops pushing a pair once its margin exceeds 1.
    * ``"ipo"`` — IPO (Azar et al., 2023) regresses the log-ratio margin to :math:`1/(2\tau)` instead of
      maximising it. With :math:`\tau = \beta` and the margin in Diffusion-DPO's
      :math:`\beta`-scaled units this is :math:`\mathcal L = (h - \tfrac12)^2`, i.e. TRL's
      `(logits - 1/(2*beta))**2` multiplied by :math:`\beta^2` so its gradients have the scale of the
      sigmoid loss's. Bounded margins make it less prone to over-optimisation.
    * ``"sft"`` — the supervised baseline of the Diffusion-DPO paper: the plain denoising loss on the
      preferred image, :math:`\mathcal L = e^\theta_w`. It ignores the rejected image and the
      reference (both may be ``None``).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each of shape ``[B]``. The rewards are detached
        and are ``None`` when no reference errors are given (``"sft"`` only).
    """
    if loss_type not in DIFFUSION_DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {DIFFUSION_DPO_LOSS_TYPES}")
    has_ref = ref_chosen_err is not None and ref_rejected_err is not None
    if not has_ref and loss_type != "sft":
        raise ValueError(f"loss_type={loss_type!r} needs the reference errors; only 'sft' works without them")

    chosen_rewards = rejected_rewards = None
    if has_ref:
        chosen_rewards = -0.5 * beta * (policy_chosen_err - ref_chosen_err)
        rejected_rewards = -0.5 * beta * (policy_rejected_err - ref_rejected_err)

    if loss_type == "sft":
        losses = policy_chosen_err
    else:
        margin = chosen_rewards - rejected_rewards
        if loss_type == "sigmoid":
            losses = -F.logsigmoid(margin)
        elif loss_type == "hinge":
            losses = torch.relu(1.0 - margin)
        else:  # ipo
            losses = (margin - 0.5) ** 2

    if has_ref:
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return losses, chosen_rewards, rejected_rewards


def stepwise_dpo_loss(
    policy_chosen_logp: torch.Tensor,
    policy_rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float = 10.0,
    clip_range: float | None = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""DPO on one denoising step of a preference pair (SPO / D3PO form, used by TailorPO).

    For a chosen and a rejected next sample :math:`x^w_{t-1}, x^l_{t-1}` (for TailorPO, drawn from the same
    parent :math:`x_t`), with per-step log-probabilities from :func:`trl_rpo.diffusion.ddim_step_with_logprob`:

    .. math::
        \log r_w = \operatorname{clip}\big(\log\pi_\theta(x^w_{t-1}\mid x_t) - \log\pi_{ref}(x^w_{t-1}\mid x_t),
        \log(1-\epsilon), \log(1+\epsilon)\big) \\
        \mathcal L = -\log\sigma\big(\beta\,(\log r_w - \log r_l)\big)

    The clipped ratio is SPO's (Liang et al., 2024, arXiv 2406.04314; D3PO clips the same way): once a step's
    probability ratio leaves :math:`[1-\epsilon, 1+\epsilon]` it stops receiving gradient, a trust region that
    keeps the per-step policy close to the reference. TailorPO's paper does not state its exact form (see
    docs/tailorpo_trainer.md); this default follows SPO, with :math:`\beta = 10`, :math:`\epsilon = 0.1`.
    `clip_range=None` disables clipping.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)`` with rewards :math:`\beta \log r` (detached).
    """
    chosen_ratio = policy_chosen_logp - ref_chosen_logp
    rejected_ratio = policy_rejected_logp - ref_rejected_logp
    if clip_range is not None:
        if not 0 < clip_range < 1:
            raise ValueError(f"clip_range must be in (0, 1), got {clip_range}")
        low, high = math.log(1 - clip_range), math.log(1 + clip_range)
        chosen_ratio = chosen_ratio.clamp(low, high)
        rejected_ratio = rejected_ratio.clamp(low, high)
    chosen_rewards, rejected_rewards = beta * chosen_ratio, beta * rejected_ratio
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
