"""Does the model see each word of its prompt? A word-swap check of a shapes model (issue 28).

A fine-tuning method can only teach an attribute the model can read from its prompt. For each of the prompt's
five words (background, color, shape, count, position), `run_word_check` swaps that word in train prompts for
another value that keeps the scene in the train split, and asks two questions:

- **Does the text encoder tell the two prompts apart?** The relative distance of its outputs,
  ``||E(p) - E(p')||_F / ||E(p)||_F`` over all tokens (`encoder_distance`). A word whose swap moves the encoder's
  output by a fraction of what a color swap does reaches the denoiser as almost nothing.
- **Does the image follow the word?** Both prompts are sampled from the *same* initial noise. ``follows`` is how
  often the image of the swapped prompt passes that attribute's check (`check_attributes`); ``unchanged`` is how
  often the attribute's observed value (`observed_value`: the background, the objects' most common color, shape
  or region, the number of objects) is the same in both images although the prompt changed. Near 1 the noise, not
  the word, decides the attribute; ``pixel_change`` is the mean absolute pixel difference of the two images.

Only train-split scenes are sampled (the swaps are chosen to stay in the train split), so no held-out composition
is looked at. The check also records how often each of `alignment_score`'s checks passes on the unswapped
images (`pass_rates`). Run by `examples/shapes/dev_sweep.py --stage words`; writes `word_check.json/.md`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .analysis import Observation, analyze
from .evaluate import check_attributes
from .world import BACKGROUNDS, COUNTS, PALETTE, POSITIONS, SHAPES, Scene, parse_prompt, prompt_text, split_of

__all__ = ["WORDS", "encoder_distance", "format_word_check", "observed_value", "run_word_check", "swap_word"]

# The prompt's words a swap can change, with the values each takes (`trl_rpo.shapes.world`'s grammar).
WORDS: dict[str, tuple[Any, ...]] = {
    "background": tuple(BACKGROUNDS),
    "color": tuple(PALETTE),
    "shape": SHAPES,
    "count": COUNTS,
    "position": POSITIONS,
}


def swap_word(scene: Scene, word: str) -> Scene | None:
    """The scene with `word` changed to the next of its values (cyclically) that keeps it in the train split;
    None when no other value does."""
    if word not in WORDS:
        raise ValueError(f"unknown word {word!r}; expected one of {list(WORDS)}")
    values = WORDS[word]
    start = values.index(getattr(scene, word))
    for offset in range(1, len(values)):
        swapped = dataclasses.replace(scene, **{word: values[(start + offset) % len(values)]})
        if split_of(swapped) == "train":
            return swapped
    return None


def observed_value(observation: Observation, word: str) -> Any:
    """What an image shows for `word`: its background, its objects' most common color, shape or region, or how many
    objects it has; None for an object attribute when it has no object."""
    if word == "background":
        return observation.background
    if word == "count":
        return len(observation.objects)
    if word not in WORDS:
        raise ValueError(f"unknown word {word!r}; expected one of {list(WORDS)}")
    values = [getattr(o, word) for o in observation.objects]
    return Counter(values).most_common(1)[0][0] if values else None


@torch.no_grad()
def encoder_distance(pipeline, prompts: Sequence[str], others: Sequence[str]) -> list[float]:
    """Per prompt pair, ``||E(p) - E(p')||_F / ||E(p)||_F``: how far apart the text encoder puts the two prompts
    (E: `pipeline.encode_prompt`'s embeddings, every token)."""
    if len(prompts) != len(others):
        raise ValueError(f"got {len(prompts)} prompts and {len(others)} others")
    encode = lambda texts: pipeline.encode_prompt(list(texts), pipeline.device, 1, False)[0].float()  # noqa: E731
    a, b = encode(prompts), encode(others)
    return ((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).tolist()


@torch.no_grad()
def run_word_check(
    pipeline,
    output_dir: str | Path,
    num_prompts: int = 48,
    seed: int = 0,
    guidance_scale: float = 5.0,
    num_inference_steps: int = 20,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Per word, the encoder distance of a swap and how the images of the two prompts differ from one noise (see
    the module docstring). Writes `word_check.json/.md` into `output_dir`, which must be new or empty."""
    from .sweep_files import _new_folder, _write_sweep
    from .world import prompts as shape_prompts

    if num_prompts < 1:
        raise ValueError(f"need at least one prompt, got {num_prompts}")
    output_dir = _new_folder(output_dir)
    pipeline.set_progress_bar_config(disable=True)  # the pipeline is otherwise left as it is (a LoRA stays unfused)
    scenes = [parse_prompt(text) for text in shape_prompts(num_prompts, seed=seed, split="train")]
    size = pipeline.unet.config.sample_size
    shape = (num_prompts, pipeline.unet.config.in_channels, size, size)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    sampling = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "output_type": "np"}

    def sample(texts: list[str], rows: list[int]) -> np.ndarray:
        return pipeline(texts, latents=noise[rows].clone().to(pipeline.device), **sampling).images

    original = sample([prompt_text(s) for s in scenes], list(range(num_prompts)))
    observed = [analyze(image) for image in pipeline.numpy_to_pil(original)]
    # How often each of `alignment_score`'s checks passes on the unswapped images: what the model gets right at all.
    checks = [check_attributes(observation, scene) for observation, scene in zip(observed, scenes)]
    pass_rates = {name: float(np.mean([c[name] for c in checks])) for name in checks[0]}
    rows = []
    for word in WORDS:
        kept = [(i, swapped) for i, scene in enumerate(scenes) if (swapped := swap_word(scene, word)) is not None]
        if not kept:
            continue
        index = [i for i, _ in kept]
        texts = [prompt_text(swapped) for _, swapped in kept]
        images = sample(texts, index)
        follows, unchanged = [], []
        for (i, swapped), image in zip(kept, pipeline.numpy_to_pil(images)):
            observation = analyze(image)
            follows.append(check_attributes(observation, swapped)[word])
            before, after = observed_value(observed[i], word), observed_value(observation, word)
            if before is not None and after is not None:
                unchanged.append(before == after)
        distance = encoder_distance(pipeline, [prompt_text(scenes[i]) for i in index], texts)
        row = {"word": word, "pairs": len(kept), "encoder_distance": float(np.mean(distance)),
               "follows": float(np.mean(follows)), "unchanged": float(np.mean(unchanged)) if unchanged else None,
               "pixel_change": float(np.abs(images - original[index]).mean())}  # fmt: skip
        rows.append(row)
        log(format_word_check({"rows": [row]}).splitlines()[-1])
    results = {"rows": rows, "pass_rates": pass_rates, "num_prompts": num_prompts, "seed": seed,
               "guidance_scale": guidance_scale, "num_inference_steps": num_inference_steps}  # fmt: skip
    return _write_sweep(output_dir, "word_check", results, format_word_check(results), log)


def format_word_check(results: dict[str, Any]) -> str:
    """The check as a markdown table, one row per swapped word."""
    lines = ["| word | pairs | encoder distance | image follows the new word | attribute unchanged | pixel change |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in results["rows"]:
        unchanged = "n/a" if row["unchanged"] is None else f"{row['unchanged']:.2f}"
        lines.append(f"| {row['word']} | {row['pairs']} | {row['encoder_distance']:.3f} | {row['follows']:.2f} | "
                     f"{unchanged} | {row['pixel_change']:.3f} |")  # fmt: skip
    if "pass_rates" in results:
        rates = results["pass_rates"]
        lines += ["", "| unswapped images | " + " | ".join(rates) + " |", "|---" + "|---:" * len(rates) + "|",
                  "| pass rate | " + " | ".join(f"{v:.2f}" for v in rates.values()) + " |"]  # fmt: skip
    return "\n".join(lines)
