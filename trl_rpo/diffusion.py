"""Pure diffusion math shared by the trainers and the data builder.

Small functions with no model or trainer state, in the spirit of `diffusers.training_utils`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "stable_diffusion_ddim_scheduler",
    "sample_pair_noise_and_timesteps",
    "TIMESTEP_BIAS_STRATEGIES",
    "timestep_bias_weights",
    "diffusion_target",
    "per_sample_mse",
    "masked_per_sample_mse",
    "latent_mask_weight",
    "predicted_original_sample",
    "ddim_previous_timestep",
    "ddim_step_variance",
    "ddim_step_with_logprob",
    "gaussian_log_prob",
    "gaussian_kl",
    "FLOW_WEIGHTING_SCHEMES",
    "sample_flow_sigmas",
    "sample_pair_flow_noise_and_timesteps",
    "flow_noisy_latents",
    "flow_velocity_target",
    "flow_predicted_original_sample",
    "flow_sde_step_with_logprob",
]


def sample_pair_noise_and_timesteps(
    latents: torch.Tensor,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
    timestep_weights: torch.Tensor | None = None,
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
        timestep_weights: optional `[T]` sampling weights of the timesteps (:func:`timestep_bias_weights`);
            `None` draws them uniformly.

    Returns:
        `(noise, timesteps)` of shapes `[2B, C, H, W]` and `[2B]`, each half a copy of the other.
    """
    if latents.shape[0] % 2:
        raise ValueError(f"a pair batch must have an even leading dimension, got shape {tuple(latents.shape)}")
    half = latents.shape[0] // 2
    device = generator.device if generator else "cpu"
    noise = torch.randn((half, *latents.shape[1:]), generator=generator, device=device)
    noise = noise.to(device=latents.device, dtype=latents.dtype)
    if timestep_weights is None:
        timesteps = torch.randint(0, num_train_timesteps, (half,), generator=generator, device=device)
    else:
        if timestep_weights.shape != (num_train_timesteps,):
            raise ValueError(
                f"timestep_weights must have shape ({num_train_timesteps},), got {tuple(timestep_weights.shape)}"
            )
        timesteps = torch.multinomial(timestep_weights.to(device), half, replacement=True, generator=generator)
    return noise.repeat(2, *([1] * (latents.ndim - 1))), timesteps.to(latents.device).repeat(2)


TIMESTEP_BIAS_STRATEGIES = ("none", "earlier", "later", "range")


def timestep_bias_weights(
    num_train_timesteps: int,
    strategy: str = "none",
    multiplier: float = 1.0,
    portion: float = 0.25,
    begin: int = 0,
    end: int | None = None,
) -> torch.Tensor:
    r"""Sampling probabilities of the DDPM training timesteps, with a bias towards some of them.

    The timestep bias of diffusers' SDXL fine-tuning script (`--timestep_bias_strategy`, `--timestep_bias_*`):
    every timestep starts with weight 1; the biased ones are multiplied by `multiplier`; the weights are then
    normalised, :math:`p(t) = w_t / \sum_s w_s`.

    * ``"none"``: no bias, :math:`t \sim \mathcal U\{0, \dots, T-1\}`;
    * ``"earlier"``: the first ``int(portion * T)`` timesteps (the least noisy ones: detail);
    * ``"later"``: the last ``int(portion * T)`` timesteps (the noisiest: composition and layout);
    * ``"range"``: timesteps ``begin <= t < end``.

    A `multiplier` above 1 favours the biased timesteps, below 1 disfavours them, and 0 never draws them.

    Returns:
        A float tensor of shape `[T]` that sums to 1.
    """
    if strategy not in TIMESTEP_BIAS_STRATEGIES:
        raise ValueError(f"timestep bias strategy must be one of {TIMESTEP_BIAS_STRATEGIES}, got {strategy!r}")
    if not (math.isfinite(multiplier) and multiplier >= 0):
        raise ValueError(f"timestep bias multiplier must be finite and >= 0, got {multiplier}")
    weights = torch.ones(num_train_timesteps, dtype=torch.float64)
    if strategy in ("earlier", "later"):
        if not 0.0 < portion <= 1.0:
            raise ValueError(f"timestep bias portion must be in (0, 1], got {portion}")
        count = int(portion * num_train_timesteps)
        biased = slice(0, count) if strategy == "earlier" else slice(num_train_timesteps - count, None)
        weights[biased] *= multiplier
    elif strategy == "range":
        end = num_train_timesteps if end is None else end
        if not 0 <= begin < end <= num_train_timesteps:
            raise ValueError(
                f"timestep bias range must satisfy 0 <= begin < end <= {num_train_timesteps}, got [{begin}, {end})"
            )
        weights[begin:end] *= multiplier
    if weights.sum() <= 0:
        raise ValueError(f"the timestep bias ({strategy}, multiplier {multiplier}) leaves no timestep to draw")
    return (weights / weights.sum()).float()


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


def masked_per_sample_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    r"""Weighted MSE per sample, :math:`\sum_{c,h,w} m_{hw} (\hat y - y)^2_{chw} / (C \sum_{hw} m_{hw})`.

    `weight` (`[B, 1, H, W]` or `[B, C, H, W]`, non-negative) says how much each latent position counts: the
    masked Diffusion-DPO loss for edit pairs (SimpleTuner's masked Flow-DPO does the same on velocity errors).
    A weight of ones gives exactly :func:`per_sample_mse`; a sample whose weights sum to zero gets uniform
    weights (its plain error) rather than a division by zero. Computed in float32.
    """
    err = F.mse_loss(prediction.float(), target.float(), reduction="none")
    weight = weight.float().expand_as(err)
    dims = tuple(range(1, err.ndim))
    total = weight.sum(dim=dims)
    empty = total <= 0
    if empty.any():
        weight = torch.where(empty.reshape(-1, *([1] * (err.ndim - 1))), torch.ones_like(weight), weight)
        total = weight.sum(dim=dims)
    return (weight * err).sum(dim=dims) / total


def latent_mask_weight(
    mask: torch.Tensor, latent_size: tuple[int, int], dilation: int = 1, weight_outside: float = 0.0
) -> torch.Tensor:
    r"""Per-position weights at latent resolution from pixel edit masks.

    `mask` is `[B, 1, H, W]` in [0, 1] (1 = the edit changed this pixel). A latent cell counts as edited when
    any pixel it covers is (max-pooling to `latent_size`), the edited region then grows by `dilation` latent
    cells in every direction (a :math:`(2d+1)^2` max filter: the denoiser's receptive field reaches past the
    edit's border), and

    .. math:: w = w_{out} + (1 - w_{out})\, \tilde m \quad\in [w_{out}, 1]

    so `weight_outside` 1 gives uniform weights (the plain loss) and 0 ignores everything outside the grown mask.

    Returns:
        `[B, 1, h, w]` float32 weights.
    """
    if not 0.0 <= weight_outside <= 1.0:
        raise ValueError(f"weight_outside must be in [0, 1], got {weight_outside}")
    if dilation < 0:
        raise ValueError(f"dilation must be >= 0 latent cells, got {dilation}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, H, W], got shape {tuple(mask.shape)}")
    m = F.adaptive_max_pool2d(mask.float(), latent_size)
    if dilation:
        m = F.max_pool2d(m, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    return weight_outside + (1.0 - weight_outside) * m.clamp(0.0, 1.0)


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample `[B]` (or scalar) tensor against `[B, C, H, W]`."""
    value = torch.as_tensor(value, device=like.device, dtype=torch.float32)
    return value.reshape(-1, *([1] * (like.ndim - 1))) if value.ndim else value


def predicted_original_sample(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The clean sample and the noise implied by a denoiser output at :math:`\bar\alpha_t`.

    * epsilon: :math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon) / \sqrt{\bar\alpha_t}`
    * v_prediction: :math:`\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v`,
      :math:`\hat\epsilon = \sqrt{\bar\alpha_t}\,\hat v + \sqrt{1-\bar\alpha_t}\,x_t`
    * sample: :math:`\hat x_0` is the output.

    Returns `(x0_hat, eps_hat)`, in float32.
    """
    a = _per_sample(alpha_prod_t, sample)
    x, out = sample.float(), model_output.float()
    if prediction_type == "epsilon":
        return (x - (1 - a).sqrt() * out) / a.sqrt(), out
    if prediction_type == "v_prediction":
        return a.sqrt() * x - (1 - a).sqrt() * out, a.sqrt() * out + (1 - a).sqrt() * x
    if prediction_type == "sample":
        return out, (x - a.sqrt() * out) / (1 - a).sqrt()
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddim_previous_timestep(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """The timestep DDIM steps to from `timesteps` (`t - T / num_inference_steps`; negative means "final")."""
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_inference_steps) before stepping")
    return timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def _ddim_alphas(scheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`(\bar\alpha_t, \bar\alpha_{t'})` per timestep; past the last step, the scheduler's final alpha."""
    prev_t = ddim_previous_timestep(scheduler, timesteps)
    alphas = scheduler.alphas_cumprod.to(timesteps.device)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=timesteps.device, dtype=alphas.dtype)
    return alphas[timesteps], torch.where(prev_t >= 0, alphas[prev_t.clamp(min=0)], final)


def ddim_step_variance(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    r"""DDIM's :math:`\sigma_t^2 = \frac{1-a'}{1-a}(1-\frac{a}{a'})` (at :math:`\eta = 1`) per timestep.

    Zero for the last step when the scheduler's final alpha is 1 (`set_alpha_to_one=True`, `DDIMScheduler`'s
    default when a config does not name it): that step is deterministic and has no log-probability.
    """
    timesteps = torch.as_tensor(timesteps).long().reshape(-1)
    a, a_prev = _ddim_alphas(scheduler, timesteps)
    return (1 - a_prev) / (1 - a) * (1 - a / a_prev)


def ddim_step_with_logprob(
    scheduler,
    model_output: torch.Tensor,
    timesteps: torch.Tensor,
    sample: torch.Tensor,
    eta: float = 1.0,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prediction_type: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One stochastic DDIM step (Song et al., 2021, Eq. 12) and the Gaussian log-probability of its result.

    With :math:`a = \bar\alpha_t`, :math:`a' = \bar\alpha_{t'}` for the previous timestep :math:`t'`:

    .. math::
        \sigma_t^2 = \frac{1-a'}{1-a}\Big(1-\frac{a}{a'}\Big), \qquad s = \eta\,\sigma_t \\
        \mu = \sqrt{a'}\,\hat x_0 + \sqrt{1-a'-s^2}\;\hat\epsilon, \qquad
        x_{t'} \sim \mathcal N(\mu, s^2 I) \\
        \log p(x_{t'} \mid x_t)
            = \frac{1}{D}\sum_{d}\Big[-\frac{(x_{t'}-\mu)_d^2}{2 s^2} - \log s - \tfrac12\log 2\pi\Big]

    which is exactly the mean and variance of `DDIMScheduler.step(..., eta=eta)` (tested), but for a *batch* of
    timesteps, and with the log-density that step-wise preference methods (DDPO, D3PO, SPO, TailorPO) need. The
    log-probability is averaged over the :math:`D` non-batch dimensions, as in DDPO's implementation, so it does
    not scale with resolution.

    Args:
        scheduler: a `DDIMScheduler` after `set_timesteps` (its `alphas_cumprod`, `final_alpha_cumprod`,
            `num_inference_steps` and `prediction_type` are used).
        model_output: the (guided) denoiser output at `(sample, timesteps)`.
        timesteps: `[B]` or a scalar.
        sample: :math:`x_t`, `[B, C, H, W]`.
        eta: stochasticity; must be > 0 for a density to exist.
        prev_sample: evaluate the log-probability of this :math:`x_{t'}` instead of drawing one.
        generator: for the draw when `prev_sample` is None.
        prediction_type: defaults to the scheduler's.

    Returns:
        `(prev_sample, log_prob [B], mean, std [B,1,1,1])`, computed in float32.
    """
    if eta <= 0:
        raise ValueError(f"eta must be > 0 for a stochastic step with a log-probability, got {eta}")
    if getattr(scheduler.config, "thresholding", False):
        raise ValueError("dynamic thresholding makes the step non-Gaussian; use a scheduler with thresholding=False")
    timesteps = torch.as_tensor(timesteps, device=sample.device).long().reshape(-1).expand(sample.shape[0])
    a, a_prev = _ddim_alphas(scheduler, timesteps)

    x0, eps = predicted_original_sample(model_output, sample, a, prediction_type or scheduler.config.prediction_type)
    if getattr(scheduler.config, "clip_sample", False):
        x0 = x0.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    variance = (1 - a_prev) / (1 - a) * (1 - a / a_prev)
    std = _per_sample(eta * variance.sqrt(), sample)
    a_prev = _per_sample(a_prev, sample)
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).clamp(min=0).sqrt() * eps

    if prev_sample is None:
        noise = torch.randn(
            sample.shape, generator=generator, device=generator.device if generator is not None else "cpu"
        ).to(sample.device)
        prev_sample = mean + std * noise
    log_prob = gaussian_log_prob(prev_sample.float(), mean, std)
    return prev_sample.to(sample.dtype), log_prob, mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    r"""Per-sample :math:`\frac1D\sum_d \log\mathcal N(x_d; \mu_d, s^2)`, averaged over non-batch dimensions."""
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_prob.mean(dim=tuple(range(1, x.ndim)))


def gaussian_kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    r"""Per-sample KL between two Gaussian steps of equal variance, averaged over non-batch dimensions.

    .. math:: \frac1D\,\mathrm{KL}\big(\mathcal N(\mu, s^2 I)\,\|\,\mathcal N(\mu_{ref}, s^2 I)\big)
        = \frac1D \sum_d \frac{(\mu_d - \mu_{ref,d})^2}{2 s^2}

    The exact KL of one sampler step between the policy and the reference (both use the same step variance),
    on the per-dimension scale of :func:`gaussian_log_prob`. Flow-GRPO (Liu et al., 2025, `train_sd3.py`) penalises
    this form; the k3 estimator applied to a *mean* log-ratio would instead be about :math:`D` times smaller.
    Computed in float32; differentiable in both means.
    """
    std = std.float()
    return (((mean.float() - ref_mean.float()) ** 2) / (2 * std**2)).mean(dim=tuple(range(1, mean.ndim)))


def stable_diffusion_ddim_scheduler(prediction_type: str = "epsilon"):
    """A `DDIMScheduler` with Stable Diffusion's noise schedule (scaled linear, betas 0.00085-0.012, 1000 steps).

    The schedule of the models built here (the tiny test pipelines, the shapes base model), so the trainers treat
    them like SD 1.5.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


# ---------------------------------------------------------------------------------------------------------------
# Rectified flow (SD3 / SD3.5, FLUX.1)
# ---------------------------------------------------------------------------------------------------------------

FLOW_WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform")


def sample_flow_sigmas(
    batch_size: int,
    weighting_scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Training-time positions :math:`u \in (0, 1)` from the SD3 paper's densities (Esser et al., 2024, Sec. 3.1).

    * ``"logit_normal"``: :math:`u = \mathrm{sigmoid}(n)`, :math:`n \sim \mathcal N(m, s^2)`;
    * ``"mode"``: :math:`u = 1 - v - c\,(\cos^2(\pi v / 2) - 1 + v)`, :math:`v \sim \mathcal U(0, 1)`;
    * ``"uniform"``: :math:`u \sim \mathcal U(0, 1)`.

    Drawn by diffusers' `training_utils.compute_density_for_timestep_sampling` (what its SD3 and FLUX training
    scripts use), on the CPU or the generator's device.
    """
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if weighting_scheme not in FLOW_WEIGHTING_SCHEMES:
        raise ValueError(f"weighting_scheme must be one of {FLOW_WEIGHTING_SCHEMES}, got {weighting_scheme!r}")
    return compute_density_for_timestep_sampling(
        weighting_scheme="none" if weighting_scheme == "uniform" else weighting_scheme,
        batch_size=batch_size,
        logit_mean=logit_mean,
        logit_std=logit_std,
        mode_scale=mode_scale,
        device=generator.device if generator is not None else "cpu",
        generator=generator,
    )


def sample_pair_flow_noise_and_timesteps(
    latents: torch.Tensor,
    scheduler,
    weighting_scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Noise, timesteps and sigmas for a stacked rectified-flow preference batch `[chosen; rejected]`.

    As in diffusers' SD3 / FLUX scripts, :math:`u` from :func:`sample_flow_sigmas` picks the index
    :math:`\lfloor u N \rfloor` into the training schedule of a `FlowMatchEulerDiscreteScheduler` (so SD3's
    `shift` applies), giving :math:`t` (in `[0, N]`) and :math:`\sigma = t / N`. As in Diffusion-DPO, both images
    of a pair share :math:`\epsilon` and :math:`\sigma` (Flow-DPO).

    Returns:
        `(noise [2B, ...], timesteps [2B], sigmas [2B])`, each half a copy of the other.
    """
    if latents.shape[0] % 2:
        raise ValueError(f"a pair batch must have an even leading dimension, got shape {tuple(latents.shape)}")
    half = latents.shape[0] // 2
    device = generator.device if generator is not None else "cpu"
    noise = torch.randn((half, *latents.shape[1:]), generator=generator, device=device)
    u = sample_flow_sigmas(half, weighting_scheme, logit_mean, logit_std, mode_scale, generator)
    num_train_timesteps = scheduler.config.num_train_timesteps
    indices = (u * num_train_timesteps).long().clamp(0, len(scheduler.timesteps) - 1).cpu()
    timesteps = scheduler.timesteps[indices].float()
    sigmas = scheduler.sigmas[indices].float()
    noise = noise.to(device=latents.device, dtype=latents.dtype).repeat(2, *([1] * (latents.ndim - 1)))
    return noise, timesteps.repeat(2).to(latents.device), sigmas.repeat(2).to(latents.device)


def flow_noisy_latents(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    r"""Rectified-flow interpolation :math:`x_\sigma = (1 - \sigma)\,x_0 + \sigma\,\epsilon`.

    (Liu et al., 2022; Esser et al., 2024, Eq. 1 with :math:`a_t = 1 - t`, :math:`b_t = t`.)
    """
    s = _per_sample(sigmas, latents).to(latents.dtype)
    return (1.0 - s) * latents + s * noise


def flow_velocity_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""The flow-matching regression target :math:`v = \epsilon - x_0` (:math:`= dx_\sigma / d\sigma`)."""
    return noise - latents


def flow_predicted_original_sample(velocity: torch.Tensor, sample: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    r""":math:`\hat x_0 = x_\sigma - \sigma\,\hat v`: the clean sample a velocity prediction implies (float32)."""
    return sample.float() - _per_sample(sigmas, sample) * velocity.float()


def flow_sde_step_with_logprob(
    velocity: torch.Tensor,
    sigmas: torch.Tensor,
    next_sigmas: torch.Tensor,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma_max: float = 0.999,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""One Euler-Maruyama step of the flow ODE turned SDE (Flow-GRPO, Liu et al., 2025, Eq. 8-9) and its log-prob.

    The probability-flow ODE :math:`dx = v\,d\sigma` and the SDE

    .. math::
        dx = \Big[v + \frac{g_\sigma^2}{2\sigma}\big(x + (1 - \sigma)\,v\big)\Big]\,d\sigma + g_\sigma\,dw,
        \qquad g_\sigma = a\sqrt{\sigma / (1 - \sigma)}

    share their marginals (the drift adds :math:`-\tfrac{g^2}{2}\nabla\log p_\sigma` with the score
    :math:`-(x + (1-\sigma) v)/\sigma` of rectified flow). A step from :math:`\sigma` to
    :math:`\sigma' < \sigma` (:math:`\Delta = \sigma' - \sigma < 0`) is Gaussian:

    .. math::
        \mu = x\Big(1 + \frac{g^2 \Delta}{2\sigma}\Big) + v\Big(1 + \frac{g^2 (1-\sigma)}{2\sigma}\Big)\Delta,
        \qquad x' \sim \mathcal N\big(\mu, g^2 |\Delta|\, I\big)

    with :math:`a` = `noise_level` (Flow-GRPO uses 0.7) and :math:`\sigma` clamped to `sigma_max` inside
    :math:`g` (the SDE's noise is infinite at :math:`\sigma = 1`). `noise_level=0` is the Euler ODE step, which has
    no density. The log-probability is averaged over non-batch dimensions, like :func:`ddim_step_with_logprob`.

    Args:
        velocity: the (guided) velocity prediction at `(sample, sigmas)`.
        sigmas / next_sigmas: `[B]` or scalars, the current and next noise levels (`next_sigmas < sigmas`).
        sample: :math:`x_\sigma`.
        prev_sample: evaluate the log-probability of this :math:`x_{\sigma'}` instead of drawing one.

    Returns:
        `(prev_sample, log_prob [B], mean, std [B,1,...])`, computed in float32.
    """
    if noise_level <= 0:
        raise ValueError(f"noise_level must be > 0 for a stochastic step with a log-probability, got {noise_level}")
    batch = sample.shape[0]
    sigma = torch.as_tensor(sigmas, device=sample.device, dtype=torch.float32).reshape(-1).expand(batch)
    sigma_next = torch.as_tensor(next_sigmas, device=sample.device, dtype=torch.float32).reshape(-1).expand(batch)
    if bool((sigma_next >= sigma).any()):
        raise ValueError("next_sigmas must be smaller than sigmas: the sampler runs from noise (1) to data (0)")
    delta = _per_sample(sigma_next - sigma, sample)
    s = _per_sample(sigma, sample)
    g = noise_level * (s / (1 - s.clamp(max=sigma_max))).sqrt()
    x, v = sample.float(), velocity.float()
    mean = x * (1 + g**2 * delta / (2 * s)) + v * (1 + g**2 * (1 - s) / (2 * s)) * delta
    std = g * (-delta).sqrt()
    if prev_sample is None:
        noise = torch.randn(
            sample.shape, generator=generator, device=generator.device if generator is not None else "cpu"
        ).to(sample.device)
        prev_sample = mean + std * noise
    log_prob = gaussian_log_prob(prev_sample.float(), mean, std.expand_as(mean))
    return prev_sample.to(sample.dtype), log_prob, mean, std
