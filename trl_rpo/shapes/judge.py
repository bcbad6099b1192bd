r"""An independent judge of the shapes world: a small CNN trained only on ground-truth renders.

`alignment_score` (trl_rpo/shapes/evaluate.py) is the verifier of RPO pairs, the labeller of reward pairs, the
online methods' reward and the evaluation, so a method could learn its detector's quirks and look better than it
is. This judge shares none of that code path: it is a learned classifier that never sees a generated image, and
nothing in trl-rpo uses it to build pairs, label pairs, reward rollouts or choose a recipe; it only scores.

What it predicts (unconditionally, from the image alone): the background (3 classes) and, for each of the 24
(color, shape) kinds, how many objects of that kind there are (0, 1, 2, 3, 4 or more) and which of the five
regions hold at least one of them. A prompt's six attributes (`trl_rpo.shapes.evaluate.ATTRIBUTES`) are then read
off that structure with the same definitions as `check_attributes`:

- background: the predicted background; color / shape: some kind of that color / shape is present;
- count: the prompt's kind has exactly the prompt's count; position: it is present and occupies the prompt's
  region only; exclusive: no other kind is present.

`judge_alignment` is the fraction of the six that hold (the convention of `alignment_score`); `strict_accuracy` is
GenEval's per-image "all attributes right" (Ghosh, Hajishirzi & Schmidt, 2023, "GenEval: An Object-Focused
Framework for Evaluating Text-to-Image Alignment", NeurIPS D&B).

Training data (`make_training_set`): renders (`trl_rpo.shapes.render`) of a random scene, half of them with one
or two distractor groups composited in other regions (so wrong colors, shapes, counts and extra objects occur),
a few empty canvases; render seeds start at 10**7 (the base model's pretraining used seeds below 10**4) and the
held-out check uses seeds from 2 * 10**7. Augmentations push the renders towards what a diffusion model draws:
the base model's own autoencoder round trip (encode, decode) on half the images, Gaussian blur, colour jitter
(brightness, contrast, per-channel shift, which also tints backgrounds) and pixel noise. `train_judge(seed=0)`
reproduces the shipped weights (`JUDGE_PATH`, safetensors) in a few CPU-minutes:

    python -m trl_rpo.shapes.judge --output-dir trl_rpo/shapes/judge_checkpoint
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import ATTRIBUTES
from .world import BACKGROUNDS, PALETTE, POSITIONS, SHAPES, Scene, parse_prompt

__all__ = [
    "ATTRIBUTES",
    "JUDGE_DIR",
    "JUDGE_PATH",
    "JudgeConfig",
    "KINDS",
    "Judge",
    "agreement",
    "attribute_bits",
    "bits_score",
    "judge_alignment",
    "judge_attributes",
    "judge_report",
    "load_judge",
    "make_training_set",
    "strict_accuracy",
    "train_judge",
]

JUDGE_DIR = Path(__file__).parent / "judge_checkpoint"
JUDGE_PATH = JUDGE_DIR / "judge.safetensors"
KINDS: tuple[tuple[str, str], ...] = tuple((color, shape) for color in PALETTE for shape in SHAPES)
_BACKGROUNDS = tuple(BACKGROUNDS)
MAX_COUNT = 4  # a region's count classes are 1, 2, 3 and "4 or more"
_COLORS = tuple(PALETTE)
_SLOT = len(PALETTE) + 1 + len(SHAPES) + MAX_COUNT  # per region: color or none, shape, count
TRAIN_SEED_OFFSET = 10**7
HELD_OUT_SEED_OFFSET = 2 * 10**7


@dataclass
class JudgeConfig:
    """How the judge is trained (`train_judge`); the shipped weights use the defaults."""

    seed: int = field(default=0, metadata={"help": "Seed of the scenes, layouts, augmentations and initialisation."})
    images: int = field(default=16_000, metadata={"help": "Training renders."})
    steps: int = field(default=1500, metadata={"help": "AdamW steps."})
    batch_size: int = field(default=128, metadata={"help": "Images per step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate (cosine decay)."})
    size: int = field(default=32, metadata={"help": "Image side in pixels (the base model's resolution)."})
    autoencoder_fraction: float = field(
        default=0.5, metadata={"help": "Share of renders passed through the base model's VAE (0: none)."}
    )
    distractor_probability: float = field(default=0.5, metadata={"help": "Share of renders with distractors."})
    empty_probability: float = field(default=0.03, metadata={"help": "Share of empty canvases."})
    held_out: int = field(default=2000, metadata={"help": "Held-out renders of the accuracy check after training."})


def _build_network(size: int = 32):
    import torch
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    side = size // 8
    outputs = len(_BACKGROUNDS) + len(POSITIONS) * _SLOT
    network = nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2),
        *block(32, 64), nn.MaxPool2d(2),
        *block(64, 96), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(96 * side * side, 256), nn.ReLU(inplace=True), nn.Dropout(0.1),
        nn.Linear(256, outputs),
    )  # fmt: skip
    return network.to(torch.float32)


def _split_logits(logits):
    """Background logits `[n, 3]` and, per region `[n, 5, .]`: color (none + 6), shape (4), count (1-3, 4+)."""
    n_bg, n_colors = len(_BACKGROUNDS), len(PALETTE) + 1
    slots = logits[:, n_bg:].reshape(-1, len(POSITIONS), _SLOT)
    return (
        logits[:, :n_bg],
        slots[..., :n_colors],
        slots[..., n_colors : n_colors + len(SHAPES)],
        slots[..., n_colors + len(SHAPES) :],
    )


@dataclass
class Structure:
    """A scene's structure as the judge sees it: background, count per kind, regions per kind."""

    background: str
    counts: dict[tuple[str, str], int]
    regions: dict[tuple[str, str], frozenset[str]]


def _attributes_of(structure: Structure, scene: Scene) -> dict[str, bool]:
    """The six `ATTRIBUTES` of `scene` in a structure (the definitions of `check_attributes`)."""
    present = {kind for kind, n in structure.counts.items() if n > 0}
    target = (scene.color, scene.shape)
    n_target = structure.counts.get(target, 0)
    return {
        "background": structure.background == scene.background,
        "color": any(color == scene.color for color, _ in present),
        "shape": any(shape == scene.shape for _, shape in present),
        "count": n_target == scene.count,
        "position": n_target > 0 and structure.regions.get(target, frozenset()) == frozenset({scene.position}),
        "exclusive": present <= {target},
    }


def _compose(groups: Sequence[Scene], size: int, seed: int) -> np.ndarray | None:
    """Renders of several groups on one background, or None when two groups touch (ambiguous ground truth)."""
    from .render import render

    canvas = np.asarray(render(groups[0], size=size, seed=seed)).copy()
    background = np.array(BACKGROUNDS[groups[0].background], dtype=np.uint8)
    occupied = (canvas != background).any(axis=-1)
    for k, group in enumerate(groups[1:], start=1):
        pixels = np.asarray(render(group, size=size, seed=seed + 7919 * k))
        mask = (pixels != background).any(axis=-1)
        grown = mask.copy()  # one empty pixel between groups, as the renderer keeps between objects
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        if (grown & occupied).any():
            return None
        canvas[mask] = pixels[mask]
        occupied |= mask
    return canvas


def _structure_of(groups: Sequence[Scene], background: str) -> Structure:
    counts: dict[tuple[str, str], int] = {}
    regions: dict[tuple[str, str], set[str]] = {}
    for group in groups:
        kind = (group.color, group.shape)
        counts[kind] = counts.get(kind, 0) + group.count
        regions.setdefault(kind, set()).add(group.position)
    return Structure(background, counts, {k: frozenset(v) for k, v in regions.items()})


def _random_group(rng: random.Random, background: str, taken: set[str]) -> Scene:
    position = rng.choice([p for p in POSITIONS if p not in taken])
    return Scene(rng.choice(SHAPES), rng.choice(list(PALETTE)), rng.choice((1, 2, 3)), position, background)


def make_training_set(
    n: int,
    seed: int = 0,
    size: int = 32,
    distractor_probability: float = 0.5,
    empty_probability: float = 0.03,
    seed_offset: int = TRAIN_SEED_OFFSET,
) -> tuple[np.ndarray, list[tuple[str, tuple[Scene, ...]]]]:
    """`n` ground-truth composites `[n, size, size, 3]` (uint8) and their layouts `(background, groups)`.

    Each is one random scene's render; with `distractor_probability`, one or two more groups (any kind, another
    region, not touching) are composited in; with `empty_probability`, a bare background. Render seeds are
    `seed_offset + i`, so sets made with different offsets share no layout.
    """
    rng = random.Random(f"judge:{seed}:{seed_offset}")
    images: list[np.ndarray] = []
    layouts: list[tuple[str, tuple[Scene, ...]]] = []
    while len(images) < n:
        background = rng.choice(_BACKGROUNDS)
        render_seed = seed_offset + len(images) * 13 + rng.randrange(13)
        if rng.random() < empty_probability:
            images.append(np.full((size, size, 3), BACKGROUNDS[background], dtype=np.uint8))
            layouts.append((background, ()))
            continue

        groups = [_random_group(rng, background, set())]
        if rng.random() < distractor_probability:
            for _ in range(1 if rng.random() < 0.75 else 2):
                groups.append(_random_group(rng, background, {g.position for g in groups}))
        canvas = _compose(groups, size, render_seed)
        if canvas is None:
            continue
        images.append(canvas)
        layouts.append((background, tuple(groups)))
    return np.stack(images), layouts


def _targets(layouts: Sequence[tuple[str, tuple[Scene, ...]]]):
    """Training targets of (background, {region: group}) layouts: indices, with -100 where a slot is empty."""
    import torch

    n, regions = len(layouts), len(POSITIONS)
    background = torch.tensor([_BACKGROUNDS.index(bg) for bg, _ in layouts])
    color = torch.zeros(n, regions, dtype=torch.long)  # 0: no group in the region
    shape = torch.full((n, regions), -100, dtype=torch.long)
    count = torch.full((n, regions), -100, dtype=torch.long)
    for i, (_, groups) in enumerate(layouts):
        for group in groups:
            r = POSITIONS.index(group.position)
            color[i, r] = 1 + _COLORS.index(group.color)
            shape[i, r] = SHAPES.index(group.shape)
            count[i, r] = min(group.count, MAX_COUNT) - 1
    return background, color, shape, count


def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _autoencode(pixels, fraction: float, generator, log) -> None:
    """Pass a random `fraction` of `pixels` (in [-1, 1], in place) through the shipped base model's VAE."""
    import torch
    from diffusers import AutoencoderKL

    from .model import CHECKPOINT_DIR

    if fraction <= 0:
        return
    vae = AutoencoderKL.from_pretrained(CHECKPOINT_DIR / "vae", local_files_only=True, use_safetensors=True).eval()
    chosen = torch.nonzero(torch.rand(len(pixels), generator=generator) < fraction).flatten()
    start = time.perf_counter()
    with torch.no_grad():
        for k in range(0, len(chosen), 512):
            index = chosen[k : k + 512]
            latents = vae.encode(pixels[index]).latent_dist.mode()
            pixels[index] = vae.decode(latents).sample.clamp(-1, 1)
    log(f"autoencoder round trip on {len(chosen)} renders ({time.perf_counter() - start:.0f} s)")


def _augment(batch, generator):
    """Blur, colour jitter (brightness, contrast, per-channel shift), pixel noise; `batch` in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    n = len(batch)

    def uniform(low: float, high: float, *shape: int):
        return low + (high - low) * torch.rand(n, *shape, generator=generator)

    sigma = uniform(0.0, 1.0) * (torch.rand(n, generator=generator) < 0.5)
    offsets = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [n, 5], separable
    x = batch.reshape(1, n * 3, *batch.shape[2:])
    k = kernel.repeat_interleave(3, dim=0)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=n * 3)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=n * 3)
    x = x.reshape_as(batch)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(0.8, 1.2, 1, 1, 1) + mean + uniform(-0.15, 0.15, 1, 1, 1)
    x = x + uniform(-0.1, 0.1, 3, 1, 1)
    x = x + uniform(0.0, 0.08, 1, 1, 1) * torch.randn(x.shape, generator=generator)
    return x.clamp(-1.0, 1.0)


def _loss(logits, targets):
    import torch.nn.functional as F

    background, color, shape, count = _split_logits(logits)
    t_background, t_color, t_shape, t_count = targets
    present = (t_color > 0).sum().clamp_min(1)
    return (
        F.cross_entropy(background, t_background)
        + F.cross_entropy(color.reshape(-1, color.shape[-1]), t_color.reshape(-1)) * len(POSITIONS)
        + F.cross_entropy(shape.reshape(-1, len(SHAPES)), t_shape.reshape(-1), reduction="sum") / present
        + F.cross_entropy(count.reshape(-1, MAX_COUNT), t_count.reshape(-1), reduction="sum") / present
    )


def train_judge(config: JudgeConfig | None = None, log=print) -> tuple[Any, dict[str, Any]]:
    """Train the judge from scratch (single CPU thread, deterministic for `config.seed`); returns (network, info).

    `info` holds the config, the final loss, the wall time and the attribute accuracy on held-out renders
    (`held_out_accuracy`: 2000 composites whose render seeds were never used in training).
    """
    import torch

    config = config or JudgeConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(config.seed)
        generator = torch.Generator().manual_seed(config.seed)
        start = time.perf_counter()
        images, layouts = make_training_set(
            config.images, seed=config.seed, size=config.size, distractor_probability=config.distractor_probability,
            empty_probability=config.empty_probability,
        )  # fmt: skip
        pixels = _to_tensor(images)
        _autoencode(pixels, config.autoencoder_fraction, generator, log)
        targets = _targets(layouts)
        network = _build_network(config.size)
        optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=1e-4)
        network.train()
        losses = []
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * 0.5 * (1 + math.cos(math.pi * step / config.steps))
            index = torch.randint(len(pixels), (config.batch_size,), generator=generator)
            batch = _augment(pixels[index], generator)
            loss = _loss(network(batch), tuple(t[index] for t in targets))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if (step + 1) % 250 == 0:
                log(f"judge step {step + 1}/{config.steps} loss {np.mean(losses[-250:]):.4f}")
        network.eval()
        seconds = time.perf_counter() - start
        judge = Judge(network, config.size)
        held_out = held_out_accuracy(judge, n=config.held_out, seed=config.seed)
        autoencoded = held_out_accuracy(judge, n=config.held_out, seed=config.seed, autoencode=True)
        log(f"held-out renders: {held_out}; after the autoencoder round trip: {autoencoded}")
        info = {"config": asdict(config), "final_loss": float(np.mean(losses[-100:])), "train_seconds": round(seconds),
                "torch_threads": 1, "held_out_accuracy": held_out,
                "held_out_autoencoded_accuracy": autoencoded}  # fmt: skip
        return network, info
    finally:
        torch.set_num_threads(threads)


def held_out_accuracy(judge: Judge, n: int = 2000, seed: int = 0, autoencode: bool = False) -> dict[str, float]:
    """Per attribute, and strict, accuracy of the judge on `n` fresh composites (render seeds from 2 * 10**7).

    Each composite is judged against the prompt of one of its kinds, chosen at random (so attributes are true
    and false in realistic proportions: distractors make "exclusive", and sometimes "color" or "shape" true
    for another kind). `autoencode=True` first passes every render through the base model's autoencoder.
    """
    import torch
    from PIL import Image

    from .world import prompt_text

    images, layouts = make_training_set(n, seed=seed, seed_offset=HELD_OUT_SEED_OFFSET, empty_probability=0.0)
    if autoencode:
        pixels = _to_tensor(images)
        _autoencode(pixels, 1.0, torch.Generator().manual_seed(seed), log=lambda message: None)
        images = ((pixels.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    rng = random.Random(seed)
    prompts, truth = [], []
    for background, groups in layouts:
        structure = _structure_of(groups, background)
        kind = rng.choice(sorted(structure.counts))
        scene = Scene(kind[1], kind[0], min(max(1, structure.counts[kind]), 3), sorted(structure.regions[kind])[0],
                      structure.background)  # fmt: skip
        prompts.append(prompt_text(scene))
        truth.append(_attributes_of(structure, scene))
    predicted = judge.attributes([Image.fromarray(a, "RGB") for a in images], prompts)
    out = {name: float(np.mean([p[name] == t[name] for p, t in zip(predicted, truth)])) for name in ATTRIBUTES}
    out["all_attributes"] = float(np.mean([p == t for p, t in zip(predicted, truth)]))
    return {k: round(v, 4) for k, v in out.items()}


class Judge:
    """The trained network with the decoding of its outputs into structures and attributes."""

    def __init__(self, network, size: int = 32):
        self.network = network.eval()
        self.size = size

    def structures(self, images: Sequence[Any], batch_size: int = 256) -> list[Structure]:
        """The predicted structure of each image (PIL images; resized to the judge's side if needed)."""
        import torch
        from PIL import Image

        out: list[Structure] = []
        for start in range(0, len(images), batch_size):
            arrays = [np.asarray(image.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
                                 if image.size != (self.size, self.size) else image.convert("RGB"))
                      for image in images[start : start + batch_size]]  # fmt: skip
            with torch.no_grad():
                background, color, shape, count = _split_logits(self.network(_to_tensor(np.stack(arrays))))
            background, color, shape, count = (t.argmax(-1).tolist() for t in (background, color, shape, count))
            for i in range(len(arrays)):
                groups = [
                    Scene(SHAPES[shape[i][r]], _COLORS[color[i][r] - 1], min(count[i][r] + 1, 3), position, "white")
                    for r, position in enumerate(POSITIONS) if color[i][r] > 0
                ]  # fmt: skip
                structure = _structure_of(groups, _BACKGROUNDS[background[i]])
                for r, group in zip((r for r in range(len(POSITIONS)) if color[i][r] > 0), groups):
                    kind = (group.color, group.shape)
                    structure.counts[kind] += count[i][r] + 1 - group.count  # "4 or more" counts as 4
                out.append(structure)
        return out

    def attributes(self, images: Sequence[Any], prompts: Sequence[str]) -> list[dict[str, bool]]:
        """Per image, which of its prompt's six `ATTRIBUTES` the judge finds satisfied."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
        return [_attributes_of(s, parse_prompt(p)) for s, p in zip(self.structures(images), prompts)]


_CACHE: dict[str, Judge] = {}


def load_judge(path: str | os.PathLike | None = None) -> Judge:
    """The judge from a safetensors file (default: the shipped `JUDGE_PATH`); never unpickles anything.

    Raises:
        FileNotFoundError: naming the file and how to make one.
        ValueError: when the file's tensors do not match the judge's network.
    """
    from safetensors.torch import load_file

    file = Path(path) if path is not None else JUDGE_PATH
    key = str(file.resolve())
    if key in _CACHE:
        return _CACHE[key]
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no judge weights; make them with `python -m trl_rpo.shapes.judge "
                                "--output-dir DIR` or omit the path for the shipped judge")  # fmt: skip
    network = _build_network()
    try:
        state = {k: v.float() for k, v in load_file(str(file)).items()}
    except Exception as err:  # safetensors' own error type: a pickle or a truncated file is refused unread
        message = f"{file} is not a readable safetensors file ({err}); the judge loads safetensors only"
        raise ValueError(message) from err
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{file} does not hold the shapes judge's weights: {err}") from err
    _CACHE[key] = judge = Judge(network)
    return judge


def judge_attributes(images: Sequence[Any], prompts: Sequence[str], judge: Judge | None = None) -> list[dict]:
    """Per image, the judge's verdict on each of its prompt's six attributes (default: the shipped judge)."""
    return (judge or load_judge()).attributes(images, prompts)


def judge_alignment(images: Sequence[Any], prompts: Sequence[str], **kwargs: Any) -> list[float]:
    """Per image, the fraction of its prompt's six attributes that the independent judge finds satisfied.

    The output convention of `alignment_score` (`f(images, prompts, **kwargs) -> list[float]`; a `judge=` keyword
    picks other weights, other keywords are ignored), so it can be passed wherever a reward function goes, for
    evaluation only.
    """
    verdicts = judge_attributes(images, prompts, kwargs.get("judge"))
    return [sum(v.values()) / len(v) for v in verdicts]


def strict_accuracy(verdicts: Sequence[dict[str, bool]]) -> list[float]:
    """GenEval-style strict accuracy per image: 1.0 when every attribute holds, else 0.0."""
    return [float(all(v.values())) for v in verdicts]


def attribute_bits(verdict: dict[str, bool]) -> str:
    """A verdict as a compact string of `ATTRIBUTES` in order, "1" for satisfied, e.g. "110111"."""
    return "".join("1" if verdict[name] else "0" for name in ATTRIBUTES)


def bits_score(bits: str) -> float:
    """The alignment (fraction of satisfied attributes) of an `attribute_bits` string."""
    return bits.count("1") / len(bits)


def agreement(bits_a: Sequence[str], bits_b: Sequence[str]) -> dict[str, Any]:
    """How two judges agree on the same images (`attribute_bits` strings): per attribute, on the whole score,
    on strict accuracy, and the Pearson correlation of the per-image scores (None when either is constant)."""
    if len(bits_a) != len(bits_b) or not bits_a:
        raise ValueError(f"agreement needs two equally long, non-empty verdict lists, got {len(bits_a)} and "
                         f"{len(bits_b)}")  # fmt: skip
    out: dict[str, Any] = {
        name: round(float(np.mean([a[k] == b[k] for a, b in zip(bits_a, bits_b)])), 4)
        for k, name in enumerate(ATTRIBUTES)
    }
    score_a, score_b = np.array([bits_score(a) for a in bits_a]), np.array([bits_score(b) for b in bits_b])
    out["same_score"] = round(float(np.mean(score_a == score_b)), 4)
    out["same_strict"] = round(float(np.mean((score_a == 1) == (score_b == 1))), 4)
    constant = score_a.std() == 0 or score_b.std() == 0
    out["score_correlation"] = None if constant else round(float(np.corrcoef(score_a, score_b)[0, 1]), 4)
    out["images"] = len(bits_a)
    return out


def judge_report(
    scores: dict[str, dict[str, list[list[float]]]],
    judge_bits: dict[str, dict[str, list[list[str]]]],
    base_detector_bits: dict[str, list[list[str]]],
    name: str = "final",
    seed: int = 0,
) -> dict[str, Any]:
    """Alignment by both judges, their agreement on base images and strict accuracy, for a single-seed run.

    `scores[method][name]` are `alignment_score`'s `[seed][prompt]` scores, `judge_bits[method][name]` the
    judge's verdicts on the same images, `base_detector_bits[name]` `alignment_score`'s own checks of the base
    images. Per method: both judges' mean alignment and strict accuracy (all six attributes), and the judge's
    gain over base (`trl_rpo.evaluation.paired_comparison`, bootstrap over prompts); `one_judge_only` flags a
    gain whose interval excludes zero under one judge and not the other.
    """
    from ..evaluation import paired_comparison

    judge_scores = {m: np.vectorize(bits_score)(np.array(sets[name]))
                    for m, sets in judge_bits.items() if name in sets}  # fmt: skip
    detector = {m: np.asarray(sets[name], dtype=float) for m, sets in scores.items() if name in sets}
    methods: dict[str, Any] = {}
    for method in judge_scores:
        row: dict[str, Any] = {
            "alignment_score": round(float(detector[method].mean()), 4),
            "judge_alignment": round(float(judge_scores[method].mean()), 4),
            "alignment_score_strict": round(float((detector[method] == 1.0).mean()), 4),
            "judge_strict": round(float((judge_scores[method] == 1.0).mean()), 4),
        }
        if method != "base" and "base" in judge_scores:
            by_judge = paired_comparison(judge_scores[method], judge_scores["base"], seed=seed)
            by_detector = paired_comparison(detector[method], detector["base"], seed=seed)
            strict = paired_comparison((judge_scores[method] == 1).astype(float),
                                       (judge_scores["base"] == 1).astype(float), seed=seed)  # fmt: skip
            row.update({
                "judge_gain": round(by_judge.gain, 4), "judge_gain_ci": [round(v, 4) for v in by_judge.gain_ci],
                "judge_strict_gain": round(strict.gain, 4),
                "judge_strict_gain_ci": [round(v, 4) for v in strict.gain_ci],
                "one_judge_only": by_judge.significant != by_detector.significant,
            })  # fmt: skip
        methods[method] = row
    report: dict[str, Any] = {"prompts": name, "methods": methods}
    if "base" in judge_bits and name in base_detector_bits:
        flat = [b for row in judge_bits["base"][name] for b in row]
        report["agreement_on_base_images"] = agreement(flat, [b for row in base_detector_bits[name] for b in row])
    report["note"] = (
        "judge: trl_rpo.shapes.judge, a CNN trained only on ground-truth renders, never used to build pairs, label "
        "pairs, reward rollouts or choose a recipe; strict = all six attributes right (GenEval-style); "
        "one_judge_only: the gain over base is significant under one judge only"
    )
    return report


def save_judge(network, info: dict[str, Any], output_dir: str | os.PathLike) -> Path:
    """Write `judge.safetensors` (float16) and `training_info.json` into `output_dir`; returns the weights' path."""
    from safetensors.torch import save_file

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).detach().contiguous()
             for k, v in network.state_dict().items()}  # fmt: skip
    save_file(state, str(folder / "judge.safetensors"), metadata={"format": "pt", "model": "trl_rpo.shapes.judge"})
    (folder / "training_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder / "judge.safetensors"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m trl_rpo.shapes.judge [--output-dir DIR] [--seed 0] [--steps N]`: train and save the judge."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trl_rpo.shapes.judge", description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=str(JUDGE_DIR))
    for f in ("seed", "images", "steps"):
        parser.add_argument(f"--{f}", type=int, default=getattr(JudgeConfig(), f))
    args = parser.parse_args(argv)
    network, info = train_judge(JudgeConfig(seed=args.seed, images=args.images, steps=args.steps))
    print(f"wrote {save_judge(network, info, args.output_dir)} ({info['train_seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
