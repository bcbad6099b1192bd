"""Alignment per compute: each method's held-out gain over the base per minute of training on the demo's machine.

"Faster" and "better" on one axis (issue 30): a minute is a wall-clock minute of the whole training job on the
machine that ran it (the demo's: 2 CPU cores), pair building included for the Diffusion-DPO rows, evaluation not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["gain_per_minute", "study_gain_per_minute"]


def gain_per_minute(gain: float, seconds: float, gain_ci: Sequence[float] | None = None) -> dict[str, Any]:
    """`gain / minutes` (and the interval's ends divided by the same minutes); None entries without training time.

    The minutes are fixed, measured once, so the interval of the ratio is the gain's interval rescaled.
    """
    minutes = seconds / 60.0
    if minutes <= 0:
        return {"minutes": round(minutes, 3), "gain_per_minute": None, "gain_per_minute_ci": None}
    ci = None if gain_ci is None else [round(v / minutes, 5) for v in gain_ci]
    return {"minutes": round(minutes, 3), "gain_per_minute": round(gain / minutes, 5), "gain_per_minute_ci": ci}


def study_gain_per_minute(
    base_scores: Any, seeds: Mapping[str, Mapping[str, Any]], methods: Sequence[str], endpoint: str,
    pair_sets: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """Per method: its gain over the base per minute of training, for each training seed, with mean and SE.

    `seeds[seed]["methods"][method]` holds `train_seconds` and `scores[endpoint]` (`[noise][prompt]`, the same
    images as `base_scores`); a Diffusion-DPO method's minutes add its pair set's build time
    (`seeds[seed]["pair_set_seconds"][pair_sets[method]]`, the pair set each row trains on).
    """
    base = float(np.mean(base_scores))
    out: dict[str, dict[str, Any]] = {}
    for method in methods:
        gains, minutes = [], []
        for record in seeds.values():
            entry = record["methods"][method]
            seconds = float(entry["train_seconds"])
            if method in pair_sets:
                seconds += float(record.get("pair_set_seconds", {}).get(pair_sets[method], 0.0))
            gains.append(float(np.mean(entry["scores"][endpoint])) - base)
            minutes.append(seconds / 60.0)
        # A run without measured training time (a base model reported in place of an empty pair set) has no rate.
        rates = np.asarray([g / m for g, m in zip(gains, minutes) if m > 0])
        se = float(rates.std(ddof=1) / np.sqrt(len(rates))) if len(rates) > 1 else None
        out[method] = {"minutes": round(float(np.mean(minutes)), 3), "gain": round(float(np.mean(gains)), 5),
                       "gain_per_minute": round(float(rates.mean()), 5) if len(rates) else None,
                       "gain_per_minute_se": None if se is None else round(se, 5),
                       "per_seed": [round(float(r), 5) for r in rates]}  # fmt: skip
    return out
