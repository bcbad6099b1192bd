"""Draw the shapes base model's generations next to the ground truth (docs/images/shapes_base.png).

    python examples/shapes/base_figure.py --output docs/images/shapes_base.png [--model FOLDER]

Four dev prompts (held out from pretraining, never a reporting split) and four train prompts, each sampled once from
seed 0 at the demo's 20 DDIM steps and guidance 5, each above its ground-truth render. Refuses to overwrite a file.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from trl_rpo.shapes import load_pipeline, render
from trl_rpo.shapes.world import prompts

CELL, LABEL, CAPTION = 96, 120, 56


def base_figure(pipe, per_split: int = 4, seed: int = 0, guidance_scale: float = 5.0) -> Image.Image:
    """A grid: for each split (dev, then train) a row of generations and a row of ground-truth renders."""
    splits = {"dev": prompts(per_split, seed=seed, split="dev"), "train": prompts(per_split, seed=seed, split="train")}
    figure = Image.new("RGB", (LABEL + per_split * CELL, len(splits) * (CAPTION + 2 * CELL)), "white")
    draw = ImageDraw.Draw(figure)
    for block, (split, texts) in enumerate(splits.items()):
        top = block * (CAPTION + 2 * CELL)
        generator = [torch.Generator().manual_seed(seed + i) for i in range(len(texts))]
        images = pipe(texts, num_inference_steps=20, guidance_scale=guidance_scale, generator=generator).images
        draw.text((4, top + CAPTION + CELL // 2), f"{split} generated", fill="black")
        draw.text((4, top + CAPTION + 3 * CELL // 2), "ground truth", fill="black")
        for column, (text, image) in enumerate(zip(texts, images)):
            left = LABEL + column * CELL
            draw.multiline_text((left + 2, top + 2), "\n".join(textwrap.wrap(text, 18)[:4]), fill="black")
            figure.paste(image.resize((CELL - 4, CELL - 4), Image.NEAREST), (left + 2, top + CAPTION + 2))
            truth = render(text, size=CELL - 4, seed=seed)
            figure.paste(truth, (left + 2, top + CAPTION + CELL + 2))
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write (never overwritten)")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped shapes base model)")
    args = parser.parse_args()
    if args.output.exists():
        raise SystemExit(f"{args.output} exists; remove it first or choose another path")
    pipe = load_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    base_figure(pipe).save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
