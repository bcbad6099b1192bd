"""GRPO's throughput options side by side: seconds per optimizer step of `DiffusionGRPOTrainer` per option.

One tiny seeded SD 1.5-style pipeline (`trl_rpo.testing.tiny_sd_pipeline`, 32 px), 16 images per step in groups of
4, 10 DDIM steps, the same LoRA, prompts and seed; the reward is served over HTTP by the library's own reward server
(`trl_rpo.rewards.remote.make_reward_server`, what `trl-rpo serve-reward` runs) in its own process, taking `--latency`
seconds per image (a reward model on another machine scoring the batch), and read through `RemoteReward`. Rows:

* `baseline`: the defaults (guidance 4.5, every step SDE and trained, the micro-batch sampled and scored at once);
* `chunks of 4, inline`: `rollout_chunk_size=4`, each chunk scored before the next samples;
* `chunks of 4, async_rewards`: the same chunks scored on a background thread while the next samples;
* `guidance 1 (CFG-free)`: no unconditional branch in rollouts or loss;
* `sde_window_size=2`: two SDE steps in the first half, ODE elsewhere, only those trained (Flow-GRPO-Fast).

    python benchmarks/bench_online_options.py                 # ~2 min on 2 cores
    python benchmarks/bench_online_options.py --latency 0.05 --steps 8
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flow_grpo import _steady  # noqa: E402
from gpu_suite import step_clock  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds the reward server takes per image")
    args = parser.parse_args()

    from datasets import Dataset

    from trl_rpo import DiffusionGRPOConfig, DiffusionGRPOTrainer
    from trl_rpo.rewards.remote import RemoteReward
    from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline

    # The reward server runs in its own process, as a remote one would (its PNG decoding and waiting do not share
    # this process's interpreter): the library's server around a mean-brightness scorer that takes --latency s/image.
    server_code = textwrap.dedent(
        f"""
        import sys, time
        import numpy as np
        from trl_rpo.rewards.remote import make_reward_server

        def slow_brightness(images, prompts, **kwargs):
            time.sleep({args.latency} * len(images))
            return [float(np.asarray(image, dtype=np.float32).mean() / 255.0) for image in images]

        server = make_reward_server(slow_brightness, port=0)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """
    )
    server = subprocess.Popen([sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    reward = RemoteReward(f"http://127.0.0.1:{port}", name="brightness")
    prompts = Dataset.from_dict({"prompt": [f"a {c} {s}" for c in ("red", "blue", "green", "yellow")
                                            for s in ("square", "circle", "star", "triangle")]})  # fmt: skip

    rows = {
        "baseline": {},
        "chunks of 4, inline": {"rollout_chunk_size": 4},
        "chunks of 4, async_rewards": {"rollout_chunk_size": 4, "async_rewards": True},
        "guidance 1 (CFG-free)": {"guidance_scale": 1.0},
        "sde_window_size=2": {"sde_window_size": 2, "sde_window_range": [0, 5]},
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, options in rows.items():
            torch.manual_seed(0)
            clock = step_clock()
            settings = dict(
                output_dir=f"{tmp}/{len(results)}", report_to="none", save_strategy="no", disable_tqdm=True,
                max_steps=args.steps + args.warmup + 1, per_device_train_batch_size=16, num_generations=4,
                num_inference_steps=10, guidance_scale=4.5, log_kl=False, seed=0, logging_steps=1,
            )  # fmt: skip
            config = DiffusionGRPOConfig(**{**settings, **options})
            trainer = DiffusionGRPOTrainer(model=tiny_sd_pipeline(), reward_funcs=reward, args=config,
                                           train_dataset=prompts, peft_config=tiny_lora_config(),
                                           callbacks=[clock])  # fmt: skip
            trainer.train()
            durations = _steady(clock.times, args.warmup)
            results[name] = statistics.median(durations)
            print(
                f"{name}: median {results[name]:.3f} s/step ({', '.join(f'{d:.2f}' for d in durations)})", flush=True
            )
    server.terminate()
    base = results["baseline"]
    print(f"\n{torch.get_num_threads()} threads, reward server {args.latency} s per image, 16 images per step")
    print("| option | s / optimizer step | images / s | vs baseline |\n|---|---:|---:|---:|")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.3f} | {16 / seconds:.1f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
