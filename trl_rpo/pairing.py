"""Which steps produce preference pairs, and which candidates pair up: small pure functions for TailorPO."""

from __future__ import annotations

import torch

__all__ = ["rank_pairs", "select_timestep_indices"]


def select_timestep_indices(
    num_steps: int,
    selection: str,
    num_selected: int = 5,
    window: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> list[int]:
    """Indices (0 = first, noisiest step) of the denoising steps that produce pairs.

    * ``"all"``: every step.
    * ``"random"``: `num_selected` distinct steps drawn uniformly (all of them if fewer exist).
    * ``"window"``: steps whose position `i / num_steps` lies in `[window[0], window[1])`; at least one.
    """
    if selection == "all":
        return list(range(num_steps))
    if selection == "random":
        k = min(num_selected, num_steps)
        return sorted(torch.randperm(num_steps, generator=generator)[:k].tolist())
    if selection == "window":
        start, end = window
        chosen = [i for i in range(num_steps) if start <= i / num_steps < end]
        return chosen or [min(int(start * num_steps), num_steps - 1)]
    raise ValueError(f"unknown timestep selection {selection!r}; expected 'all', 'random' or 'window'")


def rank_pairs(
    rewards: torch.Tensor, mode: str = "best_worst", tie_margin: float = 0.0
) -> tuple[list[tuple[int, int]], int]:
    """(chosen, rejected) index pairs among K candidates ranked by reward, and the number of ties skipped.

    * ``"best_worst"``: the single pair (argmax, argmin).
    * ``"all"``: every pair `(i, j)` with `reward_i > reward_j`.

    A pair whose rewards differ by at most `tie_margin` carries no preference: it is skipped and counted.
    """
    values = rewards.detach().float().flatten().tolist()
    if len(values) < 2:
        raise ValueError(f"need at least 2 candidates to rank, got {len(values)}")
    if mode == "best_worst":
        best = max(range(len(values)), key=values.__getitem__)
        worst = min(range(len(values)), key=values.__getitem__)
        if values[best] - values[worst] <= tie_margin:
            return [], 1
        return [(best, worst)], 0
    if mode == "all":
        pairs, ties = [], 0
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                gap = values[i] - values[j]
                if abs(gap) <= tie_margin:
                    ties += 1
                else:
                    pairs.append((i, j) if gap > 0 else (j, i))
        return pairs, ties
    raise ValueError(f"unknown pairing mode {mode!r}; expected 'best_worst' or 'all'")
