"""RichPreferenceDataBuilder on tiny models: pairs/s and the share of time each stage takes.

Not a test: it prints figures. Stages run in batches (generate a batch, critique it, edit it, verify it), and the
builder times each stage call; "write" is saving finished shards. Two generators are measured side by side, each
with the shapes-world critic and editor and a reward-margin verifier (`alignment_score`) plus a change guard:

* `shapes`: `ShapesGenerator`, which renders the prompt with deliberate mistakes (no model, 64 px);
* `tiny-sd`: `trl_rpo.testing.tiny_sd_pipeline` (a random ~1M-parameter SD 1.5 UNet, 32 px). Its images are noise
  to the shapes critic, so most edits repaint the picture; what matters here is the generation cost.

    python benchmarks/bench_builder.py                      # 32 prompts x 2 images each, both generators
    python benchmarks/bench_builder.py --prompts 128 --batch-size 16 --generators shapes
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from trl_rpo.data import (
    ChangeGuard,
    RewardMarginVerifier,
    RichPreferenceConfig,
    RichPreferenceDataBuilder,
)
from trl_rpo.shapes import Critic, Editor, ShapesGenerator, alignment_score, prompts
from trl_rpo.testing import tiny_sd_pipeline

STAGES = ("generate", "critique", "edit", "verify", "write")


class RemoteCritic:
    """The shapes critic behind a simulated network round trip (a VLM server answering a batch)."""

    def __init__(self, latency: float):
        self.critic, self.latency = Critic(), latency

    def __call__(self, images, prompts):
        time.sleep(self.latency)  # waiting on a server: the CPU is free for the generator
        return self.critic(images, prompts)


def run(generator_name: str, args: argparse.Namespace, critic=None, overlap: bool = False) -> dict:
    """One fresh build; its counts, per-stage seconds and throughput."""
    generator = ShapesGenerator() if generator_name == "shapes" else tiny_sd_pipeline(seed=0)
    with tempfile.TemporaryDirectory() as out:
        builder = RichPreferenceDataBuilder(
            generator=generator,
            critic=critic or Critic(),
            editor=Editor(),
            verifier=[RewardMarginVerifier(alignment_score), ChangeGuard(max_change=1.0)],
            args=RichPreferenceConfig(
                output_dir=out,
                images_per_prompt=args.images_per_prompt,
                shard_size=args.shard_size,
                batch_size=args.batch_size,
                num_inference_steps=args.num_inference_steps,
                guidance_scale=3.0,
                disable_tqdm=True,
                overlap_generation=overlap,
            ),
        )
        start = time.perf_counter()
        dataset = builder.build(prompts(args.prompts, seed=0))
        wall = time.perf_counter() - start
    return {"name": generator_name, "wall": wall, "pairs": len(dataset), "stats": builder.stats, **builder.timings}


def report(result: dict) -> None:
    staged = sum(result[s] for s in STAGES)
    counts = result["stats"]
    print(
        f"\n{result['name']}: {result['pairs']} pairs from {counts['images']} images in {result['wall']:.2f} s "
        f"-> {result['pairs'] / result['wall']:.1f} pairs/s, {counts['images'] / result['wall']:.1f} images/s"
    )
    print(
        f"  counts: no_edit {counts['no_edit']}, edit_failed {counts['edit_failed']}, "
        f"rejected {counts['rejected']} {counts['rejected_by']}, kept {counts['kept']}"
    )
    print(f"  {'stage':<10}{'seconds':>10}{'share':>9}")
    for stage in STAGES:
        print(f"  {stage:<10}{result[stage]:>10.3f}{result[stage] / result['wall']:>9.1%}")
    other = result["wall"] - staged
    print(f"  {'other':<10}{other:>10.3f}{other / result['wall']:>9.1%}   (manifest, merge, load)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--num-inference-steps", type=int, default=4)
    parser.add_argument("--generators", nargs="+", default=["shapes", "tiny-sd"], choices=["shapes", "tiny-sd"])
    parser.add_argument(
        "--remote-latency", type=float, default=0.3, help="seconds a simulated VLM server takes per batch (0: skip)"
    )
    args = parser.parse_args()
    logging.getLogger("trl_rpo").setLevel(logging.WARNING)
    print(
        f"{args.prompts} prompts x {args.images_per_prompt} images, batch {args.batch_size}, "
        f"shard {args.shard_size} prompts, {args.num_inference_steps} denoising steps (tiny-sd)"
    )
    run("shapes", args)  # warm-up: imports, first-call overheads
    for name in args.generators:
        report(run(name, args))
    if args.remote_latency > 0 and "tiny-sd" in args.generators:
        # A critic that waits on a server leaves the generator idle unless the stages overlap.
        critic = RemoteCritic(args.remote_latency)
        sequential = run("tiny-sd", args, critic=critic)
        overlapped = run("tiny-sd", args, critic=critic, overlap=True)
        print(f"\ntiny-sd with a critic answering each batch after {args.remote_latency * 1000:.0f} ms:")
        for label, result in (("sequential", sequential), ("overlap_generation", overlapped)):
            print(f"  {label:<19} {result['pairs'] / result['wall']:6.1f} pairs/s  ({result['wall']:.2f} s)")
        print(f"  speed-up from overlapping: {sequential['wall'] / overlapped['wall']:.2f}x")


if __name__ == "__main__":
    main()
