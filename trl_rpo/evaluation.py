"""Evaluate text-to-image pipelines with reward functions: means, paired comparisons, win rates, grids, plots.

General, not tied to a trainer: any diffusers text-to-image pipeline (or any callable returning
`.images`) and any reward function `f(images, prompts, **kwargs) -> list[float]` from `trl_rpo.rewards`.
Images are generated with fixed seeds, so two pipelines evaluated with the same seeds start from the same
noise and their scores compare image for image: `paired_comparison` uses exactly that pairing, which is
several times tighter than comparing two separate confidence intervals.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from .families import guidance_call_kwargs
from .rewards import combine_rewards, reward_name

__all__ = [
    "BaseComparison",
    "EvaluationResult",
    "compare_with_base",
    "load_trained_pipeline",
    "PairedComparison",
    "compare_pipelines",
    "confidence_interval",
    "evaluate_pipeline",
    "generate_images",
    "image_grid",
    "image_seed",
    "paired_comparison",
    "plot_curves",
    "plot_gains",
    "smooth",
    "win_rate",
]


def confidence_interval(values: Sequence[float], confidence_level: float = 0.95) -> float:
    r"""Half-width of the Student-t confidence interval of the mean, $t_{(1+c)/2,\, n-1}\, s / \sqrt{n}$.

    NaN for fewer than two values (the spread of one value is unknown). Quantiles from `scipy.stats.t`.
    """
    from scipy import stats

    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.5 + confidence_level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n))


SIGNIFICANCE_TOLERANCE = 1e-9


@dataclass
class PairedComparison:
    """A paired comparison of two methods scored on the same prompts x seeds (a minus b).

    The unit of resampling is the *prompt*: each prompt's difference (and win fraction) is averaged over its
    seeds, so images of one prompt are not treated as independent.

    Attributes:
        gain: mean of `a - b` over every image (equal to the mean of the per-prompt differences).
        gain_ci: `[low, high]`, the bootstrap confidence interval of `gain` over prompts
            (`scipy.stats.bootstrap`, BCa, `n_resamples` resamples).
        win_rate: share of images where a scores higher than b, ties counted half.
        win_rate_ci: `[low, high]`, its bootstrap interval over prompts.
        p_value: two-sided paired t-test of the per-prompt differences against 0 (`scipy.stats.ttest_1samp`).
        mean_a, mean_b: each method's mean score.
        wins, ties, losses: image counts; n_prompts, n_images: sample sizes.
        confidence_level: of both intervals.
    """

    gain: float
    gain_ci: list[float]
    win_rate: float
    win_rate_ci: list[float]
    p_value: float
    mean_a: float
    mean_b: float
    wins: int
    ties: int
    losses: int
    n_prompts: int
    n_images: int
    confidence_level: float = 0.95
    test: str = "bootstrap over prompts (BCa, percentile where BCa is undefined); paired t-test over prompts"

    @property
    def significant(self) -> bool:
        """Whether the gain's interval excludes zero (False when it is undefined: fewer than two prompts).

        An end within `SIGNIFICANCE_TOLERANCE` of zero counts as zero: on discrete scores a bootstrap quantile
        can fall on a resample mean of exactly 0, and interpolating towards its neighbour leaves a 1e-12-sized
        value whose sign is float noise, not evidence.
        """
        return bool(self.gain_ci[0] > SIGNIFICANCE_TOLERANCE or self.gain_ci[1] < -SIGNIFICANCE_TOLERANCE)

    def to_dict(self, digits: int | None = 4) -> dict[str, Any]:
        """The fields as JSON-ready values, rounded to `digits` (None: unrounded)."""

        def rnd(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None  # strict JSON has no NaN
            if isinstance(value, float) and digits is not None:
                return round(value, digits)
            if isinstance(value, list):
                return [rnd(v) for v in value]
            return value

        return {key: rnd(value) for key, value in asdict(self).items()}


def _bootstrap_ci(values: np.ndarray, confidence_level: float, n_resamples: int, seed: int) -> list[float]:
    from scipy import stats

    if len(values) < 2:
        return [math.nan, math.nan]  # one prompt says nothing about the spread over prompts
    if np.all(values == values[0]):
        # Every prompt gave the same value (BCa is undefined): the interval is the point itself.
        point = float(values.mean())
        return [point, point]
    result = stats.bootstrap(
        (values,), np.mean, confidence_level=confidence_level, n_resamples=n_resamples, method="BCa",
        random_state=np.random.default_rng(seed),
    )  # fmt: skip
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):
        # BCa degenerates on a few distinct values; the percentile interval is the documented fallback.
        result = stats.bootstrap((values,), np.mean, confidence_level=confidence_level, n_resamples=n_resamples,
                                 method="percentile", random_state=np.random.default_rng(seed))  # fmt: skip
        low, high = result.confidence_interval
    return [float(low), float(high)]


def paired_comparison(
    scores_a: Sequence[Sequence[float]] | Sequence[float],
    scores_b: Sequence[Sequence[float]] | Sequence[float],
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PairedComparison:
    r"""Compare two methods' scores on the same images' prompts and seeds, `a - b`.

    `scores_a[s][p]` and `scores_b[s][p]` are the scores of seed `s` and prompt `p` (the layout of
    `EvaluationResult.scores`); a flat list is one seed. With $d_p = \frac{1}{S}\sum_s (a_{sp} - b_{sp})$:

    - gain $= \bar d$, with a bootstrap (BCa) confidence interval resampling prompts;
    - p-value of the paired t-test $t = \bar d / (s_d / \sqrt{P})$ with $P - 1$ degrees of freedom;
    - win rate $= (\#\{a > b\} + \tfrac12 \#\{a = b\}) / (S P)$, its interval bootstrapped over prompts too.

    The resampling is seeded (`seed`), so a report is reproducible. BCa falls back to the percentile interval
    where it is undefined (few distinct values); with one prompt the intervals and the p-value are NaN.
    """
    from scipy import stats

    a = np.atleast_2d(np.asarray(scores_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(scores_b, dtype=np.float64))
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same [seed][prompt] shape, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired_comparison needs at least one score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired_comparison got a non-finite score")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    diff = a - b
    per_prompt = diff.mean(axis=0)
    wins_per_prompt = ((diff > 0) + 0.5 * (diff == 0)).mean(axis=0)
    if len(per_prompt) < 2 or np.all(per_prompt == per_prompt[0]):
        p_value = 1.0 if np.all(per_prompt == 0) else (0.0 if len(per_prompt) > 1 else math.nan)
    else:
        p_value = float(stats.ttest_1samp(per_prompt, 0.0).pvalue)
    return PairedComparison(
        gain=float(diff.mean()),
        gain_ci=_bootstrap_ci(per_prompt, confidence_level, n_resamples, seed),
        win_rate=float(wins_per_prompt.mean()),
        win_rate_ci=_bootstrap_ci(wins_per_prompt, confidence_level, n_resamples, seed),
        p_value=p_value,
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        wins=int((diff > 0).sum()),
        ties=int((diff == 0).sum()),
        losses=int((diff < 0).sum()),
        n_prompts=int(a.shape[1]),
        n_images=int(a.size),
        confidence_level=confidence_level,
    )


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


def image_seed(seed: int, index: int) -> int:
    """The noise seed of image `index` of evaluation seed `seed` with per-image noise (numpy's `SeedSequence`)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] % (2**63))


@torch.no_grad()
def generate_images(
    pipeline: Callable[..., Any],
    prompts: Sequence[str],
    seed: int,
    batch_size: int = 8,
    per_image_noise: bool = False,
    **pipeline_kwargs: Any,
) -> list[Image.Image]:
    """One image per prompt; every image of a seed starts from the noise of `torch.Generator().manual_seed(seed)`.

    Because the generator is per image, results do not depend on `batch_size` and two pipelines with the same
    latent shape get the same starting noise. `per_image_noise=True` seeds the `i`-th prompt's noise with
    `image_seed(seed, i)` instead: the same for two pipelines, but not shared by every image of a seed.
    """
    images: list[Image.Image] = []
    # diffusers pipelines by keyword (FLUX.2 [klein]'s first argument is an image), any other callable positionally
    call = (lambda texts, **kw: pipeline(prompt=texts, **kw)) if hasattr(pipeline, "components") else pipeline
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        seeds = [image_seed(seed, start + k) if per_image_noise else seed for k in range(len(batch))]
        generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        kwargs = dict(pipeline_kwargs)
        if "guidance_scale" in kwargs:  # in the convention of the pipeline's family (Qwen-Image: true CFG)
            kwargs.update(guidance_call_kwargs(pipeline, kwargs.pop("guidance_scale"), len(batch)))
        images.extend(call(batch, generator=generators, output_type="pil", **kwargs).images)
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

    `pipeline_kwargs` go to `generate_images` (`per_image_noise`) and the pipeline call (e.g. `guidance_scale`).
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

    Ties count half. Returns `{"win_rate", "wins", "ties", "losses", "n"}`; `compare_pipelines` gives the same
    counts with confidence intervals.
    """
    result = compare_pipelines(pipeline_a, pipeline_b, prompts, reward_func, seeds=seeds, batch_size=batch_size,
                               **pipeline_kwargs)  # fmt: skip
    return {"win_rate": result.win_rate, "wins": result.wins, "ties": result.ties, "losses": result.losses,
            "n": result.n_images, "reward": reward_name(reward_func)}  # fmt: skip


def compare_pipelines(
    pipeline_a: Callable[..., Any],
    pipeline_b: Callable[..., Any],
    prompts: Sequence[str],
    reward_func: Callable,
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 8,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    bootstrap_seed: int = 0,
    **pipeline_kwargs: Any,
) -> PairedComparison:
    """Evaluate two pipelines on the same prompts and seeds and compare them image for image (`a - b`).

    The question every user asks after training: `compare_pipelines(trained, base, prompts, reward)`; see
    `paired_comparison` for the statistics.
    """
    results = [
        evaluate_pipeline(pipeline, prompts, reward_func, seeds=seeds, batch_size=batch_size, **pipeline_kwargs)
        for pipeline in (pipeline_a, pipeline_b)
    ]
    name = reward_name(reward_func)
    return paired_comparison(results[0].scores[name], results[1].scores[name], confidence_level=confidence_level,
                             n_resamples=n_resamples, seed=bootstrap_seed)  # fmt: skip


def load_trained_pipeline(model: str | os.PathLike, base: Any, **load_kwargs: Any) -> Any:
    """A trained model as a pipeline: a pipeline folder as is, or a LoRA / UNet folder applied to `base`.

    Args:
        model: a folder written by a trl-rpo trainer's `save_model` or by `pipeline.save_pretrained`:
            with `model_index.json` (a whole pipeline), `pytorch_lora_weights.safetensors` (a LoRA, loaded with
            `load_lora_weights` onto a fresh copy of `base`) or `unet/` / `transformer/` (a fully fine-tuned
            denoiser replacing `base`'s).
        base: the base pipeline: an object is used as is for a pipeline folder and copied for LoRA / UNet
            folders (so the base stays unchanged), or a Hub id / folder loaded with `from_pretrained`.
        load_kwargs: passed to `DiffusionPipeline.from_pretrained` (e.g. `torch_dtype`).

    Raises:
        FileNotFoundError: naming the folder and the three layouts when it holds none of them.
    """
    from diffusers import DiffusionPipeline

    folder = Path(model)
    if (folder / "model_index.json").is_file():
        return DiffusionPipeline.from_pretrained(folder, **load_kwargs)
    is_lora = (folder / "pytorch_lora_weights.safetensors").is_file()
    denoiser = next((name for name in ("unet", "transformer") if (folder / name / "config.json").is_file()), None)
    if not (is_lora or denoiser):
        raise FileNotFoundError(
            f"{folder} holds no model_index.json (a pipeline), pytorch_lora_weights.safetensors (a LoRA) or "
            "unet/ or transformer/config.json (a fine-tuned denoiser): pass a folder written by a trainer's "
            "save_model or by pipeline.save_pretrained"
        )
    if isinstance(base, (str, os.PathLike)):
        pipeline = DiffusionPipeline.from_pretrained(base, **load_kwargs)
    else:  # a copy with its own denoiser (LoRA and denoiser swaps change it), every other component shared
        pipeline = type(base)(**{n: copy.deepcopy(c) if n in ("unet", "transformer") and c is not None else c
                                 for n, c in base.components.items()})  # fmt: skip
    if is_lora:
        pipeline.load_lora_weights(folder)
    else:
        current = getattr(pipeline, denoiser)
        module = type(current).from_pretrained(folder, subfolder=denoiser, torch_dtype=current.dtype)
        setattr(pipeline, denoiser, module.to(current.device))
    return pipeline


@dataclass
class BaseComparison:
    """A trained model against its base on the same prompts and seeds: one `PairedComparison` per reward.

    Attributes:
        comparisons: reward name -> `PairedComparison` (trained minus base).
        prompts, seeds: what was generated.
        grid: base (top row) and trained (bottom row) images of the first prompts at the first seed.
    """

    comparisons: dict[str, PairedComparison]
    prompts: list[str]
    seeds: list[int]
    grid: Image.Image | None = None
    trained_result: EvaluationResult | None = field(default=None, repr=False)
    base_result: EvaluationResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: per reward, gain with its interval, win rate, p-value, means; the prompts and seeds."""
        return {
            "rewards": {name: comparison.to_dict() for name, comparison in self.comparisons.items()},
            "n_prompts": len(self.prompts),
            "seeds": list(self.seeds),
            "prompts": list(self.prompts),
        }

    def summary(self) -> str:
        """One line per reward: gain [CI], win rate and p-value; the answer to "did training help?"."""
        lines = []
        for name, c in self.comparisons.items():
            verdict = "no significant change" if not c.significant else "better" if c.gain > 0 else "worse"
            lines.append(
                f"{name}: {c.mean_b:.4g} -> {c.mean_a:.4g}, gain {c.gain:+.4g} "
                f"[{c.gain_ci[0]:+.4g}, {c.gain_ci[1]:+.4g}] ({c.confidence_level:.0%} CI), win rate "
                f"{c.win_rate:.1%}, p = {c.p_value:.3g}: {verdict}"
            )
        return "\n".join(lines)


def compare_with_base(
    trained: Callable[..., Any],
    base: Callable[..., Any] | EvaluationResult,
    prompts: Sequence[str],
    reward_funcs: Callable | Sequence[Callable],
    seeds: Sequence[int] = (0, 1, 2),
    batch_size: int = 8,
    confidence_level: float = 0.95,
    n_resamples: int = 9999,
    bootstrap_seed: int = 0,
    grid_prompts: int = 6,
    **pipeline_kwargs: Any,
) -> BaseComparison:
    """Did training help? Every reward's paired gain (trained minus base) with CI, win rate and p-value.

    Each pipeline generates its `len(seeds) x len(prompts)` images once (the same seeds, so the same starting
    noise) and every reward scores them; `paired_comparison` does the statistics. `grid_prompts` (0: none) of the
    first prompts are put side by side in `grid`.

    `base` may also be the `EvaluationResult` of an earlier `evaluate_pipeline(base, prompts, reward_funcs,
    seeds=seeds, return_images=True, ...)` with the same prompts, seeds and rewards, so several trained models
    are compared with one rendering of the base (the demo does this); the returned `trained_result` and
    `base_result` hold every score for further comparisons.
    """
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if not funcs:
        raise ValueError("compare_with_base needs at least one reward function")
    names = [reward_name(f) for f in funcs]
    if isinstance(base, EvaluationResult):
        _check_base_result(base, names, len(seeds), len(prompts))
    pipelines = (trained,) if isinstance(base, EvaluationResult) else (trained, base)
    results = [
        evaluate_pipeline(pipeline, prompts, funcs, seeds=seeds, batch_size=batch_size, return_images=True,
                          **pipeline_kwargs)
        for pipeline in pipelines
    ]  # fmt: skip
    if isinstance(base, EvaluationResult):
        results.append(base)
    comparisons = {
        name: paired_comparison(results[0].scores[name], results[1].scores[name], confidence_level=confidence_level,
                                n_resamples=n_resamples, seed=bootstrap_seed)
        for name in names
    }  # fmt: skip
    grid = None
    k = min(grid_prompts, len(prompts))
    if k > 0 and results[1].images:
        grid = image_grid(
            [results[1].images[0][:k], results[0].images[0][:k]], row_labels=["base", "trained"],
            column_labels=list(prompts[:k]),
        )  # fmt: skip
    return BaseComparison(comparisons=comparisons, prompts=list(prompts), seeds=list(seeds), grid=grid,
                          trained_result=results[0], base_result=results[1])  # fmt: skip


def _check_base_result(result: EvaluationResult, names: Sequence[str], n_seeds: int, n_prompts: int) -> None:
    """A precomputed base must hold every reward's scores for exactly these seeds x prompts."""
    for name in names:
        rows = result.scores.get(name)
        if rows is None:
            raise ValueError(f"the base EvaluationResult has no scores for reward {name!r} (it has "
                             f"{sorted(result.scores)}): evaluate the base with the same rewards")  # fmt: skip
        shape = (len(rows), *{len(row) for row in rows})
        if shape != (n_seeds, n_prompts):
            raise ValueError(f"the base EvaluationResult's {name!r} scores are {shape} (seeds, prompts), expected "
                             f"({n_seeds}, {n_prompts}): evaluate the base on the same prompts and seeds")  # fmt: skip


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    cell_size: int | None = None,
    label_width: int = 130,
) -> Image.Image:
    """A labelled grid: `rows[i][j]` at row i, column j (e.g. methods x prompts), cells resized to `cell_size`.

    Column labels (e.g. prompts) are shown whole, wrapped to the cell width; cells are resized with
    nearest-neighbour sampling so small images stay sharp.
    """
    import textwrap

    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one row with one image")
    n_cols = len(rows[0])
    if any(len(row) != n_cols for row in rows):
        raise ValueError(f"every row needs {n_cols} images, got {[len(row) for row in rows]}")
    for labels, count, what in ((row_labels, len(rows), "row"), (column_labels, n_cols, "column")):
        if labels is not None and len(labels) != count:
            raise ValueError(f"got {len(labels)} {what} labels for {count} {what}s")
    size = cell_size or rows[0][0].width
    line_height = 12  # PIL's default bitmap font is about 11 px high
    chars = max(4, (size - 4) // 6)
    wrapped = [textwrap.wrap(str(label), chars) or [""] for label in column_labels] if column_labels else []
    left = label_width if row_labels else 0
    top = (max(len(lines) for lines in wrapped) * line_height + 6) if wrapped else 0
    grid = Image.new("RGB", (left + n_cols * size, top + len(rows) * size), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            resized = image.convert("RGB").resize((size, size), Image.NEAREST)
            grid.paste(resized, (left + j * size, top + i * size))
        if row_labels:
            for k, line in enumerate(textwrap.wrap(str(row_labels[i]), max(4, (label_width - 8) // 6))):
                draw.text((4, top + i * size + size // 2 - 6 + k * line_height), line, fill="black")
    for j, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            draw.text((left + j * size + 2, 3 + k * line_height), line, fill="black")
    return grid


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    r"""Exponential moving average with bias correction, $m_k = w m_{k-1} + (1 - w) y_k$, $\hat m_k = m_k/(1-w^k)$.

    TensorBoard's smoothing; `weight=0` returns the values unchanged.
    """
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, m = [], 0.0
    for k, y in enumerate(values, start=1):
        m = weight * m + (1 - weight) * y
        out.append(m / (1 - weight**k))
    return out


def plot_curves(
    panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]],
    smoothing: float = 0.9,
    x_label: str = "step",
):
    """Training curves with matplotlib: one panel per `{title: {series: [(x, y), ...]}}`, raw and smoothed.

    Each series is drawn faint (raw) with its exponential moving average on top (`smooth`). Returns a
    `matplotlib.figure.Figure` (save it with `figure.savefig(path)`); series with no points are listed as
    "(no data)".
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * max(1, len(panels)), 3.6), layout="constrained")
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels.items()):
        for k, (name, points) in enumerate(series.items()):
            points = [(x, y) for x, y in points if math.isfinite(y)]
            color = f"C{k}"
            if not points:
                ax.plot([], [], color=color, label=f"{name} (no data)")
                continue
            xs, ys = zip(*points)
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
            ax.plot(xs, smooth(ys, smoothing), color=color, linewidth=2, label=name)
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return figure


def plot_gains(
    gains: Mapping[str, tuple[float, Sequence[float]]],
    title: str = "",
    y_label: str = "gain over base",
):
    """A bar chart of `{label: (gain, [low, high])}` with the confidence intervals as error bars (matplotlib).

    Bars whose interval excludes zero are drawn solid, the others hatched. Returns a `matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    labels = list(gains)
    figure = Figure(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.6), layout="constrained")
    ax = figure.subplots()
    values = [gains[label][0] for label in labels]
    lows = [gains[label][0] - gains[label][1][0] for label in labels]
    highs = [gains[label][1][1] - gains[label][0] for label in labels]
    bars = ax.bar(labels, values, yerr=[lows, highs], capsize=4, color=[f"C{k}" for k in range(len(labels))])
    for bar, label in zip(bars, labels):
        low, high = gains[label][1]
        if not (low > 0 or high < 0):
            bar.set_alpha(0.45)
            bar.set_hatch("//")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20)
    ax.grid(axis="y", alpha=0.3)
    return figure
