"""Verifiers: optional filters that decide whether an edited image really is better than the original.

A verifier is any callable `verifier(originals, edited, prompts) -> list[bool]` (True keeps the pair). The three
here also expose `verify(...)`, which returns a `Verdict` per pair with the scores behind the decision; the
builder stores those scores in the dataset's `scores` column.

- `RewardMarginVerifier`: reward functions (the `trl_rpo.rewards` convention) must prefer the edit by a margin.
- `CriticRecheckVerifier`: the critic, run again on the edit, must ask for fewer (or no) edits.
- `ChangeGuard`: the edit must change something, but not replace the whole image (a pixel distance window).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..rewards.base import combine_rewards, reward_name
from .schema import Critique

__all__ = ["ChangeGuard", "CriticRecheckVerifier", "RewardMarginVerifier", "Verdict", "verifier_name"]


@dataclass
class Verdict:
    """One pair's verdict: keep it or not, and the named numbers that decided it."""

    keep: bool
    scores: dict[str, float] = field(default_factory=dict)


def verifier_name(verifier: Any) -> str:
    """The name a verifier's rejections are counted under (its `name`, function name or class name)."""
    return reward_name(verifier)


def _check_lengths(originals: Sequence, edited: Sequence, prompts: Sequence[str]) -> None:
    if not len(originals) == len(edited) == len(prompts):
        raise ValueError(
            f"a verifier needs as many originals, edits and prompts; got {len(originals)}, {len(edited)}, "
            f"{len(prompts)}"
        )


class _Verifier:
    """Shared calling convention: `__call__` returns the keep flags of `verify`."""

    name = "verifier"

    def verify(self, originals, edited, prompts, **kwargs: Any) -> list[Verdict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(
        self, originals: Sequence[Image.Image], edited: Sequence[Image.Image], prompts: Sequence[str], **kwargs: Any
    ) -> list[bool]:
        return [verdict.keep for verdict in self.verify(originals, edited, prompts, **kwargs)]


class RewardMarginVerifier(_Verifier):
    """Keeps a pair when the weighted reward of the edit exceeds the original's by more than `margin`.

    Args:
        reward_funcs: one reward function or several, each `f(images, prompts) -> list[float]` (higher is
            better), e.g. `trl_rpo.shapes.alignment_score` or a `trl_rpo.rewards` scorer.
        weights: one weight per function (default 1.0 each); the decision uses the weighted sum.
        margin: how much higher the edit's total reward must be (strictly); 0 means "strictly better".
        name: how rejections are counted (default `reward_margin`).
    """

    def __init__(
        self,
        reward_funcs: Callable | Sequence[Callable],
        weights: Sequence[float] | None = None,
        margin: float = 0.0,
        name: str = "reward_margin",
    ):
        self.reward_funcs = [reward_funcs] if callable(reward_funcs) else list(reward_funcs)
        if not self.reward_funcs:
            raise ValueError("RewardMarginVerifier needs at least one reward function")
        self.weights = [1.0] * len(self.reward_funcs) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.reward_funcs):
            raise ValueError(f"got {len(self.weights)} weights for {len(self.reward_funcs)} reward functions")
        self.margin = float(margin)
        self.name = name

    def __repr__(self) -> str:
        funcs = ", ".join(reward_name(f) for f in self.reward_funcs)
        return f"RewardMarginVerifier(reward_funcs=[{funcs}], weights={self.weights}, margin={self.margin})"

    def verify(self, originals, edited, prompts, **kwargs: Any) -> list[Verdict]:
        """One verdict per pair, with each reward of the edit (`<name>/chosen`) and original (`<name>/rejected`)."""
        _check_lengths(originals, edited, prompts)
        if not prompts:
            return []
        total_edit, per_edit = combine_rewards(self.reward_funcs, self.weights, list(edited), list(prompts))
        total_orig, per_orig = combine_rewards(self.reward_funcs, self.weights, list(originals), list(prompts))
        verdicts = []
        for i in range(len(prompts)):
            scores = {}
            for key in per_edit:
                scores[f"{key}/chosen"] = float(per_edit[key][i])
                scores[f"{key}/rejected"] = float(per_orig[key][i])
            delta = float(total_edit[i] - total_orig[i])
            scores[f"{self.name}/delta"] = delta
            verdicts.append(Verdict(keep=delta > self.margin, scores=scores))
        return verdicts


class CriticRecheckVerifier(_Verifier):
    """Runs the critic again on each edit and keeps it when the critic asks for fewer edits (or none).

    Args:
        critic: any critic, `critic(images, prompts) -> list[Critique | dict]` (usually the builder's own).
        require_none: keep only edits the critic finds nothing left to fix in (default: fewer instructions than
            the original had is enough).
        name: how rejections are counted (default `critic_recheck`).

    The builder passes the original critiques as `critiques=`; called without them, the original images are
    criticized too.
    """

    def __init__(self, critic: Callable, require_none: bool = False, name: str = "critic_recheck"):
        self.critic = critic
        self.require_none = require_none
        self.name = name

    def __repr__(self) -> str:
        return f"CriticRecheckVerifier(critic={reward_name(self.critic)}, require_none={self.require_none})"

    def verify(self, originals, edited, prompts, critiques: Sequence[Any] | None = None, **kwargs) -> list[Verdict]:
        """One verdict per pair, with the instruction counts before and after the edit."""
        _check_lengths(originals, edited, prompts)
        if not prompts:
            return []
        if critiques is None:
            critiques = self.critic(list(originals), list(prompts))
        after = self.critic(list(edited), list(prompts))
        if len(after) != len(prompts) or len(critiques) != len(prompts):
            raise ValueError(f"critic {reward_name(self.critic)!r} returned the wrong number of critiques")
        verdicts = []
        for before_c, after_c in zip(critiques, after):
            n_before = len(Critique.coerce(before_c).instructions)
            n_after = len(Critique.coerce(after_c).instructions)
            keep = n_after == 0 if self.require_none else n_after < n_before
            scores = {
                f"{self.name}/instructions_before": float(n_before),
                f"{self.name}/instructions_after": float(n_after),
            }
            verdicts.append(Verdict(keep=keep, scores=scores))
        return verdicts


def pixel_distance(a: Image.Image, b: Image.Image, metric: str = "mean_abs", tolerance: float = 8 / 255) -> float:
    """How different two images are, in [0, 1]; `b` is resized to `a`'s size first when they differ.

    `mean_abs`: mean absolute difference of RGB values scaled to [0, 1]. `changed_fraction`: the fraction of
    pixels whose largest channel difference exceeds `tolerance`.
    """
    a = a.convert("RGB")
    b = b.convert("RGB")
    if b.size != a.size:
        b = b.resize(a.size, Image.Resampling.BILINEAR)
    diff = np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)) / 255.0
    if metric == "mean_abs":
        return float(diff.mean())
    if metric == "changed_fraction":
        return float((diff.max(axis=-1) > tolerance).mean())
    raise ValueError(f"metric must be 'mean_abs' or 'changed_fraction', got {metric!r}")


class ChangeGuard(_Verifier):
    """Keeps an edit whose pixel distance to the original lies in `[min_change, max_change]`.

    Below the window the editor did nothing visible (a pair of identical images teaches nothing); above it the
    editor replaced the picture instead of fixing it (the pair then no longer isolates the criticized detail).

    Args:
        min_change: smallest distance accepted (default 0.001).
        max_change: largest distance accepted (default 0.5).
        metric: `mean_abs` or `changed_fraction` (see `pixel_distance`).
        tolerance: per-pixel threshold of `changed_fraction`, in [0, 1].
        name: how rejections are counted (default `change_guard`).
    """

    def __init__(
        self,
        min_change: float = 0.001,
        max_change: float = 0.5,
        metric: str = "mean_abs",
        tolerance: float = 8 / 255,
        name: str = "change_guard",
    ):
        if not 0.0 <= min_change <= max_change <= 1.0:
            raise ValueError(f"need 0 <= min_change <= max_change <= 1, got {min_change} and {max_change}")
        if metric not in ("mean_abs", "changed_fraction"):
            raise ValueError(f"metric must be 'mean_abs' or 'changed_fraction', got {metric!r}")
        self.min_change, self.max_change = float(min_change), float(max_change)
        self.metric, self.tolerance, self.name = metric, float(tolerance), name

    def __repr__(self) -> str:
        return f"ChangeGuard(min_change={self.min_change}, max_change={self.max_change}, metric={self.metric!r})"

    def verify(self, originals, edited, prompts, **kwargs: Any) -> list[Verdict]:
        """One verdict per pair, with the distance as `<name>/<metric>`."""
        _check_lengths(originals, edited, prompts)
        verdicts = []
        for original, edit in zip(originals, edited):
            distance = pixel_distance(original, edit, self.metric, self.tolerance)
            keep = self.min_change <= distance <= self.max_change
            verdicts.append(Verdict(keep=keep, scores={f"{self.name}/{self.metric}": distance}))
        return verdicts
