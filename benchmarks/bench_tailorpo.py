"""TailorPO on the tiny models: sampling and training throughput, and reward curves against the final-image baseline.

Not a test: it prints figures. Both methods run in this one process, side by side, on the same tiny pipeline,
reward, learning rate and budget of generated trajectories (final images), so the comparison holds even on a
noisy machine.

    python benchmarks/bench_tailorpo.py                       # SD 1.5 and SDXL throughput + SD 1.5 reward curves
    python benchmarks/bench_tailorpo.py --steps 40 --seeds 0 1 2

Budget: TailorPO samples one trajectory per prompt and branches K candidates at the selected steps;
`pairing="final"` (D3PO/SPO-style) needs two trajectories per prompt to compare final images. With the same
number of trajectories per optimizer step (`--trajectories`), the baseline therefore sees half as many prompts.
The reward is mean image brightness (a reward the tiny models can learn); "held-out" is the mean reward of
images generated from fixed seeds that training never sees.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback

from trl_rpo import TailorPOConfig, TailorPOTrainer
from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline, tiny_sdxl_pipeline

PROMPTS = ["a red square", "a blue circle", "a green triangle", "a yellow star", "a white cloud", "a black cat"]
HELD_OUT = ["a purple flower", "an orange car"]


def brightness(images, prompts, **kwargs):
    return [float(np.asarray(image, dtype=np.float32).mean() / 255.0) for image in images]


def make_trainer(model: str, pairing: str, prompts_per_step: int, args: argparse.Namespace, out: str, seed: int):
    pipe = (tiny_sdxl_pipeline if model == "sdxl" else tiny_sd_pipeline)(seed=0)
    config = TailorPOConfig(
        output_dir=out,
        max_steps=args.steps,
        per_device_train_batch_size=prompts_per_step,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=2.0,
        num_candidates=args.num_candidates,
        pairing=pairing,
        timestep_selection="all",
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        beta=args.beta,
        clip_range=None,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=seed,
    )
    dataset = Dataset.from_dict({"prompt": PROMPTS * 50})
    return TailorPOTrainer(
        pipe, reward_funcs=brightness, args=config, train_dataset=dataset, peft_config=tiny_lora_config()
    )


@torch.no_grad()
def held_out_reward(trainer: TailorPOTrainer, args: argparse.Namespace) -> float:
    generator = torch.Generator().manual_seed(1234)
    images = trainer.pipeline(
        HELD_OUT * args.held_out_images, num_inference_steps=args.num_inference_steps, guidance_scale=2.0,
        generator=generator, output_type="pil",
    ).images  # fmt: skip
    return float(np.mean(brightness(images, None)))


class RewardCurve(TrainerCallback):
    def __init__(self, trainer: TailorPOTrainer, args: argparse.Namespace):
        self.trainer, self.args, self.points = trainer, args, []

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.args.eval_every == 0:
            self.points.append(held_out_reward(self.trainer, self.args))


def throughput(model: str, args: argparse.Namespace) -> dict[str, float]:
    """Images/s of rollouts (sampling with candidates and rewards) and optimizer steps/s (sampling + training)."""
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(model, "best_worst", args.trajectories, args, out, seed=0)
        prompts = PROMPTS[: args.trajectories]
        trainer.sample_pairs(prompts)  # warm-up
        start = time.perf_counter()
        for _ in range(args.throughput_rollouts):
            trainer.sample_pairs(prompts)
        sampling = time.perf_counter() - start
        trainer.args.max_steps = args.throughput_steps
        trainer.train()
        logs = [e for e in trainer.state.log_history if "time/training_s" in e][1:]  # skip the warm-up step
        step_s = statistics.mean(e["time/sampling_s"] + e["time/training_s"] for e in logs)
        train_s = statistics.mean(e["time/training_s"] for e in logs)
        pairs = statistics.mean(e["pairs/count"] for e in logs)
    return {
        "samples_per_s": args.throughput_rollouts * len(prompts) / sampling,
        "steps_per_s": 1.0 / step_s,
        "train_pass_per_s": 1.0 / train_s,
        "pairs_per_step": pairs,
    }


def reward_curves(args: argparse.Namespace) -> dict[str, list[list[float]]]:
    curves: dict[str, list[list[float]]] = {"tailorpo": [], "final": []}
    for seed in args.seeds:
        for method, prompts_per_step in (("tailorpo", args.trajectories), ("final", args.trajectories // 2)):
            with tempfile.TemporaryDirectory() as out:
                torch.manual_seed(seed)
                trainer = make_trainer("sd15", "final" if method == "final" else "best_worst", prompts_per_step,
                                       args, out, seed)  # fmt: skip
                curve = RewardCurve(trainer, args)
                curve.points.append(held_out_reward(trainer, args))
                trainer.add_callback(curve)
                trainer.train()
                curves[method].append(curve.points)
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--steps", type=int, default=24, help="Optimizer steps of each reward-curve run.")
    parser.add_argument("--eval-every", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--trajectories", type=int, default=4, help="Trajectories (final images) per step.")
    parser.add_argument("--num-inference-steps", type=int, default=6)
    parser.add_argument("--num-candidates", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--beta", type=float, default=50.0)
    parser.add_argument("--held-out-images", type=int, default=4, help="Images per held-out prompt.")
    parser.add_argument("--throughput-rollouts", type=int, default=3)
    parser.add_argument("--throughput-steps", type=int, default=4)
    parser.add_argument("--skip-curves", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable figures on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"K={args.num_candidates}, {args.num_inference_steps} DDIM steps, all steps branch, "
          f"{args.trajectories} trajectories per step")  # fmt: skip
    print("\nmodel  rollout images/s  optimizer steps/s  training pass/s  pairs/step")
    for model in args.models:
        t = throughput(model, args)
        print(f"{model:<6} {t['samples_per_s']:>16.2f}  {t['steps_per_s']:>17.3f}  {t['train_pass_per_s']:>15.2f}  "
              f"{t['pairs_per_step']:>10.1f}")  # fmt: skip

    if args.skip_curves:
        return
    curves = reward_curves(args)
    print(f"\nHeld-out brightness reward (SD 1.5, mean over seeds {args.seeds}); same trajectories per step:")
    print("trajectories  TailorPO  final-image baseline  TailorPO gain")
    tailor = np.mean(np.array(curves["tailorpo"]), axis=0)
    final = np.mean(np.array(curves["final"]), axis=0)
    for i, (a, b) in enumerate(zip(tailor, final)):
        budget = i * args.eval_every * args.trajectories
        print(f"{budget:>12}  {a:>8.4f}  {b:>20.4f}  {a - tailor[0]:>+8.4f} vs {b - final[0]:+.4f}")
    print(f"\nreward gain after {args.steps} steps: TailorPO {tailor[-1] - tailor[0]:+.4f}, "
          f"final-image baseline {final[-1] - final[0]:+.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
