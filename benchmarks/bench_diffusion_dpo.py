"""Benchmark `DiffusionDPOTrainer` against a plain Diffusion-DPO training loop, on tiny SD 1.5 / SDXL models.

Not a test: it prints figures. Every figure that compares two things is a ratio measured side by side in one
run, because the machine may be busy with other work:

(a) speed: steady-state optimizer steps per second of the trainer (LoRA, `precompute_latents=True`, one UNet
    call on the stacked `[chosen; rejected]` batch for the policy and one for the adapter-disabled reference)
    and of a plain loop written below with the structure of the diffusers Diffusion-DPO example's step (VAE and
    text encoder(s) every step, chosen and rejected stacked, one UNet call for the policy and one for the
    reference with `disable_adapters()`).
    By default the two are interleaved step by step: a callback runs one plain step at the end of every
    trainer step, and each side is timed only over its own work, so background load hits both alike.
(b) peak memory (peak RSS, `VmHWM`) of the trainer and of the plain loop, each in a fresh subprocess.
(c) the reference model: LoRA with adapters disabled (no copy) vs full fine-tuning with a frozen deep copy:
    parameter bytes held for the reference, and peak RSS of a few training steps (fresh subprocesses).
(d) with `--loss-types sigmoid mapo` (any of the trainer's loss types, the first is the baseline): steps per
    second of one LoRA trainer per loss type, stepped round-robin so background load hits all alike, and peak
    RSS of full fine-tuning with each (fresh subprocesses): MaPO and SFT are reference-free, so they skip the
    reference forward pass and full fine-tuning keeps no frozen copy.

Run `python benchmarks/bench_diffusion_dpo.py --help` for the options; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

MIB = 1024 * 1024
MODELS = ("sd15", "sdxl")


# ---------------------------------------------------------------------------------------------------------------
# Memory helpers
# ---------------------------------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (`VmHWM`; `ru_maxrss` where /proc is missing)."""
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def current_rss_bytes() -> int:
    rss = _proc_status_kib("VmRSS")
    return rss * 1024 if rss is not None else peak_rss_bytes()


def module_bytes(module) -> int:
    """Bytes of the parameters and buffers a module holds."""
    if module is None:
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------------------------------
# Models and data
# ---------------------------------------------------------------------------------------------------------------


def make_pipeline(model: str, resolution: int, seed: int):
    from trl_rpo.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

    if resolution % 2:
        raise ValueError(f"--resolution must be even (the tiny VAE downsamples by 2), got {resolution}")
    builder = tiny_sdxl_pipeline if model == "sdxl" else tiny_sd_pipeline
    # The tiny VAE downsamples by 2: `sample_size` is the latent side, images are twice that.
    return builder(seed=seed, sample_size=resolution // 2)


def make_dataset(args):
    from trl_rpo.testing import tiny_preference_dataset

    return tiny_preference_dataset(args.num_rows or 4 * args.batch_size, image_size=args.resolution, seed=args.seed)


def make_trainer(
    args,
    model: str,
    output_dir: str,
    lora: bool = True,
    callbacks=None,
    max_steps: int | None = None,
    loss_type: str = "sigmoid",
    pipe=None,
    peft_config=None,
    **overrides,
):
    from transformers import PrinterCallback

    from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer
    from trl_rpo.testing import tiny_lora_config

    config = DiffusionDPOConfig(
        output_dir=output_dir,
        loss_type=loss_type,
        max_steps=max_steps or args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optim="adamw_torch",  # the same torch.optim.AdamW the plain loop uses
        lr_scheduler_type="constant",  # as the diffusers example's default
        max_grad_norm=1.0,
        resolution=args.resolution,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=args.seed,
        **{"precompute_latents": True, **overrides},
    )
    trainer = DiffusionDPOTrainer(
        model=pipe if pipe is not None else make_pipeline(model, args.resolution, args.seed),
        args=config,
        train_dataset=make_dataset(args),
        peft_config=(peft_config or tiny_lora_config()) if lora else None,
        callbacks=callbacks,
    )
    # Logging still happens every `logging_steps` (its cost is part of a trainer step); only the printing goes.
    trainer.remove_callback(PrinterCallback)
    return trainer


class PlainDiffusionDPO:
    """A Diffusion-DPO LoRA loop with the structure of the diffusers example's step (train_diffusion_dpo.py).

    Every step encodes the `[chosen; rejected]` images with the VAE and the prompts with the text encoder(s),
    stacks the pair into one `2B` batch (same noise and timestep for both halves), and calls the UNet twice: the
    policy with gradients, then the reference (`unet.disable_adapters()`, no gradient). Same loss
    (`trl_rpo.diffusion_dpo_loss`), AdamW, learning rate and gradient clipping as the trainer. What the trainer
    adds over it is precomputation (no VAE / text encoder in the step) and its own bookkeeping.
    """

    def __init__(self, args, model: str, pipe=None, peft_config=None, device="cpu", dtype=None):
        import torch
        from diffusers import DDPMScheduler
        from diffusers.training_utils import cast_training_params
        from torch.utils.data import DataLoader

        from trl_rpo.data.formats import prepare_preference_dataset
        from trl_rpo.pipelines import cast_model
        from trl_rpo.testing import tiny_lora_config
        from trl_rpo.trainer.diffusion_dpo_trainer import DataCollatorForDiffusionPreference

        self.args, self.device, self.dtype = args, torch.device(device), dtype or torch.float32
        self.is_sdxl = model == "sdxl"
        self.pipe = pipe if pipe is not None else make_pipeline(model, args.resolution, args.seed)
        for frozen in (self.pipe.vae, self.pipe.text_encoder, getattr(self.pipe, "text_encoder_2", None)):
            if frozen is not None:
                # The diffusers script keeps the VAE in float32 when its config asks for it (SDXL's force_upcast).
                upcast = frozen is self.pipe.vae and getattr(frozen.config, "force_upcast", False)
                cast_model(frozen.requires_grad_(False).eval(), torch.float32 if upcast else self.dtype, self.device)
        self.unet = self.pipe.unet
        self.unet.requires_grad_(False)
        cast_model(self.unet, self.dtype, self.device)  # frozen weights in the script's weight_dtype
        self.unet.add_adapter(peft_config or tiny_lora_config())
        cast_training_params(self.unet, dtype=torch.float32)  # LoRA weights in float32, as the script
        self.unet.train()
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=args.learning_rate, weight_decay=0.0, eps=1e-8)
        self.noise_scheduler = DDPMScheduler.from_config(self.pipe.scheduler.config)
        dataset = prepare_preference_dataset(make_dataset(args))
        generator = torch.Generator().manual_seed(args.seed)
        self.loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=DataCollatorForDiffusionPreference(args.resolution),
        )
        self._batches = iter(())

    def _next_batch(self) -> dict[str, Any]:
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            return next(self._batches)

    def _unet(self, noisy, timesteps, embeds, pooled=None, time_ids=None):
        kwargs = {}
        if self.is_sdxl:
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(noisy, timesteps, encoder_hidden_states=embeds, **kwargs).sample

    def step(self) -> float:
        import torch

        from trl_rpo import diffusion_dpo_loss
        from trl_rpo.diffusion import per_sample_mse
        from trl_rpo.pipelines import sdxl_time_ids

        batch = self._next_batch()
        pipe, b, device = self.pipe, len(batch["prompt"]), self.device
        with torch.no_grad():
            vae = pipe.vae
            # pixel_values is already [chosen; rejected]: one VAE call on all 2B images.
            pixels = batch["pixel_values"].to(device, next(vae.parameters()).dtype)
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            latents = latents.to(self.dtype)
            if self.is_sdxl:
                embeds, _, pooled, _ = pipe.encode_prompt(
                    batch["prompt"], device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                pooled = pooled.repeat(2, 1)
                time_ids = sdxl_time_ids(batch["original_sizes"], batch["crop_top_lefts"], self.args.resolution)
                time_ids = time_ids.to(device, self.dtype)
            else:
                embeds, _ = pipe.encode_prompt(batch["prompt"], device, 1, False)
                pooled, time_ids = None, None
            embeds = embeds.repeat(2, 1, 1)
        # Same noise and timestep for both images of a pair, as the diffusers script draws them.
        noise = torch.randn_like(latents).chunk(2)[0].repeat(2, 1, 1, 1)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), device=device).repeat(2)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        # Policy: one call on the stacked 2B batch; reference: the same UNet with adapters disabled, one call.
        policy_chosen, policy_rejected = per_sample_mse(
            self._unet(noisy, timesteps, embeds, pooled, time_ids), noise
        ).chunk(2)
        self.unet.disable_adapters()
        with torch.no_grad():
            ref_chosen, ref_rejected = per_sample_mse(
                self._unet(noisy, timesteps, embeds, pooled, time_ids), noise
            ).chunk(2)
        self.unet.enable_adapters()
        for p in self.params:  # PEFT's disable/enable may clear requires_grad
            p.requires_grad_(True)

        losses, _, _ = diffusion_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=5000.0)
        loss = losses.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


# ---------------------------------------------------------------------------------------------------------------
# (a) speed
# ---------------------------------------------------------------------------------------------------------------


def _step_clock_callback(plain: PlainDiffusionDPO | None):
    """A TrainerCallback timing each trainer step; with `plain`, it also runs (and times) one plain step per step.

    Trainer step k is timed from the end of this callback at step k-1 to its start at step k: that covers the
    whole trainer loop (data loading, forward, backward, optimizer, logging), and none of the plain step.
    """
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.trainer_times: list[float] = []  # [i] = duration of trainer step i+2 (step 1 has no start mark)
            self.plain_times: list[float] = []
            self.last_exit: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self.last_exit is not None:
                self.trainer_times.append(now - self.last_exit)
            if plain is not None:
                start = time.perf_counter()
                plain.step()
                self.plain_times.append(time.perf_counter() - start)
            self.last_exit = time.perf_counter()

    return StepClock()


def measure_speed(args, model: str) -> dict[str, Any]:
    import torch

    warmup = args.warmup
    with tempfile.TemporaryDirectory() as output_dir:
        torch.manual_seed(args.seed)
        plain = PlainDiffusionDPO(args, model)
        if args.schedule == "interleaved":
            clock = _step_clock_callback(plain)
            start = time.perf_counter()
            trainer = make_trainer(args, model, output_dir, callbacks=[clock])
            setup_s = time.perf_counter() - start
            trainer.train()
            trainer_times = clock.trainer_times[warmup - 1 :]  # steps warmup+1 .. N
            plain_times = clock.plain_times[warmup:]
        else:  # sequential: all trainer steps, then all plain steps
            clock = _step_clock_callback(None)
            start = time.perf_counter()
            trainer = make_trainer(args, model, output_dir, callbacks=[clock])
            setup_s = time.perf_counter() - start
            trainer.train()
            trainer_times = clock.trainer_times[warmup - 1 :]
            plain_times = []
            for _ in range(args.steps):
                start = time.perf_counter()
                plain.step()
                plain_times.append(time.perf_counter() - start)
            plain_times = plain_times[warmup:]
    trainer_sps = len(trainer_times) / sum(trainer_times)
    plain_sps = len(plain_times) / sum(plain_times)
    return {
        "trainer_steps_per_s": trainer_sps,
        "plain_steps_per_s": plain_sps,
        "speedup": trainer_sps / plain_sps,
        "median_speedup": statistics.median(plain_times) / statistics.median(trainer_times),
        "timed_steps": len(trainer_times),
        "trainer_setup_s": setup_s,
    }


def measure_loss_types(args, model: str) -> dict[str, float]:
    """(d) Steady-state steps per second of one LoRA trainer per loss type, stepped round-robin.

    Each trainer's own `training_step` (forward, backward: the reference pass only where the loss needs it) and
    optimizer step run on its own batches; one step of each in turn, so a busy machine slows all alike.
    """
    import itertools

    import torch

    times: dict[str, list[float]] = {loss: [] for loss in args.loss_types}
    with tempfile.TemporaryDirectory() as output_dir:
        runs = []
        for loss in args.loss_types:
            torch.manual_seed(args.seed)
            trainer = make_trainer(args, model, os.path.join(output_dir, loss), loss_type=loss)
            trainer.create_optimizer()
            trainer.model.train()
            # Set by Trainer's own loop (transformers 5), which this one replaces: one micro-step per step.
            trainer.current_gradient_accumulation_steps = 1
            runs.append((loss, trainer, itertools.cycle(trainer.get_train_dataloader())))
        for _ in range(args.steps):
            for loss, trainer, batches in runs:
                batch = trainer._prepare_inputs(next(batches))
                start = time.perf_counter()
                trainer.training_step(trainer.model, batch)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad()
                times[loss].append(time.perf_counter() - start)
    return {loss: len(t[args.warmup :]) / sum(t[args.warmup :]) for loss, t in times.items()}


# ---------------------------------------------------------------------------------------------------------------
# (b), (c) memory, each in a fresh subprocess
# ---------------------------------------------------------------------------------------------------------------


def child_main(args) -> None:
    """Runs in a subprocess: build one setup, train `--mem-steps` steps, print a JSON line of memory figures."""
    import torch

    _quiet()
    import transformers  # noqa: F401  (imported before the baseline so it is counted in it)

    import trl_rpo  # noqa: F401

    baseline = current_rss_bytes()
    torch.manual_seed(args.seed)
    kind, model = args.child.split(":")
    kind, _, loss_type = kind.partition("-")  # e.g. "full-mapo": full fine-tuning with the MaPO loss
    out: dict[str, Any] = {"kind": kind, "model": model, "baseline_rss": baseline, "loss_type": loss_type or "sigmoid"}
    if kind == "plain":
        plain = PlainDiffusionDPO(args, model)
        for _ in range(args.mem_steps):
            plain.step()
        out["unet_bytes"] = module_bytes(plain.unet)
        out["reference_bytes"] = 0
    else:
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = make_trainer(args, model, output_dir, lora=kind == "lora", max_steps=args.mem_steps,
                                   loss_type=loss_type or "sigmoid")  # fmt: skip
            trainer.train()
            out["unet_bytes"] = module_bytes(trainer.model)
            # With LoRA and no ref_model the reference *is* the policy UNet with adapters off: nothing extra held.
            out["reference_bytes"] = module_bytes(trainer.ref_model)
            out["reference_is_copy"] = trainer.ref_model is not None
    out["peak_rss"] = peak_rss_bytes()
    print("BENCH_RESULT " + json.dumps(out), flush=True)


def run_child(args, kind: str, model: str) -> dict[str, Any]:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"{kind}:{model}",
        "--batch-size",
        str(args.batch_size),
        "--resolution",
        str(args.resolution),
        "--mem-steps",
        str(args.mem_steps),
        "--learning-rate",
        str(args.learning_rate),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--num-rows",
        str(args.num_rows or 0),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.removeprefix("BENCH_RESULT "))
    raise RuntimeError(f"memory subprocess {kind}:{model} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------------------------
# Optional: where a step's time goes (--breakdown)
# ---------------------------------------------------------------------------------------------------------------


def measure_breakdown(args, model: str) -> list[tuple[str, str, float]]:
    """Median milliseconds of the pieces of a trainer step and of a plain step, timed round-robin side by side.

    Returns `(side, piece, ms)` rows. Both sides make the same two UNet calls on `2B` (timed once, on the
    trainer's side); the plain side adds the per-step VAE and text encoding and PEFT's public adapter toggle.
    """
    import torch

    from trl_rpo.diffusion import per_sample_mse
    from trl_rpo.pipelines import encode_prompts

    with tempfile.TemporaryDirectory() as output_dir:
        torch.manual_seed(args.seed)
        trainer = make_trainer(args, model, output_dir)
        plain = PlainDiffusionDPO(args, model)
        unet = trainer.model
        trainer_batches = iter(())

        def trainer_batch():
            nonlocal trainer_batches
            try:
                return next(trainer_batches)
            except StopIteration:
                trainer_batches = iter(trainer.get_train_dataloader())
                return next(trainer_batches)

        inputs = trainer_batch()
        latents, cond = trainer.encode_batch(inputs)
        noise, timesteps = trainer.sample_noise_and_timesteps(latents)
        noisy = trainer.noise_scheduler.add_noise(latents, noise, timesteps)
        raw = plain._next_batch()

        def policy_stacked():
            per_sample_mse(trainer.unet_forward(unet, noisy, timesteps, cond), noise).sum().backward()

        def reference_stacked():
            with torch.no_grad(), trainer.reference_model() as ref:
                trainer.unet_forward(ref, noisy, timesteps, cond)

        def reference_public_toggle():
            plain.unet.disable_adapters()
            plain.unet.enable_adapters()
            for p in plain.params:
                p.requires_grad_(True)

        def reference_toggle_only():
            with trainer.reference_model():
                pass

        def vae_encode():
            with torch.no_grad():
                plain.pipe.vae.encode(raw["pixel_values"]).latent_dist.sample()

        def text_encode():
            encode_prompts(plain.pipe, raw["prompt"], "cpu")

        def record_metrics():
            for name in ("a", "b", "c", "d", "e", "f", "g", "h"):
                trainer._record_metric("train", name, noise[:, 0, 0, 0])
            trainer._metrics["train"].clear()

        pieces = [
            ("trainer", "next batch (precomputed, datasets torch format)", trainer_batch),
            ("trainer", "policy UNet fwd+bwd, one call on 2B", policy_stacked),
            ("trainer", "reference UNet fwd, one call on 2B (incl. adapter toggle)", reference_stacked),
            ("trainer", "reference adapter toggle alone", reference_toggle_only),
            ("trainer", "8 x _record_metric (gather + .item())", record_metrics),
            ("plain", "next batch (decode + resize PIL images)", plain._next_batch),
            ("plain", "VAE encode of 2B images", vae_encode),
            ("plain", "text encoder(s) on B prompts", text_encode),
            ("plain", "reference adapter toggle (public disable/enable_adapters)", reference_public_toggle),
        ]
        times: dict[str, list[float]] = {name: [] for _, name, _ in pieces}
        for rep in range(args.breakdown_reps + 2):
            for _, name, fn in pieces:
                start = time.perf_counter()
                fn()
                if rep >= 2:
                    times[name].append(time.perf_counter() - start)
                unet.zero_grad(set_to_none=True)
    return [(side, name, 1000 * statistics.median(times[name])) for side, name, _ in pieces]


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------


def _quiet() -> None:
    """No progress bars between the printed figures (warnings still show: each one is a fault to fix at its source)."""
    import datasets

    datasets.disable_progress_bars()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=25, help="training steps per timed run (default 25)")
    parser.add_argument("--warmup", type=int, default=2, help="leading steps left out of the timings (default 2)")
    parser.add_argument("--batch-size", type=int, default=2, help="preference pairs per step (default 2)")
    parser.add_argument(
        "--resolution", type=int, default=32, help="image side in pixels; the tiny VAE makes 1/2-size latents"
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: sd15 sdxl")
    parser.add_argument("--mem-steps", type=int, default=4, help="training steps in each memory subprocess")
    parser.add_argument(
        "--schedule",
        choices=("interleaved", "sequential"),
        default="interleaved",
        help="interleave trainer and plain steps (default), or run all trainer steps then all plain steps",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the pieces of a trainer step and of a plain step (median ms, side by side)",
    )
    parser.add_argument("--breakdown-reps", type=int, default=10, help="repetitions per piece for --breakdown")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory figures (b) and (c)")
    parser.add_argument("--skip-memory", action="store_true", help="only the speed figures (a)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: the tiny models gain nothing from more, and on a shared machine "
        "spinning OpenMP workers make timings erratic)",
    )
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-rows", type=int, default=0, help="dataset rows (default: 4 x batch size)")
    parser.add_argument(
        "--loss-types",
        nargs="+",
        default=None,
        help="(d): compare these loss types, the first as baseline, e.g. `--loss-types sigmoid mapo`",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps must exceed --warmup ({args.warmup})")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first trainer step has no start mark)")
    if args.loss_types:
        from trl_rpo.losses import DIFFUSION_DPO_LOSS_TYPES

        unknown = [loss for loss in args.loss_types if loss not in DIFFUSION_DPO_LOSS_TYPES]
        if unknown:
            parser.error(f"--loss-types {unknown}: choose among {list(DIFFUSION_DPO_LOSS_TYPES)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        child_main(args)
        return

    _quiet()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; models={' '.join(args.models)} "
        f"batch_size={args.batch_size} pairs resolution={args.resolution}px steps={args.steps} "
        f"(timed: {args.warmup + 1}..{args.steps}) schedule={args.schedule} mem_steps={args.mem_steps}",
        flush=True,
    )
    speed: dict[str, dict] = {}
    memory: dict[str, dict] = {}
    breakdown: dict[str, list] = {}
    if args.loss_types:
        report_loss_types(args)
        return
    for model in args.models:
        if not args.skip_speed:
            speed[model] = measure_speed(args, model)
            s = speed[model]
            print(
                f"[{model}] speed: trainer {s['trainer_steps_per_s']:.2f} steps/s, plain {s['plain_steps_per_s']:.2f}"
                f" steps/s, speed-up {s['speedup']:.2f}x (median-step ratio {s['median_speedup']:.2f}x); trainer"
                f" set-up incl. precompute {s['trainer_setup_s']:.1f}s",
                flush=True,
            )
        if args.breakdown:
            breakdown[model] = measure_breakdown(args, model)
        if not args.skip_memory:
            memory[model] = {kind: run_child(args, kind, model) for kind in ("lora", "plain", "full")}
            print(f"[{model}] memory subprocesses done", flush=True)

    print()
    header = (
        f"{'model':<8} {'trainer steps/s':>15} {'plain steps/s':>14} {'speed-up':>9} "
        f"{'trainer peak MiB':>17} {'plain peak MiB':>15}"
    )
    print(header)
    rows = [name for model in args.models for name in (model, f"{model}+fix") if name == model or name in speed]
    for model in rows:
        s, m = speed.get(model), memory.get(model)
        cells = (
            [f"{s['trainer_steps_per_s']:15.2f}", f"{s['plain_steps_per_s']:14.2f}", f"{s['speedup']:8.2f}x"]
            if s
            else [f"{'-':>15}", f"{'-':>14}", f"{'-':>9}"]
        )
        cells += (
            [f"{m['lora']['peak_rss'] / MIB:17.1f}", f"{m['plain']['peak_rss'] / MIB:15.1f}"]
            if m
            else [f"{'-':>17}", f"{'-':>15}"]
        )
        print(f"{model:<8} " + " ".join(cells))
    if speed:
        print(
            f"speed-up = trainer steps/s / plain steps/s over steps {args.warmup + 1}..{args.steps}"
            f" ({args.schedule}); goal >= 1.5x: "
            + ", ".join(f"{k} {'met' if v['speedup'] >= 1.5 else 'NOT met'}" for k, v in speed.items())
        )
    for model, rows in breakdown.items():
        print()
        print(f"[{model}] where a step's time goes (median ms over {args.breakdown_reps} round-robin repetitions):")
        for side, name, ms in rows:
            print(f"  {side:<8} {name:<62} {ms:8.1f}")
    if memory:
        print(
            "peak MiB = peak RSS (VmHWM) of a fresh subprocess training "
            f"{args.mem_steps} steps; above the post-import baseline: "
            + ", ".join(
                f"{k} trainer +{v['lora']['peak_rss'] / MIB - v['lora']['baseline_rss'] / MIB:.1f} / plain "
                f"+{v['plain']['peak_rss'] / MIB - v['plain']['baseline_rss'] / MIB:.1f} MiB"
                for k, v in memory.items()
            )
        )
        print()
        print("reference model memory: LoRA with adapters disabled (no copy) vs full fine-tuning with a frozen copy")
        for model, m in memory.items():
            lora, full = m["lora"], m["full"]
            lora_delta = (lora["peak_rss"] - lora["baseline_rss"]) / MIB
            full_delta = (full["peak_rss"] - full["baseline_rss"]) / MIB
            print(
                f"{model:<6} reference params held: LoRA {lora['reference_bytes'] / MIB:.3f} MiB (reuses the "
                f"policy's {lora['unet_bytes'] / MIB:.3f} MiB UNet), full FT {full['reference_bytes'] / MIB:.3f} MiB "
                f"(copy of a {full['unet_bytes'] / MIB:.3f} MiB UNet)"
            )
            print(
                f"{'':<6} peak RSS: LoRA {lora['peak_rss'] / MIB:.1f} MiB, full FT {full['peak_rss'] / MIB:.1f} MiB, "
                f"full/LoRA {full['peak_rss'] / lora['peak_rss']:.3f}x; above baseline: LoRA +{lora_delta:.1f} MiB, "
                f"full FT +{full_delta:.1f} MiB, full/LoRA {full_delta / max(lora_delta, 1e-9):.2f}x"
            )


def report_loss_types(args) -> None:
    """(d): speed (LoRA, round-robin) and full fine-tuning peak memory of each loss type against the first."""
    base = args.loss_types[0]
    for model in args.models:
        sps = {} if args.skip_speed else measure_loss_types(args, model)
        mem = {} if args.skip_memory else {loss: run_child(args, f"full-{loss}", model) for loss in args.loss_types}
        for loss in args.loss_types:
            cells = [f"[{model}] {loss:<8}"]
            if sps:
                cells.append(f"LoRA {sps[loss]:.2f} steps/s ({sps[loss] / sps[base]:.2f}x {base})")
            if mem:
                m, b = mem[loss], mem[base]
                delta, base_delta = m["peak_rss"] - m["baseline_rss"], b["peak_rss"] - b["baseline_rss"]
                cells.append(
                    f"full FT peak RSS {m['peak_rss'] / MIB:.1f} MiB (+{delta / MIB:.1f} above baseline, "
                    f"{delta / max(base_delta, 1):.2f}x {base}); reference copy {m['reference_bytes'] / MIB:.3f} MiB"
                )
            print(", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
