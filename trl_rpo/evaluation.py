"""Evaluate text-to-image pipelines with reward functions: means with confidence intervals, win rates, grids.

General, not tied to a trainer: any diffusers text-to-image pipeline (or any callable returning
`.images`) and any reward function `f(images, prompts, **kwargs) -> list[float]` from `trl_rpo.rewards`.
Images are generated with fixed seeds, so two pipelines evaluated with the same seeds start from the same
noise and their scores compare image for image.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageDraw

from .rewards import combine_rewards, reward_name

__all__ = [
    "EvaluationResult",
    "confidence_interval",
    "evaluate_pipeline",
    "generate_images",
    "image_grid",
    "line_chart",
    "win_rate",
]

# Two-sided 95% Student-t critical values by degrees of freedom (no scipy dependency).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}  # fmt: skip


def confidence_interval(values: Sequence[float]) -> float:
    r"""Half-width of the 95% confidence interval of the mean, $t_{0.975, n-1}\, s / \sqrt{n}$.

    NaN for fewer than two values (the spread of one value is unknown).
    """
    n = len(values)
    if n < 2:
        return math.nan
    df = n - 1
    # Between tabulated degrees of freedom use the next smaller one (a slightly wider, conservative interval).
    t = 1.96 if df > 30 else _T95[max(k for k in _T95 if k <= df)]
    return t * statistics.stdev(values) / math.sqrt(n)


@dataclass
class EvaluationResult:
    """Scores of one pipeline on prompts x seeds.

    Attributes:
        mean: per reward (and `"total"`, the weighted sum), the mean over every image.
        ci: per reward, the 95% confidence half-width over the per-seed means (NaN with one seed).
        per_seed: per reward, the mean of each seed's images.
        scores: per reward, every image's score, indexed `[seed][prompt]`.
        images: the images `[seed][prompt]` when asked for (`return_images=True`).
    """

    mean: dict[str, float]
    ci: dict[str, float]
    per_seed: dict[str, list[float]]
    scores: dict[str, list[list[float]]]
    images: list[list[Image.Image]] = field(default_factory=list)


@torch.no_grad()
def generate_images(
    pipeline: Callable[..., Any],
    prompts: Sequence[str],
    seed: int,
    batch_size: int = 8,
    **pipeline_kwargs: Any,
) -> list[Image.Image]:
    """One image per prompt; every image of a seed starts from the noise of `torch.Generator().manual_seed(seed)`.

    Because the generator is per image, results do not depend on `batch_size` and two pipelines with the same
    latent shape get the same starting noise.
    """
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        generators = [torch.Generator(device="cpu").manual_seed(seed) for _ in batch]
        images.extend(pipeline(batch, generator=generators, output_type="pil", **pipeline_kwargs).images)
    return images


def evaluate_pipeline(
    pipeline: Callable[..., Any],
    prompts: Sequence[str],
    reward_funcs: Callable | Sequence[Callable],
    seeds: Sequence[int] = (0, 1, 2),
    reward_weights: Sequence[float] | None = None,
    batch_size: int = 8,
    return_images: bool = False,
    **pipeline_kwargs: Any,
) -> EvaluationResult:
    """Generate `len(seeds) x len(prompts)` images and score them with each reward function.

    `pipeline_kwargs` go to the pipeline call (e.g. `num_inference_steps`, `guidance_scale`, `height`).
    """
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(funcs)
    if not prompts:
        raise ValueError("evaluate_pipeline needs at least one prompt")
    if not seeds:
        raise ValueError("evaluate_pipeline needs at least one seed")
    scores: dict[str, list[list[float]]] = {}
    all_images: list[list[Image.Image]] = []
    for seed in seeds:
        images = generate_images(pipeline, prompts, seed, batch_size=batch_size, **pipeline_kwargs)
        total, per_function = combine_rewards(funcs, weights, images, list(prompts))
        for name, values in {**per_function, "total": total}.items():
            scores.setdefault(name, []).append(values.tolist())
        if return_images:
            all_images.append(images)
    per_seed = {name: [statistics.fmean(row) for row in rows] for name, rows in scores.items()}
    mean = {name: statistics.fmean(v for row in rows for v in row) for name, rows in scores.items()}
    ci = {name: confidence_interval(values) for name, values in per_seed.items()}
    return EvaluationResult(mean=mean, ci=ci, per_seed=per_seed, scores=scores, images=all_images)


def win_rate(
    pipeline_a: Callable[..., Any],
    pipeline_b: Callable[..., Any],
    prompts: Sequence[str],
    reward_func: Callable,
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 8,
    **pipeline_kwargs: Any,
) -> dict[str, float]:
    """How often `pipeline_a`'s image beats `pipeline_b`'s under `reward_func`, same prompt and seed.

    Ties count half. Returns `{"win_rate", "wins", "ties", "losses", "n"}`.
    """
    wins = ties = losses = 0
    for seed in seeds:
        images_a = generate_images(pipeline_a, prompts, seed, batch_size=batch_size, **pipeline_kwargs)
        images_b = generate_images(pipeline_b, prompts, seed, batch_size=batch_size, **pipeline_kwargs)
        (score_a, _), (score_b, _) = (
            combine_rewards([reward_func], [1.0], images, list(prompts)) for images in (images_a, images_b)
        )
        wins += int((score_a > score_b).sum())
        ties += int((score_a == score_b).sum())
        losses += int((score_a < score_b).sum())
    n = wins + ties + losses
    return {"win_rate": (wins + 0.5 * ties) / n, "wins": wins, "ties": ties, "losses": losses, "n": n,
            "reward": reward_name(reward_func)}  # fmt: skip


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    cell_size: int | None = None,
    label_width: int = 120,
    label_height: int = 16,
) -> Image.Image:
    """A labelled grid: `rows[i][j]` at row i, column j (e.g. methods x prompts), cells resized to `cell_size`."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one row with one image")
    n_cols = len(rows[0])
    if any(len(row) != n_cols for row in rows):
        raise ValueError(f"every row needs {n_cols} images, got {[len(row) for row in rows]}")
    for labels, count, what in ((row_labels, len(rows), "row"), (column_labels, n_cols, "column")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"got {len(labels)} {what} labels for {count} {what}s")
    size = cell_size or rows[0][0].width
    left = label_width if row_labels else 0
    top = label_height if column_labels else 0
    grid = Image.new("RGB", (left + n_cols * size, top + len(rows) * size), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            grid.paste(image.convert("RGB").resize((size, size)), (left + j * size, top + i * size))
        if row_labels:
            draw.text((4, top + i * size + size // 2 - 5), str(row_labels[i])[:24], fill="black")
    if column_labels:
        for j, label in enumerate(column_labels):
            draw.text((left + j * size + 2, 2), str(label)[: max(4, size // 6)], fill="black")
    return grid


_LINE_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str = "",
    x_label: str = "step",
    size: tuple[int, int] = (420, 260),
) -> Image.Image:
    """A small line chart of `{name: [(x, y), ...]}` with a legend and the y range printed (no plotting library).

    Series with no points are listed in the legend as "(no data)"; a flat range is widened so lines stay visible.
    """
    width, height = size
    left, right, top, bottom = 48, 10, 20, 28
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 4), title, fill="black")
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    draw.rectangle((left, top, width - right, height - bottom), outline=(160, 160, 160))
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x1 == x0:
            x1 = x0 + 1
        if y1 == y0:
            y0, y1 = y0 - 0.5, y1 + 0.5

        def to_pixel(x: float, y: float) -> tuple[float, float]:
            px = left + (x - x0) / (x1 - x0) * (width - left - right)
            return px, top + (y1 - y) / (y1 - y0) * (height - top - bottom)

        draw.text((2, top - 4), f"{y1:.3g}", fill="black")
        draw.text((2, height - bottom - 8), f"{y0:.3g}", fill="black")
        draw.text((left, height - bottom + 4), f"{x0:.0f}", fill="black")
        draw.text((width - right - 40, height - bottom + 4), f"{x1:.0f} {x_label}", fill="black")
        for k, values in enumerate(series.values()):
            pixels = [to_pixel(x, y) for x, y in values if math.isfinite(y)]
            color = _LINE_COLORS[k % len(_LINE_COLORS)]
            if len(pixels) > 1:
                draw.line(pixels, fill=color, width=2)
            elif pixels:
                draw.ellipse((pixels[0][0] - 2, pixels[0][1] - 2, pixels[0][0] + 2, pixels[0][1] + 2), fill=color)
    for k, (name, values) in enumerate(series.items()):
        label = name if values else f"{name} (no data)"
        draw.text((left + 6, top + 4 + 11 * k), label, fill=_LINE_COLORS[k % len(_LINE_COLORS)])
    return image
