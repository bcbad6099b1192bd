"""TailorPO: online step-wise preference optimization with pairs drawn from the same noisy parent."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import torch

from ..diffusion import ddim_step_variance, gaussian_kl
from ..losses import pooled_mean_loss, stepwise_dpo_loss
from ..pairing import rank_pairs, select_timestep_indices
from ..pipelines import tensor_to_pil
from ..rewards import reward_name
from .model_card import TAILORPO_CITATION
from .online import OnlineDiffusionTrainer
from .tailorpo_config import TailorPOConfig

logger = logging.getLogger(__name__)

__all__ = ["StepPairs", "TailorPOTrainer"]


# The per-pair tensors of StepPairs, in order; sample_pairs collects rows under these names.
STEP_PAIR_FIELDS = ("parent_chosen", "parent_rejected", "chosen", "rejected", "timesteps", "prompt_index")


@dataclass
class StepPairs:
    """Preference pairs of denoising steps collected during sampling (all tensors on the training device).

    Pair `i` says: from `parent_chosen[i]` at `timesteps[i]`, the step to `chosen[i]` is preferred to the step
    from `parent_rejected[i]` to `rejected[i]`. TailorPO's pairs share their parent; the `"final"` baseline's
    do not. `prompt_index[i]` points into the sampled prompts, for the conditioning.
    """

    parent_chosen: torch.Tensor
    parent_rejected: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor
    timesteps: torch.Tensor
    prompt_index: torch.Tensor
    shared_parent: bool
    ties: int = 0
    candidates_ranked: int = 0
    final_images: list = field(default_factory=list)
    final_rewards: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def subset(self, index: torch.Tensor) -> StepPairs:
        pick = {k: getattr(self, k)[index] for k in ("parent_chosen", "parent_rejected", "chosen", "rejected")}
        return StepPairs(
            **pick,
            timesteps=self.timesteps[index],
            prompt_index=self.prompt_index[index],
            shared_parent=self.shared_parent,
            ties=self.ties,
            candidates_ranked=self.candidates_ranked,
            final_images=self.final_images,
            final_rewards=self.final_rewards,
        )


class TailorPOTrainer(OnlineDiffusionTrainer):
    r"""Online step-wise preference optimization (TailorPO, arXiv 2502.01667), with TailorPO-G guidance.

    Each training step samples trajectories for a batch of prompts with the current policy (stochastic DDIM,
    classifier-free guidance, no gradients). At the selected steps it draws `num_candidates` next samples from
    the *same* noisy parent, scores each by the reward of the clean image it predicts (decoded by the VAE), and
    keeps (best, worst) — or all ranked pairs — as preference pairs. The loss is DPO on the pair's step
    log-probability ratios against the reference (adapters disabled, or a frozen copy).
    `pairing="final"` gives the D3PO/SPO-style baseline for comparison.

    Args:
        model: a pipeline object, or a Hub id / local folder of one.
        reward_funcs: one or a list of `f(images, prompts, **kwargs) -> list[float]` callables or scorer objects
            from `trl_rpo.rewards` (TRL GRPOTrainer's convention). TailorPO-G needs at least one differentiable
            scorer (`score_tensor`).
        args: a [`TailorPOConfig`].
        train_dataset: prompts, in a `prompt` column.
        reward_weights: overrides `args.reward_weights`.
        ref_model / peft_config: as in [`DiffusionDPOTrainer`].

    Override points: `sample_pairs` (rollout and pairing), `step_rewards` (rewards of candidate clean images),
    `step_log_probs` (log-probabilities of pairs under a model) and `preference_loss`.
    """

    _tag_names = ["trl", "trl-rpo", "tailorpo", "diffusers", "text-to-image"]
    _name = "TailorPO"
    _paper = {
        "title": "Refining Alignment Framework for Diffusion Models with Intermediate-Step Preference Ranking",
        "id": "2502.01667",
        "citation": TAILORPO_CITATION,
    }
    _card_method_fields = (
        "beta",
        "clip_range",
        "num_inference_steps",
        "guidance_scale",
        "eta",
        "num_candidates",
        "pairing",
        "timestep_selection",
        "num_selected_timesteps",
        "tie_margin",
        "reward_guidance_scale",
    )
    config_class = TailorPOConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.reward_guidance_scale > 0 and not any(
            getattr(f, "differentiable", False) for f in self.reward_funcs
        ):
            raise ValueError(
                "reward_guidance_scale > 0 (TailorPO-G) needs a differentiable reward scorer with `score_tensor`, "
                f"e.g. trl_rpo.rewards.AestheticScorer; got {[reward_name(f) for f in self.reward_funcs]}"
            )

    # -- the sampler's step: stochastic DDIM (UNet models) or the flow SDE (SD3, FLUX) ----------------------------

    def _latent_channels(self) -> int:
        return self.model_adapter.latent_channels

    # -- rewards -------------------------------------------------------------------------------------------------

    def _reward_gradient(self, x: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, prompts: list[str]):
        """TailorPO-G: grad of the differentiable rewards of the predicted clean image w.r.t. the sample.

        The denoiser output is held fixed (no backpropagation through the UNet), so d x0_hat / d x is the constant
        1 / sqrt(alpha_prev) for epsilon prediction (sqrt(alpha_prev) for v prediction) and the gradient flows
        through the VAE decoder and the scorer only.
        """
        with torch.enable_grad():
            x = x.detach().float().requires_grad_(True)
            x0 = self.predict_x0(eps.detach(), x, timesteps)
            images = self.model_adapter.decode_latents(x0)
            total = 0.0
            for func, weight in zip(self.reward_funcs, self.reward_weights):
                if getattr(func, "differentiable", False):
                    total = total + weight * func.score_tensor(images, prompts).sum()
            (grad,) = torch.autograd.grad(total, x)
        return grad

    # -- sampling ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_pairs(
        self,
        prompts: list[str],
        conditioning: tuple[dict, dict] | None = None,
        generator: torch.Generator | None = None,
    ) -> StepPairs:
        """Roll out trajectories with the current policy and collect step-wise preference pairs.

        `conditioning` is `encode_conditioning(prompts)` when the caller already has it (the training step reuses
        it for the loss); it is computed here otherwise. Starting latents, step noise and the choice of steps and
        candidates come from `generator`, by default this process's own stream (`rank_generator`).
        """
        args, device = self.args, self.accelerator.device
        generator = generator if generator is not None else self.rank_generator
        scheduler = self.sample_scheduler
        self._set_sampling_timesteps(device)
        unet = self._unwrapped_unet()
        final_mode = args.pairing == "final"
        n_traj = 2 if final_mode else 1
        batch = len(prompts)
        cond, uncond = conditioning if conditioning is not None else self.encode_conditioning(prompts)
        prompt_index = torch.arange(batch, device=device).repeat(n_traj)
        cond_all = {k: v[prompt_index] for k, v in cond.items()}
        uncond_all = {k: v[prompt_index] for k, v in uncond.items()}

        latents = self.initial_latents(len(prompt_index), generator)
        selected = self._pairable_steps(
            select_timestep_indices(
                args.num_inference_steps,
                args.timestep_selection,
                args.num_selected_timesteps,
                (args.timestep_window_start, args.timestep_window_end),
                generator=generator,
            )
        )
        alphas = None if self.is_flow else scheduler.alphas_cumprod.to(device)
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in STEP_PAIR_FIELDS}
        transitions: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # "final": (t, parent, child)
        ties = ranked = 0
        eps = None
        for step, t in enumerate(scheduler.timesteps):
            timesteps = t.expand(len(latents)).to(device)
            if eps is None:
                eps = self.guided_prediction(unet, latents, timesteps, cond_all, uncond_all)
            if step in selected and not final_mode:
                latents, eps, found, step_ties, step_ranked = self._branch(
                    unet, scheduler, alphas, latents, eps, timesteps, prompts, cond_all, uncond_all, generator
                )
                ties += step_ties
                ranked += step_ranked
                for key, value in found.items():
                    rows[key].extend(value)
                continue
            child = self.step_with_logprob(eps, timesteps, latents, generator=generator)[0]
            if step in selected:
                transitions.append((timesteps, latents, child))
            latents, eps = child, None

        final_images = self.decode(latents)
        total, per_func = self.step_rewards(final_images, [prompts[i] for i in prompt_index.tolist()])
        if final_mode:
            ties, ranked = self._label_trajectories(total, batch, transitions, rows)
        return self._stack_pairs(
            rows, shared_parent=not final_mode, ties=ties, ranked=ranked, images=final_images, rewards=per_func
        )

    def _pairable_steps(self, indices: list[int]) -> set[int]:
        """The selected step indices whose DDIM step is random, so that a log-probability exists.

        With `set_alpha_to_one=True` (`DDIMScheduler`'s default when a config does not name it) the last step has
        zero variance: its log-probability would be NaN, and every candidate drawn there is the same.
        """
        scheduler = self.sample_scheduler
        if self.is_flow:  # every SDE step, the last (to sigma 0) included, is Gaussian with a positive variance
            return set(indices)
        variance = ddim_step_variance(scheduler, scheduler.timesteps[indices].cpu()) if indices else torch.zeros(0)
        kept = {i for i, v in zip(indices, variance.tolist()) if v > 0}
        if len(kept) < len(indices) and not getattr(self, "_warned_deterministic_step", False):
            self._warned_deterministic_step = True
            logger.warning(
                "the last DDIM step has zero variance with this scheduler (final alpha 1, set_alpha_to_one=True): "
                "it is deterministic and yields no preference pairs; set set_alpha_to_one=False to pair it"
            )
        return kept

    def _branch(self, unet, scheduler, alphas, latents, eps, timesteps, prompts, cond, uncond, generator=None):
        """Draw K children of each parent, rank them by step-wise reward, continue from a random one.

        Returns the next latents and their denoiser output, the pairs found, ties skipped and comparisons made.
        """
        args, k = self.args, self.args.num_candidates
        batch = latents.shape[0]
        children = torch.stack(
            [self.step_with_logprob(eps, timesteps, latents, generator=generator)[0] for _ in range(k)]
        )  # [K, B, ...], all from the same parent and the same mean
        flat = children.flatten(0, 1)
        prev_t = self.next_timesteps(timesteps)
        if not self._is_final(prev_t):
            rep_t = prev_t.repeat(k)
            rep_cond = {n: v.repeat(k, *[1] * (v.ndim - 1)) for n, v in cond.items()}
            rep_uncond = {n: v.repeat(k, *[1] * (v.ndim - 1)) for n, v in uncond.items()}
            child_eps = self.guided_prediction(unet, flat, rep_t, rep_cond, rep_uncond)
            if args.step_reward_estimate == "ode_lookahead":
                x0 = self.ode_completion(unet, flat, child_eps, rep_t, rep_cond, rep_uncond)
            else:
                x0 = self.predict_x0(child_eps, flat, rep_t)
        else:  # the last step lands on the clean sample itself
            rep_t, child_eps, x0 = prev_t.repeat(k), None, flat.float()
        images = self.decode(x0)
        self._ranking_only = True  # skip the rewards weighted 0 (see `step_rewards`)
        try:
            rewards, _ = self.step_rewards(images, list(prompts) * k)
        finally:
            self._ranking_only = False
        rewards = rewards.view(k, batch)

        found: dict[str, list[torch.Tensor]] = {key: [] for key in STEP_PAIR_FIELDS}
        ties = 0
        for b in range(batch):
            pairs, n_ties = rank_pairs(
                rewards[:, b], "all" if args.pairing == "all" else "best_worst", args.tie_margin
            )
            ties += n_ties
            for w, lose in pairs:
                chosen = children[w, b]
                if args.reward_guidance_scale > 0:
                    idx = w * batch + b
                    eps_w = child_eps[idx : idx + 1] if child_eps is not None else torch.zeros_like(chosen[None])
                    grad = self._reward_gradient(chosen[None], eps_w, rep_t[idx : idx + 1], [prompts[b]])
                    chosen = chosen + args.reward_guidance_scale * grad[0].to(chosen.dtype)
                found["parent_chosen"].append(latents[b])
                found["parent_rejected"].append(latents[b])
                found["chosen"].append(chosen)
                found["rejected"].append(children[lose, b])
                found["timesteps"].append(timesteps[b])
                found["prompt_index"].append(torch.tensor(b, device=latents.device))
        # Continue each trajectory from a random candidate (SPO), reusing its denoiser output for the next step.
        pick = torch.randint(k, (batch,), generator=generator).to(latents.device)
        rows = pick * batch + torch.arange(batch, device=latents.device)
        next_eps = child_eps[rows] if child_eps is not None else None
        considered = batch if args.pairing == "best_worst" else batch * k * (k - 1) // 2
        return flat[rows], next_eps, found, ties, considered

    @torch.no_grad()
    def ode_completion(self, unet, latents, output, timesteps, cond, uncond) -> torch.Tensor:
        """The clean sample a deterministic completion reaches (float32): the sampler's ODE step (`ode_step`) from
        `latents` at `timesteps`, whose denoiser `output` is given, through every later step of the schedule."""
        schedule = self.sample_scheduler.timesteps
        start = int((schedule == timesteps[0].to(schedule.device)).nonzero()[0])
        latents = self.ode_step(output, timesteps, latents)
        for t in schedule[start + 1 :]:
            step_t = t.expand(len(latents)).to(latents.device)
            latents = self.ode_step(self.guided_prediction(unet, latents, step_t, cond, uncond), step_t, latents)
        return latents.float()

    def _label_trajectories(self, final_rewards, batch, transitions, rows) -> tuple[int, int]:
        """`pairing="final"`: label every selected step of two trajectories by their final images' rewards."""
        ties = 0
        for b in range(batch):
            gap = float(final_rewards[b] - final_rewards[batch + b])
            if abs(gap) <= self.args.tie_margin:
                ties += 1
                continue
            win, lose = (b, batch + b) if gap > 0 else (batch + b, b)
            for timesteps, parent, child in transitions:
                rows["parent_chosen"].append(parent[win])
                rows["parent_rejected"].append(parent[lose])
                rows["chosen"].append(child[win])
                rows["rejected"].append(child[lose])
                rows["timesteps"].append(timesteps[win])
                rows["prompt_index"].append(torch.tensor(b, device=parent.device))
        return ties, batch

    def _stack_pairs(self, rows, shared_parent, ties, ranked, images, rewards) -> StepPairs:
        device = self.accelerator.device
        side = self.model_adapter.latent_side(self.resolution)
        empty = torch.zeros(0, self._latent_channels(), side, side, device=device)

        def stack(key, fallback):
            return torch.stack(rows[key]) if rows[key] else fallback

        return StepPairs(
            parent_chosen=stack("parent_chosen", empty),
            parent_rejected=stack("parent_rejected", empty),
            chosen=stack("chosen", empty),
            rejected=stack("rejected", empty),
            timesteps=stack("timesteps", torch.zeros(0, dtype=self.sample_scheduler.timesteps.dtype, device=device)),
            prompt_index=stack("prompt_index", torch.zeros(0, dtype=torch.long, device=device)),
            shared_parent=shared_parent,
            ties=ties,
            candidates_ranked=ranked,
            final_images=tensor_to_pil(images),
            final_rewards=rewards,
        )

    # -- the loss ------------------------------------------------------------------------------------------------

    def step_log_probs(self, unet, pairs: StepPairs, cond, uncond) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities of the chosen and rejected steps of each pair under `unet` (one call per parent)."""
        return self.step_distributions(unet, pairs, cond, uncond)[:2]

    def step_distributions(self, unet, pairs: StepPairs, cond, uncond):
        """`(logp_chosen, logp_rejected, mean_chosen, mean_rejected, std)` of each pair's steps under `unet`."""
        c = {k: v[pairs.prompt_index] for k, v in cond.items()}
        u = {k: v[pairs.prompt_index] for k, v in uncond.items()}
        if pairs.shared_parent:  # TailorPO: both children of one parent share the mean
            eps = self.guided_prediction(unet, pairs.parent_chosen, pairs.timesteps, c, u)
            eps_c = eps_r = eps
        else:
            both = {k: torch.cat([v, v]) for k, v in c.items()}
            both_u = {k: torch.cat([v, v]) for k, v in u.items()}
            parents = torch.cat([pairs.parent_chosen, pairs.parent_rejected])
            eps_c, eps_r = self.guided_prediction(
                unet, parents, torch.cat([pairs.timesteps, pairs.timesteps]), both, both_u
            ).chunk(2)
        _, logp_c, mean_c, std = self.step_distribution(
            eps_c, pairs.timesteps, pairs.parent_chosen, prev_sample=pairs.chosen
        )
        _, logp_r, mean_r, _ = self.step_distribution(
            eps_r, pairs.timesteps, pairs.parent_rejected, prev_sample=pairs.rejected
        )
        return logp_c, logp_r, mean_c, mean_r, std

    def preference_loss(self, policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp):
        """Per-pair losses and rewards; see [`stepwise_dpo_loss`]."""
        return stepwise_dpo_loss(
            policy_chosen_logp,
            policy_rejected_logp,
            ref_chosen_logp,
            ref_rejected_logp,
            beta=self.args.beta,
            clip_range=self.args.clip_range,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        prompts = list(inputs["prompt"])
        start = time.perf_counter()
        cond, uncond = self.encode_conditioning(prompts)  # once: for the rollout and for the loss
        pairs = self.sample_pairs(prompts, (cond, uncond))
        self._timing["sampling"] = time.perf_counter() - start
        self._record_sampling_metrics(mode, pairs)
        if mode == "train":
            self._maybe_log_samples(pairs.final_images, self._captions(pairs, prompts))

        if self.args.max_pairs_per_step is not None and len(pairs) > self.args.max_pairs_per_step:
            pick = torch.randperm(len(pairs), generator=self.rank_generator)[: self.args.max_pairs_per_step]
            pairs = pairs.subset(pick.to(pairs.timesteps.device))
        # Every candidate tied (common with discrete rewards): nothing to learn on this process, but its forward and
        # backward must match the other processes' (DDP's gradient all-reduce, ZeRO-3's parameter gathers), so a
        # placeholder pair goes through the same passes and is weighted zero.
        has_pairs = len(pairs) > 0
        if not has_pairs:
            pairs = self._placeholder_pair()

        policy_c, policy_r, mean_c, mean_r, std = self.step_distributions(model, pairs, cond, uncond)
        with torch.no_grad(), self.reference_model() as reference:
            ref_c, ref_r, ref_mean_c, ref_mean_r, _ = self.step_distributions(reference, pairs, cond, uncond)
        losses, chosen_rewards, rejected_rewards = self.preference_loss(policy_c, policy_r, ref_c, ref_r)
        # Diagnostics: how far the policy's steps moved from the reference's (exact Gaussian KL per dimension), and
        # how many step log-ratios sit outside the clip range (their gradient is cut).
        kl = gaussian_kl(mean_c.detach(), ref_mean_c, std)
        if not pairs.shared_parent:
            kl = 0.5 * (kl + gaussian_kl(mean_r.detach(), ref_mean_r, std))
        log_ratios = torch.cat([policy_c - ref_c, policy_r - ref_r]).detach()
        if self.args.clip_range is not None:
            low, high = math.log(1 - self.args.clip_range), math.log(1 + self.args.clip_range)
            outside = ((log_ratios < low) | (log_ratios > high)).float()
        else:
            outside = torch.zeros_like(log_ratios)
        # The mean over the pairs of all processes, not the mean of each process's own mean: processes find different
        # numbers of pairs, and DDP / DeepSpeed average the gradients over processes (see `pooled_mean_loss`).
        global_pairs = self._global_count(len(pairs) if has_pairs else 0)
        loss = pooled_mean_loss(losses if has_pairs else losses * 0.0, global_pairs, self.accelerator.num_processes)
        if not has_pairs:
            losses, chosen_rewards, rejected_rewards, policy_c, policy_r, kl = (
                t[:0] for t in (losses, chosen_rewards, rejected_rewards, policy_c, policy_r, kl)
            )
            outside = outside[:0]

        # Pooled over processes by sums and counts: processes hold different numbers of pairs, possibly none.
        self._record_pooled(mode, "rewards/chosen", chosen_rewards)
        self._record_pooled(mode, "rewards/rejected", rejected_rewards)
        self._record_pooled(mode, "rewards/accuracies", (chosen_rewards > rejected_rewards).float())
        self._record_pooled(mode, "rewards/margins", chosen_rewards - rejected_rewards)
        self._record_pooled(mode, "logps/chosen", policy_c)
        self._record_pooled(mode, "logps/rejected", policy_r)
        self._record_pooled(mode, "kl", kl)
        self._record_pooled(mode, "clip_ratio/region_mean", outside)
        return (loss, {"losses": losses.detach()}) if return_outputs else loss

    def _placeholder_pair(self) -> StepPairs:
        """One pair at the first (random) step from zero latents, for a process that found no pair to learn from."""
        device = self.accelerator.device
        side = self.model_adapter.latent_side(self.resolution)
        zeros = torch.zeros(1, self._latent_channels(), side, side, device=device)
        return StepPairs(
            parent_chosen=zeros,
            parent_rejected=zeros,
            chosen=zeros,
            rejected=zeros,
            timesteps=self.sample_scheduler.timesteps[:1].to(device),
            prompt_index=torch.zeros(1, dtype=torch.long, device=device),
            shared_parent=True,
        )

    @staticmethod
    def _captions(pairs: StepPairs, prompts: list[str]) -> list[str]:
        captions = []
        for i in range(len(pairs.final_images)):
            scores = ", ".join(f"{name}={values[i].item():.4g}" for name, values in pairs.final_rewards.items())
            captions.append(f"{prompts[i % len(prompts)]} | {scores}")
        return captions

    def _record_sampling_metrics(self, mode: str, pairs: StepPairs) -> None:
        device = self.accelerator.device
        total = sum(w * values.float() for w, values in zip(self.reward_weights, pairs.final_rewards.values()))
        self._record_reward_metrics(mode, total, pairs.final_rewards, group_std=None)
        self._record_metric(mode, "pairs/count", torch.tensor(float(len(pairs)), device=device))
        # Ties over all comparisons of all processes: one 0/1 value per comparison.
        tied = torch.zeros(pairs.candidates_ranked, device=device)
        tied[: pairs.ties] = 1.0
        self._record_pooled(mode, "pairs/tie_fraction", tied)
        self._record_metric(mode, "time/sampling_s", torch.tensor(self._timing.get("sampling", 0.0), device=device))
