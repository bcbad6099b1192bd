"""Do TailorPO's step-wise rewards rank two children of one noisy parent the way their final images do? (issue 28)

TailorPO ranks the children drawn from one parent by the reward of the clean image each child predicts (one denoiser
call, Tweedie's estimate). If that ranking is unrelated to which child leads to the better image, its pairs carry
no signal and no recipe can make it learn. `run_step_reward_check` measures it on train prompts with the demo's
TailorPO (untrained; no held-out prompt is scored): at every sampler step, from a parent the policy's own sampler
reached, two children (TailorPO's branching), each scored (a) as TailorPO scores it and (b) by the mean reward of
`continuations` completions of it with the same sampler, the reward the child actually leads to. Per step: how
often (a) and (b) order the pair the same way, among pairs neither ties, with a Wilson 95% interval; and how often
each ties. Two references beside it: (c) the reward of one *deterministic* completion of each child (the ODE
sampler, DDIM at eta 0: `TailorPOTrainer.ode_completion`, what `step_reward_estimate="ode_lookahead"` ranks by),
and the split-half agreement of (b) with itself (the first half of the completions against the second): near 1/2,
the children's outcomes differ too little for any ranking to find. Run by `examples/shapes/dev_sweep.py --stage
step-rewards`; writes `step_reward_check.json/.md`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .demo import DemoConfig

__all__ = ["format_step_reward_check", "run_step_reward_check", "wilson_interval"]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson's score interval for a binomial proportion (Wilson, 1927); None without trials."""
    if trials <= 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


@torch.no_grad()
def _complete(trainer, latents, start: int, cond, uncond, generator) -> torch.Tensor:
    """Run the trainer's stochastic sampler from step index `start` to the end; the final latents."""
    unet = trainer._unwrapped_unet()
    for t in trainer.sample_scheduler.timesteps[start:]:
        timesteps = t.expand(len(latents)).to(latents.device)
        output = trainer.guided_prediction(unet, latents, timesteps, cond, uncond)
        latents = trainer.step_with_logprob(output, timesteps, latents, generator=generator)[0]
    return latents


def _share(agree: int, decided: int, prefix: str) -> dict[str, Any]:
    """`agree` of `decided` pairs as a share with its Wilson 95% interval (None when nothing was decided)."""
    return {f"{prefix}agreement": agree / decided if decided else None,
            f"{prefix}agreement_ci": wilson_interval(agree, decided)}  # fmt: skip


def _agreement(gap_a: torch.Tensor, gap_b: torch.Tensor, prefix: str) -> dict[str, Any]:
    """How often two score gaps of the same pairs have the same sign, among the pairs neither ties."""
    both = (gap_a != 0) & (gap_b != 0)
    agree, decided = int(((gap_a.sign() == gap_b.sign()) & both).sum()), int(both.sum())
    return {f"{prefix}agree": agree, f"{prefix}decided": decided, **_share(agree, decided, prefix)}


@torch.no_grad()
def run_step_reward_check(
    config: DemoConfig,
    output_dir: str | Path,
    num_prompts: int = 32,
    continuations: int = 4,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Agreement, per sampler step, between TailorPO's step-wise ranking of two sibling children and the ranking by
    the mean final reward of `continuations` completions of each (see the module docstring)."""
    from .stages import online_prompts, tailorpo_trainer
    from .sweep import _new_folder, _write_sweep

    if num_prompts < 1 or continuations < 1:
        raise ValueError(f"need at least one prompt and one continuation, got {num_prompts} and {continuations}")
    output_dir = _new_folder(output_dir)
    trainer = tailorpo_trainer(config, output_dir, "step-reward-check")
    prompts = list(online_prompts(config)["prompt"][:num_prompts])
    device = trainer.accelerator.device
    generator = torch.Generator().manual_seed(seed)
    trainer._set_sampling_timesteps(device)
    unet = trainer._unwrapped_unet()
    cond, uncond = trainer.encode_conditioning(prompts)
    repeat = {k: v.repeat(continuations, *[1] * (v.ndim - 1)) for k, v in cond.items()}
    repeat_u = {k: v.repeat(continuations, *[1] * (v.ndim - 1)) for k, v in uncond.items()}
    trainable = set(trainer._pairable_steps(list(range(len(trainer.sample_scheduler.timesteps)))))
    latents = trainer.initial_latents(len(prompts), generator)
    rows = []
    for step, t in enumerate(trainer.sample_scheduler.timesteps):
        timesteps = t.expand(len(latents)).to(device)
        output = trainer.guided_prediction(unet, latents, timesteps, cond, uncond)
        if step not in trainable:  # a deterministic step: its children are all the same
            latents = trainer.step_with_logprob(output, timesteps, latents, generator=generator)[0]
            continue
        children = [trainer.step_with_logprob(output, timesteps, latents, generator=generator)[0] for _ in range(2)]
        next_t = trainer.next_timesteps(timesteps)
        step_scores, final_scores, halves, lookahead = [], [], [], []
        for child in children:
            if trainer._is_final(next_t):
                x0 = ode_end = child.float()
            else:  # TailorPO's step-wise reward, the clean image the child predicts, and its ODE lookahead's
                child_output = trainer.guided_prediction(unet, child, next_t, cond, uncond)
                x0 = trainer.predict_x0(child_output, child, next_t)
                ode_end = trainer.ode_completion(unet, child, child_output, next_t, cond, uncond)
            step_scores.append(trainer.step_rewards(trainer.decode(x0), prompts)[0].float().cpu())
            lookahead.append(trainer.step_rewards(trainer.decode(ode_end), prompts)[0].float().cpu())
            ends = _complete(trainer, child.repeat(continuations, 1, 1, 1), step + 1, repeat, repeat_u, generator)
            finals = trainer.step_rewards(trainer.decode(ends), prompts * continuations)[0].float().cpu()
            finals = finals.view(continuations, len(prompts))
            final_scores.append(finals.mean(0))
            half = continuations // 2
            halves.append((finals[:half].mean(0), finals[half:].mean(0)) if half else None)
        step_gap, final_gap = step_scores[0] - step_scores[1], final_scores[0] - final_scores[1]
        row = {"step": step, "timestep": int(t), "pairs": len(prompts), **_agreement(step_gap, final_gap, ""),
               **_agreement(lookahead[0] - lookahead[1], final_gap, "lookahead_"),
               "step_ties": float((step_gap == 0).float().mean()),
               "final_ties": float((final_gap == 0).float().mean())}  # fmt: skip
        if halves[0] is not None:
            row.update(_agreement(halves[0][0] - halves[1][0], halves[0][1] - halves[1][1], "split_half_"))
        rows.append(row)
        log(format_step_reward_check({"rows": rows[-1:]}).splitlines()[-1])
        latents = children[int(torch.randint(2, (1,), generator=generator))]  # continue from one child, as TailorPO
    totals: dict[str, Any] = {}
    for prefix in ("", "lookahead_", "split_half_"):
        agree = sum(r.get(f"{prefix}agree", 0) for r in rows)
        totals.update(_share(agree, sum(r.get(f"{prefix}decided", 0) for r in rows), prefix))
    results = {
        "rows": rows, **totals, "prompts": len(prompts), "continuations": continuations,
        "seed": seed, "note": "train prompts, the untrained demo TailorPO; 0.5 = the step-wise ranking says nothing "
        "about which child leads to the better image",
    }  # fmt: skip
    return _write_sweep(output_dir, "step_reward_check", results, format_step_reward_check(results), log)


def format_step_reward_check(results: dict[str, Any]) -> str:
    """The check as Markdown: per step, the agreement with its interval and the two tie rates."""

    def share(value, ci) -> str:
        return "n/a" if value is None else f"{value:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"

    def extra(entry: dict[str, Any], prefix: str) -> str:  # checks written before these columns have none
        key = f"{prefix}agreement"
        return share(entry[key], entry[f"{key}_ci"]) if key in entry else "n/a"

    lines = ["| step | timestep | pairs decided by both | agreement [95% CI] | ODE lookahead's agreement | "
             "split-half agreement of the outcomes | step-wise ties | final ties |",
             "|---:|---:|---:|---|---|---|---:|---:|"]  # fmt: skip
    for row in results["rows"]:
        lines.append(f"| {row['step']} | {row['timestep']} | {row['decided']} / {row['pairs']} | "
                     f"{share(row['agreement'], row['agreement_ci'])} | {extra(row, 'lookahead_')} | "
                     f"{extra(row, 'split_half_')} | {row['step_ties']:.2f} | {row['final_ties']:.2f} |")  # fmt: skip
    if "agreement" in results:
        lines.append(f"| all | | {sum(r['decided'] for r in results['rows'])} | "
                     f"{share(results['agreement'], results['agreement_ci'])} | {extra(results, 'lookahead_')} | "
                     f"{extra(results, 'split_half_')} | | |")  # fmt: skip
    return "\n".join(lines)
