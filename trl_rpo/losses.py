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
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DIFFUSION_DPO_LOSS_TYPES",
    "REFERENCE_FREE_LOSS_TYPES",
    "combined_diffusion_dpo_loss",
    "diffusion_dpo_loss",
    "diffusion_nft_loss",
    "grpo_clipped_loss",
    "group_advantages",
    "mapo_loss",
    "mapo_score",
    "nft_optimality_probability",
    "pooled_mean_loss",
    "stepwise_dpo_loss",
]

DIFFUSION_DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "sft", "mapo")
# Loss types computed from the policy's errors alone: no reference pass, no reference weights.
REFERENCE_FREE_LOSS_TYPES = ("sft", "mapo")


def diffusion_dpo_loss(
    policy_chosen_err: torch.Tensor,
    policy_rejected_err: torch.Tensor,
    ref_chosen_err: torch.Tensor | None,
    ref_rejected_err: torch.Tensor | None,
    beta: float = 5000.0,
    loss_type: str = "sigmoid",
    mapo_snr_value: float = 0.5,
    num_train_timesteps: int = 1000,
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
    * ``"mapo"`` — MaPO (Hong et al., 2024), reference-free: see :func:`mapo_loss`; here `beta` is MaPO's
      :math:`\beta` (0.1 in its paper, not Diffusion-DPO's 5000) and the reference errors are ignored.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each of shape ``[B]``. The rewards are detached
        and are ``None`` when no reference errors are given (``"sft"`` only). For ``"mapo"`` they are its
        margin scores :math:`T\,s(e^\theta)` (higher for the lower error).
    """
    if loss_type not in DIFFUSION_DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {DIFFUSION_DPO_LOSS_TYPES}")
    if loss_type == "mapo":
        return mapo_loss(policy_chosen_err, policy_rejected_err, beta, mapo_snr_value, num_train_timesteps)
    has_ref = ref_chosen_err is not None and ref_rejected_err is not None
    if not has_ref and loss_type != "sft":
        raise ValueError(
            f"loss_type={loss_type!r} needs the reference errors; only {REFERENCE_FREE_LOSS_TYPES} work without them"
        )

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


def combined_diffusion_dpo_loss(
    policy_chosen_err: torch.Tensor,
    policy_rejected_err: torch.Tensor,
    ref_chosen_err: torch.Tensor | None,
    ref_rejected_err: torch.Tensor | None,
    loss_types: str | Sequence[str] = ("sigmoid",),
    loss_weights: Sequence[float] | None = None,
    beta: float = 5000.0,
    mapo_beta: float = 0.1,
    mapo_snr_value: float = 0.5,
    num_train_timesteps: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    r"""A weighted sum of :func:`diffusion_dpo_loss` terms, :math:`\mathcal L = \sum_k w_k \mathcal L_k`.

    TRL's `DPOTrainer` combines a list of `loss_type` values with `loss_weights` the same way (default weights
    1.0), e.g. ``["sigmoid", "sft"]``: Diffusion-DPO plus the denoising loss on the chosen image, the diffusion
    form of DPO with an NLL term on the chosen response (Pang et al., 2024, arXiv 2404.19733; TRL's `rpo_alpha`).
    `"mapo"` terms use `mapo_beta`, the others `beta`. The rewards returned are those of the first term that has
    any (None when no term does, e.g. ``["sft"]``).
    """
    types = [loss_types] if isinstance(loss_types, str) else list(loss_types)
    if not types:
        raise ValueError("loss_types is empty; give at least one of " + ", ".join(DIFFUSION_DPO_LOSS_TYPES))
    weights = [1.0] * len(types) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(types):
        raise ValueError(f"got {len(weights)} loss_weights for {len(types)} loss types {types}")
    total: torch.Tensor | None = None
    rewards: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
    for loss_type, weight in zip(types, weights):
        losses, chosen_rewards, rejected_rewards = diffusion_dpo_loss(
            policy_chosen_err, policy_rejected_err, ref_chosen_err, ref_rejected_err,
            mapo_beta if loss_type == "mapo" else beta, loss_type, mapo_snr_value, num_train_timesteps,
        )  # fmt: skip
        total = weight * losses if total is None else total + weight * losses
        if rewards[0] is None:
            rewards = (chosen_rewards, rejected_rewards)
    return total, *rewards


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


def mapo_score(err: torch.Tensor, snr_value: float = 0.5) -> torch.Tensor:
    r"""MaPO's log-odds surrogate of a denoising error, :math:`s(e) = \gamma e / (\exp(\gamma e) - 1)`.

    MaPO (Hong et al., "Margin-aware Preference Optimization for Aligning Diffusion Models without Reference",
    arXiv 2406.06424; `mapo-t2i/mapo` `train.py`, `--snr_value` :math:`\gamma = 0.5`) reads the per-sample
    MSE as a stand-in for a negative log-likelihood and maps it to a score that falls from 1 (at :math:`e = 0`)
    towards 0 as the error grows. Computed with `expm1` and its limit 1 at :math:`e \to 0`, in float32.
    """
    x = snr_value * err.float()
    small = x.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 - 0.5 * x, safe / torch.expm1(safe))


def mapo_loss(
    policy_chosen_err: torch.Tensor,
    policy_rejected_err: torch.Tensor,
    beta: float = 0.1,
    snr_value: float = 0.5,
    num_train_timesteps: int = 1000,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-pair MaPO losses (reference-free) and margin scores.

    With :math:`s` from :func:`mapo_score` and :math:`T` the number of training timesteps (MaPO's `train.py`):

    .. math::
        \mathcal L = e^\theta_w - \beta \log\sigma\big(T\,(s(e^\theta_w) - s(e^\theta_l))\big)

    The first term is the plain denoising loss on the preferred image (its SFT term); the second widens the
    margin between the preferred and the rejected image's likelihood surrogates. No reference model appears:
    no reference forward pass and no reference weights. The batch mean of these per-pair losses is MaPO's
    `model_losses_w.mean() - beta_mapo * ratio.mean()`. Defaults are MaPO's (`beta_mapo` 0.1, `snr_value` 0.5).

    Returns:
        ``(losses, chosen_scores, rejected_scores)``, each ``[B]``; the scores :math:`T\,s(e)` are detached.
    """
    if beta < 0:
        raise ValueError(f"MaPO beta must be >= 0, got {beta}")
    chosen = num_train_timesteps * mapo_score(policy_chosen_err, snr_value)
    rejected = num_train_timesteps * mapo_score(policy_rejected_err, snr_value)
    losses = policy_chosen_err.float() - beta * F.logsigmoid(chosen - rejected)
    return losses, chosen.detach(), rejected.detach()


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4, batch_std: float | None = None
) -> torch.Tensor:
    r"""GRPO advantages: each reward minus its group's mean, optionally divided by a standard deviation.

    `rewards` holds consecutive groups of `group_size` samples of one prompt (`[N]`, N a multiple of the size).
    With :math:`\mu_g, \sigma_g` the mean and (unbiased) standard deviation of group :math:`g`
    (Shao et al., 2024, DeepSeekMath Eq. 3; TRL `GRPOTrainer`; Flow-GRPO, arXiv 2505.05470, Eq. 4):

    .. math::
        A_i = \frac{r_i - \mu_{g(i)}}{\sigma + \epsilon}, \qquad
        \sigma = \sigma_{g(i)}\ (\text{"group"}),\ \sigma_{\text{batch}}\ (\text{"batch"}),\ 1\ (\text{"none"})

    A group whose rewards are all equal gets zero advantages (nothing to learn from it), as in TRL. With several
    processes, "batch" means the whole batch: pass its standard deviation as `batch_std` (the rewards here are one
    process's share); without it the standard deviation of `rewards` is used.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.float().reshape(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        std = std.expand_as(grouped).reshape(-1)
    else:
        if batch_std is not None:
            std = torch.as_tensor(float(batch_std), device=rewards.device)
        else:
            std = rewards.float().std() if rewards.numel() > 1 else rewards.new_zeros(())
    return centred / (std + eps)


def grpo_clipped_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 1e-4,
    epsilon_high: float | None = None,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-step GRPO / PPO loss for denoising steps, with an optional KL penalty to the reference.

    For a step with log-probability :math:`\log\pi_\theta(x_{t-1}\mid x_t)` under the policy, the same under
    the policy that sampled it (`old_log_prob`) and the advantage :math:`A` of its trajectory's image:

    .. math::
        \rho = \exp(\log\pi_\theta - \log\pi_{old}), \qquad
        \mathcal L = -\min\big(\rho A,\ \operatorname{clip}(\rho, 1-\epsilon_{low}, 1+\epsilon_{high}) A\big)
        + \beta\,\mathrm{KL}

    (PPO, Schulman et al., 2017; GRPO, Shao et al., 2024; DAPO's decoupled :math:`\epsilon_{high}`, Yu et al., 2025;
    DDPO / Flow-GRPO apply it per denoising step.) The log-probabilities here are *means* over the latent dimensions
    (:func:`~trl_rpo.diffusion.gaussian_log_prob`, as in DDPO and Flow-GRPO), so one optimizer step moves a ratio by
    about 1e-4, not 0.1: clip ranges of that order (DDPO's and Flow-GRPO's `clip_range=1e-4`) are the ones that
    ever clip. `kl` is a per-step KL to the reference computed by the caller, e.g.
    :func:`~trl_rpo.diffusion.gaussian_kl` (Flow-GRPO's analytic form, on the same per-dimension scale), added with
    weight :math:`\beta`. On the first iteration of a rollout :math:`\log\pi_{old} = \log\pi_\theta` (detached),
    so :math:`\rho = 1` exactly.

    Returns:
        ``(losses, low_clipped, high_clipped)``, each shaped like `log_prob`: per-step losses and TRL's clip
        indicators, :math:`\rho < 1-\epsilon_{low}` with :math:`A < 0` and :math:`\rho > 1+\epsilon_{high}` with
        :math:`A > 0` (the steps whose gradient the clip removed; `clip_ratio/low_mean`, `clip_ratio/high_mean`).
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(log_prob - old_log_prob)
    clipped_ratio = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
    losses = -torch.min(ratio * advantages, clipped_ratio * advantages)
    low_clipped = ((ratio < 1.0 - epsilon) & (advantages < 0)).float()
    high_clipped = ((ratio > 1.0 + epsilon_high) & (advantages > 0)).float()
    if kl is not None and beta != 0.0:
        losses = losses + beta * kl
    return losses, low_clipped.detach(), high_clipped.detach()


def nft_optimality_probability(advantages: torch.Tensor, adv_clip_max: float = 5.0) -> torch.Tensor:
    r"""DiffusionNFT's optimality probability of each image from its (group-normalised) advantage.

    .. math:: r = \operatorname{clip}\Big(\tfrac12 + \tfrac12\,\frac{\operatorname{clip}(A, -c, c)}{c},\ 0,\ 1\Big)

    with :math:`c` = `adv_clip_max` (Zheng et al., 2025, arXiv 2509.16117; NVlabs/DiffusionNFT `train_nft_sd3.py`,
    `adv_clip_max` 5): an average image gets 1/2, the best ones tend to 1 and the worst to 0.
    """
    if adv_clip_max <= 0:
        raise ValueError(f"adv_clip_max must be > 0, got {adv_clip_max}")
    clipped = advantages.float().clamp(-adv_clip_max, adv_clip_max)
    return (clipped / adv_clip_max / 2.0 + 0.5).clamp(0.0, 1.0)


def diffusion_nft_loss(
    policy_x0: torch.Tensor,
    old_x0: torch.Tensor,
    x0: torch.Tensor,
    advantages: torch.Tensor,
    beta: float = 1.0,
    adv_clip_max: float = 5.0,
    adaptive_weighting: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-sample DiffusionNFT loss (Zheng et al., "DiffusionNFT: Online Diffusion Reinforcement with Forward
    Process", ICLR 2026, arXiv 2509.16117, Eq. 7-8 and NVlabs/DiffusionNFT `train_nft_sd3.py`).

    A generated clean sample :math:`x_0` is noised by the forward process to :math:`x_t`; the policy's and the
    sampling ("old") policy's predictions there define an implicit positive and an implicit negative policy,

    .. math::
        v^+ = \beta v_\theta + (1-\beta)\,\mathrm{sg}(v_{old}), \qquad
        v^- = (1+\beta)\,\mathrm{sg}(v_{old}) - \beta v_\theta

    and the loss regresses the positive one on good samples and the negative one on bad ones, weighted by the
    optimality probability :math:`r` of :func:`nft_optimality_probability`:

    .. math::
        \mathcal L = \frac{c}{\beta}\Big(r\,\frac{\lVert \hat x_0^+ - x_0\rVert^2}{w^+}
        + (1-r)\,\frac{\lVert \hat x_0^- - x_0\rVert^2}{w^-}\Big)

    with the norms as means over dimensions and, with `adaptive_weighting`, :math:`w^\pm = \mathrm{sg}(\text{mean}
    |\hat x_0^\pm - x_0|)` clamped at 1e-5 (NFT's adaptive weighting; 1 without it); :math:`c` = `adv_clip_max`
    is NFT's constant loss scale. Any parameterisation whose clean-sample prediction is affine in the model output
    (flow velocity :math:`\hat x_0 = x_t - \sigma v`, epsilon, v-prediction) gives
    :math:`\hat x_0^\pm` as the same combination of the two predictions' :math:`\hat x_0`, so the function takes
    those: `policy_x0` (with gradients) and `old_x0` (detached here). No likelihood, no sampler step: any solver can
    produce :math:`x_0`. At :math:`v_\theta = v_{old}` the gradient is :math:`(2r - 1)` times the denoising
    loss's (for :math:`\beta = 1` without adaptive weighting): reward-weighted regression that also pushes away
    from bad samples.

    Returns:
        ``(losses, positive_losses, negative_losses)``, each ``[B]`` (the last two detached, without the scale).
    """
    if beta <= 0:
        raise ValueError(f"DiffusionNFT beta must be > 0, got {beta}")
    old_x0 = old_x0.detach().float()
    policy_x0, x0 = policy_x0.float(), x0.float()
    r = nft_optimality_probability(advantages, adv_clip_max).to(policy_x0.device)
    dims = tuple(range(1, x0.ndim))
    positive = beta * policy_x0 + (1.0 - beta) * old_x0
    negative = (1.0 + beta) * old_x0 - beta * policy_x0

    def weighted(prediction: torch.Tensor) -> torch.Tensor:
        error = prediction - x0
        loss = (error**2).mean(dim=dims)
        if adaptive_weighting:
            loss = loss / error.detach().abs().mean(dim=dims).clamp(min=1e-5)
        return loss

    positive_loss, negative_loss = weighted(positive), weighted(negative)
    losses = adv_clip_max * (r * positive_loss + (1.0 - r) * negative_loss) / beta
    return losses, positive_loss.detach(), negative_loss.detach()


def pooled_mean_loss(losses: torch.Tensor, global_count: int | float, num_processes: int) -> torch.Tensor:
    r"""This process's share of the mean of a loss over the items of all processes, for gradient averaging.

    Process :math:`p` holds :math:`n_p` items with losses :math:`\ell_{p,i}` (any number, none included);
    :math:`N = \sum_p n_p` over the :math:`P` processes (all-reduced by the caller). Each process returns

    .. math::
        L_p = \frac{P}{N} \sum_{i=1}^{n_p} \ell_{p,i}, \qquad\text{so that}\qquad
        \frac{1}{P} \sum_p L_p = \frac{1}{N} \sum_{p,i} \ell_{p,i}

    DDP (and DeepSpeed) average gradients over processes, so the update is that of the mean over all items of
    the global batch: what one process holding the whole batch would compute with ``losses.mean()``. The plain
    local mean would instead give the mean of per-process means, in which a process with one item weighs as much
    as one with thirty. TRL's `GRPOTrainer` normalises its `"dapo"` loss the same way (``num_items_in_batch``
    all-gathered, divided by the number of processes). With one process this equals ``losses.mean()``. When no
    process holds an item (:math:`N = 0`) the result is ``0 * losses.sum()``: zero, but still connected to the
    graph, so a backward pass runs. A process with no item of its own (that must still join the collectives of
    the backward pass) passes placeholder losses multiplied by zero.
    """
    if global_count <= 0:
        return losses.sum() * 0.0
    return losses.sum() * (num_processes / global_count)
