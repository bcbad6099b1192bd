"""`DiffusionNFTTrainer` (what `trl-rpo nft` runs) against DiffusionNFT's own `scripts/train_nft_sd3.py`, side by side.

The same tiny SD3 folder, prompts, JPEG-compressibility reward, LoRA (r 32, alpha 64, the eight attention
projections both scripts use) and work per optimizer step on both sides: 16 images in groups of 4 (two micro-batches
of 8), 10 deterministic Euler (ODE) steps without CFG (DiffusionNFT's SD3 recipe samples CFG-free), every step
trained, NFT beta 1, adaptive weighting, KL coefficient 1e-4 against the adapters-off reference, an old (sampling)
policy kept apart from the trained one and updated after each epoch (DiffusionNFT's `decay_type=1`: decay 0 at
the first steps, so the trainer's `old_policy_decay` is set to a small non-zero value to keep its separate old
policy and the third denoiser pass that implies), lr 3e-4. Each side runs in its own process, one after the other.

DiffusionNFT's script cannot run on a CPU as published: it hard-codes NCCL and CUDA devices (`setup_distributed`:
`dist.init_process_group("nccl", ...)`, `torch.cuda.set_device`; `main`: `torch.device(f"cuda:{local_rank}")` and
`DDP(..., device_ids=[local_rank])`). The benchmark copies the script into its work folder and changes exactly those
four lines (gloo, no `set_device`, the CPU, `DDP` without device ids; `PATCHES` below, each checked to match once),
and runs it as one process (`RANK=0 WORLD_SIZE=1`). Everything else runs as published, from its own
`config/nft.py` (`_get_config`, with `reward_fn={"jpeg_compressibility": 1}`) and command-line overrides; `wandb`
is served by the same stand-in as in `bench_flow_grpo.py` (records each log call's time; one `gradient_update_times`
log per optimizer step), `ml_collections` / `absl-py` come from `--peer-site`.

    git clone https://github.com/NVlabs/DiffusionNFT ../DiffusionNFT
    python benchmarks/bench_diffusion_nft.py --nft-repo ../DiffusionNFT --peer-site /tmp/peer-site
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flow_grpo import _steady, add_run_arguments, prepare, run_peer, run_trainer  # noqa: E402

# (published line, replacement): the four lines that tie DiffusionNFT's script to NCCL and CUDA.
PATCHES = [
    ('dist.init_process_group("nccl", rank=rank, world_size=world_size)',
     'dist.init_process_group("gloo", rank=rank, world_size=world_size)'),
    ("torch.cuda.set_device(lock_rank)", "pass  # benchmark: CPU"),
    ('device = torch.device(f"cuda:{local_rank}")', 'device = torch.device("cpu")'),
    ("DDP(transformer, device_ids=[local_rank], output_device=local_rank, find_unused_parameters=False)",
     "DDP(transformer, find_unused_parameters=False)"),
]  # fmt: skip

# Its own config builder, with the JPEG-compressibility reward (what `config/nft.py`'s named configs do for theirs).
# `n_gpus=8`: its batch-size search finds no size for one GPU (groups of 24 must fill whole batches of at most 9);
# the batch sizes it picks are overridden on the command line anyway.
CONFIG = textwrap.dedent(
    """
    import imp
    import os

    nft = imp.load_source("nft_config", os.path.join(os.getcwd(), "config", "nft.py"))


    def get_config():
        return nft._get_config(base_model="sd3", n_gpus=8, gradient_step_per_epoch=1, dataset="pickscore",
                               reward_fn={"jpeg_compressibility": 1.0}, name="bench")
    """
)


def patched_script(repo: Path, work: Path) -> Path:
    """DiffusionNFT's training script with `PATCHES` applied (each must match exactly once), in `work`."""
    source = (repo / "scripts" / "train_nft_sd3.py").read_text()
    for published, replacement in PATCHES:
        if source.count(published) != 1:
            raise RuntimeError(f"scripts/train_nft_sd3.py no longer holds {published!r} exactly once")
        source = source.replace(published, replacement)
    path = work / "train_nft_sd3_cpu.py"
    path.write_text(source)
    return path


def run_diffusion_nft(repo: Path, peer_site: Path | None, model: Path, data: Path, work: Path, args) -> list[float]:
    script = patched_script(repo, work)
    config = work / "nft_bench_config.py"
    config.write_text(CONFIG)
    images = args.prompts_per_step * args.group_size
    overrides = {
        "pretrained.model": model, "dataset": data, "resolution": 32, "mixed_precision": "no", "allow_tf32": False,
        "use_lora": True, "debug": True, "num_epochs": args.steps + args.warmup + 3, "save_dir": work / "nft_out",
        "logdir": work / "nft_logs", "sample.num_steps": args.num_steps, "sample.guidance_scale": 1.0,
        "sample.deterministic": True, "sample.solver": "flow", "sample.train_batch_size": images // 2,
        "sample.num_image_per_prompt": args.group_size, "sample.num_batches_per_epoch": 2,
        "sample.test_batch_size": 2, "train.batch_size": images // 2, "train.gradient_accumulation_steps": 2,
        "train.timestep_fraction": 1.0, "train.learning_rate": 3e-4, "train.beta": 1e-4, "train.ema": False,
    }  # fmt: skip
    command = [sys.executable, str(script), "--config", str(config)]
    command += [f"--config.{k}={v}" for k, v in overrides.items()]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_PORT": str(random.randint(20000, 60000))}
    return run_peer(command, repo, peer_site, work, "diffusion_nft", "gradient_update_times",
                    args.steps + args.warmup + 1, args.timeout, extra_env=env)  # fmt: skip


def run_trl_rpo_nft(model: Path, data: Path, work: Path, args) -> list[float]:
    images = args.prompts_per_step * args.group_size
    config = {
        "num_generations": args.group_size, "per_device_train_batch_size": images // 2,
        "gradient_accumulation_steps": 2, "num_inference_steps": args.num_steps, "guidance_scale": 1.0,
        "sampler": "ode", "nft_beta": 1.0, "adaptive_weighting": True, "beta": 1e-4, "old_policy_decay": 0.001,
        "learning_rate": 3e-4, "max_steps": args.steps + args.warmup + 1, "resolution": 32,
        "max_sequence_length": 128, "log_kl": False, "max_grad_norm": 1.0, "lr_scheduler_type": "constant",
    }  # fmt: skip
    return run_trainer("nft", config, model, data, work, "nft", args.timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nft-repo", type=Path, required=True, help="a clone of NVlabs/DiffusionNFT")
    add_run_arguments(parser, "DiffusionNFT's SD3 recipe")
    args = parser.parse_args()
    repo = args.nft_repo.resolve()
    if not (repo / "scripts" / "train_nft_sd3.py").is_file():
        parser.error(f"{repo} has no scripts/train_nft_sd3.py: pass a clone of NVlabs/DiffusionNFT")
    import torch

    images = args.prompts_per_step * args.group_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {images} images per optimizer step, "
          f"{args.num_steps} ODE steps, no CFG, 32 px tiny SD3, LoRA r32")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.keep is None else args.keep.resolve()
        work.mkdir(parents=True, exist_ok=args.keep is None)
        model, data = prepare(work, num_prompts=16)
        rows = []
        for name, run in [
            ("DiffusionNFT scripts/train_nft_sd3.py (4 lines patched for the CPU)",
             lambda: run_diffusion_nft(repo, args.peer_site, model, data, work, args)),
            ("trl-rpo DiffusionNFTTrainer", lambda: run_trl_rpo_nft(model, data, work, args)),
        ]:  # fmt: skip
            start = time.perf_counter()
            durations = _steady(run(), args.warmup)
            seconds = statistics.median(durations)
            rows.append((name, seconds))
            steps = ", ".join(f"{d:.2f}" for d in durations)
            print(f"{name}: median {seconds:.3f} s/step over {len(durations)} steps ({steps}); "
                  f"{time.perf_counter() - start:.0f} s in all", flush=True)  # fmt: skip
    base = rows[0][1]
    print("\n| run | s / optimizer step | images / s | vs DiffusionNFT |\n|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {images / seconds:.2f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
