"""`DiffusionGRPOTrainer` (what `trl-rpo grpo` runs) against flow_grpo's own `scripts/train_sd3.py`, side by side.

Both train the same tiny SD3 folder (`trl_rpo.testing.tiny_sd3_pipeline`, saved with `save_pretrained`) on the same
prompts with the same JPEG-compressibility reward, group size, images per optimizer step, sampler steps, guidance,
SDE noise level, T5 length (flow_grpo's fixed 128 tokens), LoRA (flow_grpo's: r 32, alpha 64, its eight attention
projections), learning rate and no KL, each
in its own process on the same threads, one after the other. Printed: steady-state seconds per optimizer step and
images per second (rollout images per step / seconds per step), the first steps left out (flow_grpo's evaluation
at epoch 0, warm-up).

flow_grpo runs unmodified from a clone (`--flow-grpo-repo`); what it needs beyond this project's environment:
`ml_collections` and `absl-py` (its config system: installed with `pip install --target DIR` and put on its
`PYTHONPATH` with `--peer-site DIR`), and `wandb`, which its script imports and logs to: a no-op stand-in module is
put first on its path that records each `wandb.log` call's time and step (that is how its step times are read; no
run is created). Its overrides are command-line flags of its own config system (`--config.x=y`), starting from its
`config/grpo.py:compressibility`: the local tiny model, the prompt folder, 32 px, fp32 (no CUDA), one epoch = one
optimizer step, evaluation only at epoch 0 with 2 sampler steps, no checkpoints. It never stops by itself (a `while
True` over epochs): the benchmark stops it once it has logged enough optimizer steps.

    python benchmarks/bench_flow_grpo.py --flow-grpo-repo ../flow_grpo --peer-site /tmp/peer-site
    python benchmarks/bench_flow_grpo.py --flow-grpo-repo ../flow_grpo --peer-site /tmp/peer-site --steps 8 --window 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# flow_grpo's LoRA targets (scripts/train_sd3.py, `target_modules`), used on both sides.
LORA_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
                "attn.to_out.0", "attn.to_q", "attn.to_v"]  # fmt: skip

# A stand-in for wandb: flow_grpo's script calls wandb.init / wandb.log / wandb.Image; this records each log call's
# time and keys, nothing else.
WANDB_SHIM = textwrap.dedent(
    """
    import json, os, time

    def init(*args, **kwargs):
        return None

    def log(data, step=None, **kwargs):
        with open(os.environ["BENCH_WANDB_LOG"], "a") as f:
            f.write(json.dumps({"time": time.perf_counter(), "step": step, "keys": sorted(data)}) + "\\n")

    class Image:
        def __init__(self, *args, **kwargs):
            pass
    """
)

# The trl-rpo side: the trainer `trl-rpo grpo` builds, with a callback that records when each optimizer step ends.
TRL_RPO_RUN = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl_rpo import DiffusionGRPOConfig, DiffusionGRPOTrainer, DiffusionNFTConfig, DiffusionNFTTrainer
    from trl_rpo.rewards import jpeg_compressibility

    spec = json.loads(sys.argv[1])
    torch.manual_seed(0)
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    prompts = [line.strip() for line in open(spec["prompts"]) if line.strip()]
    config_class, trainer_class = {"grpo": (DiffusionGRPOConfig, DiffusionGRPOTrainer),
                                   "nft": (DiffusionNFTConfig, DiffusionNFTTrainer)}[spec.get("trainer", "grpo")]
    args = config_class(output_dir=spec["output_dir"], report_to="none", save_strategy="no", seed=0,
                        logging_steps=1, disable_tqdm=True, **spec["config"])
    lora = LoraConfig(r=32, lora_alpha=64, init_lora_weights="gaussian", target_modules=spec["targets"])
    trainer = trainer_class(model=spec["model"], reward_funcs=jpeg_compressibility, args=args,
                                   train_dataset=Dataset.from_dict({"prompt": prompts}), peft_config=lora,
                                   callbacks=[Clock()])
    trainer.train()
    print("TIMES " + json.dumps(times))
    """
)


def _steady(times: list[float], skip: int) -> list[float]:
    """Durations between consecutive step ends, the first `skip` steps (warm-up, evaluation) left out."""
    return [b - a for a, b in zip(times[skip:], times[skip + 1 :])]


def prepare(work: Path, num_prompts: int) -> tuple[Path, Path]:
    """The tiny SD3 folder and a prompt folder (`train.txt`, `test.txt`, flow_grpo's `general_ocr` layout)."""
    from trl_rpo.testing import tiny_sd3_pipeline

    model = work / "tiny-sd3"
    tiny_sd3_pipeline().save_pretrained(model)
    data = work / "prompts"
    data.mkdir()
    colours, shapes = ["red", "blue", "green", "yellow"], ["square", "circle", "triangle", "star"]
    prompts = [f"a {c} {s}" for c in colours for s in shapes][:num_prompts]
    (data / "train.txt").write_text("\n".join(prompts) + "\n")
    (data / "test.txt").write_text("\n".join(prompts[:2]) + "\n")
    return model, data


def run_flow_grpo(repo: Path, peer_site: Path | None, model: Path, data: Path, work: Path, args) -> list[float]:
    """Run flow_grpo's train_sd3.py until it logged `args.steps + args.warmup` optimizer steps; their end times."""
    images = args.prompts_per_step * args.group_size
    overrides = {
        "pretrained.model": model, "dataset": data, "resolution": 32, "mixed_precision": "no", "allow_tf32": False,
        "use_lora": True, "sample.num_steps": args.num_steps, "sample.eval_num_steps": 2,
        "sample.guidance_scale": args.guidance_scale, "sample.noise_level": 0.7,
        # one sampling batch = one micro-step's images; two batches per epoch, one optimizer step per epoch
        "sample.train_batch_size": images // 2, "sample.num_image_per_prompt": args.group_size,
        "sample.num_batches_per_epoch": 2, "sample.test_batch_size": 2,
        "train.batch_size": images // 2, "train.gradient_accumulation_steps": 2, "train.timestep_fraction": 1.0,
        "train.learning_rate": 3e-4, "train.beta": 0.0, "train.ema": False, "train.cfg": args.guidance_scale > 1,
        "eval_freq": 100000, "save_freq": 100000, "save_dir": work / "flow_grpo_out",
        "logdir": work / "flow_grpo_logs",
    }  # fmt: skip
    command = [sys.executable, "scripts/train_sd3.py", "--config", "config/grpo.py:compressibility"]
    command += [f"--config.{k}={v}" for k, v in overrides.items()]
    return run_peer(command, repo, peer_site, work, "flow_grpo", "policy_loss", args.steps + args.warmup + 1,
                    args.timeout)  # fmt: skip


def run_peer(command: list[str], repo: Path, peer_site: Path | None, work: Path, name: str, step_key: str,
             wanted: int, timeout: float, extra_env: dict[str, str] | None = None) -> list[float]:  # fmt: skip
    """Run a peer's training script (it never stops by itself) until its `wandb.log` calls that carry `step_key`
    (one per optimizer step) number `wanted`; their times. The wandb stand-in is put first on its path."""
    shims = work / "shims" / "wandb"
    shims.mkdir(parents=True, exist_ok=True)
    (shims / "__init__.py").write_text(WANDB_SHIM)
    log = work / f"{name}_wandb.jsonl"
    path = [str(work / "shims"), *([str(peer_site)] if peer_site else []), str(repo)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "BENCH_WANDB_LOG": str(log), "CUDA_VISIBLE_DEVICES": "",
           **(extra_env or {})}  # fmt: skip
    with open(work / f"{name}.log", "w") as out:
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        times: list[float] = []
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            if log.exists():
                entries = [json.loads(line) for line in log.read_text().splitlines()]
                times = [e["time"] for e in entries if step_key in e["keys"]]
                if len(times) >= wanted:
                    break
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    if len(times) < wanted:
        tail = (work / f"{name}.log").read_text()[-3000:]
        raise RuntimeError(f"{name} logged {len(times)} optimizer steps of {wanted}; its output ends:\n{tail}")
    return times[:wanted]


def run_trl_rpo(model: Path, data: Path, work: Path, args, window: int = 0) -> list[float]:
    """`DiffusionGRPOTrainer` with the same settings, `args.steps + args.warmup + 1` optimizer steps; their ends."""
    images = args.prompts_per_step * args.group_size
    config = {
        "num_generations": args.group_size, "per_device_train_batch_size": images // 2,
        "gradient_accumulation_steps": 2, "num_inference_steps": args.num_steps, "guidance_scale": args.guidance_scale,
        "sde_noise_level": 0.7, "learning_rate": 3e-4, "beta": 0.0, "max_steps": args.steps + args.warmup + 1,
        "resolution": 32, "max_sequence_length": 128, "log_kl": False, "max_grad_norm": 1.0,
        "lr_scheduler_type": "constant", "scale_rewards": "group",
    }  # fmt: skip
    if window:
        config.update(sde_window_size=window, sde_window_range=[0, max(window, args.num_steps // 2)])
    return run_trainer("grpo", config, model, data, work, f"grpo_{window}", args.timeout)


def run_trainer(
    kind: str, config: dict, model: Path, data: Path, work: Path, name: str, timeout: float
) -> list[float]:
    """A trl-rpo trainer (`grpo` or `nft`) in its own process with `config`; when each optimizer step ended."""
    spec = {"trainer": kind, "model": str(model), "prompts": str(data / "train.txt"), "targets": LORA_TARGETS,
            "config": config, "output_dir": str(work / f"trl_rpo_out_{name}")}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", TRL_RPO_RUN, json.dumps(spec)], capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    (work / f"trl_rpo_{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode:
        raise RuntimeError(f"the trl-rpo run failed:\n{result.stderr[-3000:]}")
    line = [x for x in result.stdout.splitlines() if x.startswith("TIMES ")][-1]
    return json.loads(line[len("TIMES ") :])


def add_run_arguments(parser: argparse.ArgumentParser, peer: str) -> None:
    """The options both side-by-side benchmarks share (this one and `bench_diffusion_nft.py`)."""
    parser.add_argument("--peer-site", type=Path, default=None, help="folder with ml_collections and absl-py")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps left out at the start")
    parser.add_argument("--num-steps", type=int, default=10, help=f"sampler steps per rollout ({peer}'s 10)")
    parser.add_argument("--group-size", type=int, default=4, help="images per prompt")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="prompts per optimizer step")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (both runs' logs and outputs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flow-grpo-repo", type=Path, required=True, help="a clone of flow_grpo")
    add_run_arguments(parser, "flow_grpo")
    parser.add_argument("--guidance-scale", type=float, default=4.5)
    parser.add_argument("--window", type=int, default=2, help="also time trl-rpo with an SDE window of this many "
                        "steps (Flow-GRPO-Fast); 0: skip")  # fmt: skip
    args = parser.parse_args()
    repo = args.flow_grpo_repo.resolve()
    if not (repo / "scripts" / "train_sd3.py").is_file():
        parser.error(f"{repo} has no scripts/train_sd3.py: pass a clone of flow_grpo")
    import torch

    images = args.prompts_per_step * args.group_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {images} images per optimizer step "
          f"({args.prompts_per_step} prompts x {args.group_size}), {args.num_steps} sampler steps, guidance "
          f"{args.guidance_scale}, 32 px tiny SD3, LoRA r32 on {len(LORA_TARGETS)} projections")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.keep is None else args.keep.resolve()
        work.mkdir(parents=True, exist_ok=args.keep is None)
        model, data = prepare(work, num_prompts=16)
        rows = []
        runs = [("flow_grpo scripts/train_sd3.py", lambda: run_flow_grpo(repo, args.peer_site, model, data, work,
                                                                          args)),
                ("trl-rpo DiffusionGRPOTrainer", lambda: run_trl_rpo(model, data, work, args))]  # fmt: skip
        if args.window:
            runs.append((f"trl-rpo, sde_window_size={args.window}", lambda: run_trl_rpo(model, data, work, args,
                                                                                         args.window)))  # fmt: skip
        for name, run in runs:
            start = time.perf_counter()
            durations = _steady(run(), args.warmup)
            seconds = statistics.median(durations)
            rows.append((name, seconds, images / seconds, time.perf_counter() - start))
            print(f"{name}: median {seconds:.3f} s/step over {len(durations)} steps "
                  f"({', '.join(f'{d:.2f}' for d in durations)})", flush=True)  # fmt: skip
    base = rows[0][1]
    print("\n| run | s / optimizer step | images / s | vs flow_grpo |\n|---|---:|---:|---:|")
    for name, seconds, rate, _ in rows:
        print(f"| {name} | {seconds:.3f} | {rate:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
