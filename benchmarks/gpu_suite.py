"""The GPU suite's throughput part: Diffusion-DPO and GRPO at real architecture sizes, with peak memory, as JSON.

Run through `benchmarks/gpu_suite.sh` (which runs the CUDA tests first). Every model is built from its released
architecture config with random weights (`trl_rpo.memory_guide`'s configs; nothing is downloaded) and the offline
tiny tokenizers of `trl_rpo.testing` (token ids fit every real vocabulary). Cases:

* `sdxl_dpo`: SDXL LoRA (r16 on the attention projections) Diffusion-DPO, 2 pairs per step at 1024 px in bf16: the
  stacked diffusers-script step (`bench_diffusion_dpo.PlainDiffusionDPO`: VAE and both text encoders every step,
  one policy call on the stacked pair, one adapters-off reference call), `DiffusionDPOTrainer`, and the trainer with
  `precompute_latents=True`; pairs/s and the ratio to the plain step;
* `sd35m_dpo`: SD3.5 Medium LoRA Diffusion-DPO with the trainer, pairs/s;
* `flux_grpo`: FLUX.1-dev LoRA GRPO at 512 px, images/s with the defaults (every step SDE, no unconditional branch,
  as `FluxPipeline`) and with an SDE window of 2 steps (`sde_window_size`, Flow-GRPO-Fast) with a group-shared start.

Seconds per optimizer step are the median over the timed steps, after `--warmup` steps. Peak memory is
`torch.cuda.max_memory_allocated` per case (None on the CPU). `--tiny` runs the same cases with the tiny seeded
pipelines of `trl_rpo.testing` on the CPU in float32 (the test suite runs it): it checks the suite, not the speed.

    python benchmarks/gpu_suite.py --output outputs/gpu_suite/suite.json        # on a GPU
    python benchmarks/gpu_suite.py --tiny --output /tmp/suite.json             # anywhere, about a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_diffusion_dpo import PlainDiffusionDPO, make_trainer  # noqa: E402
from bench_flow_grpo import _steady  # noqa: E402

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
FLUX_ATTENTION = [*ATTENTION, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

# `transformer/config.json` of stabilityai/stable-diffusion-3.5-medium (MMDiT-X: dual attention in blocks 0-12).
SD35_MEDIUM = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": list(range(13)),
    "qk_norm": "rms_norm",
}


def _build(factory, device: torch.device, dtype: torch.dtype):
    """Construct modules directly on `device` in `dtype` (a FLUX.1-dev transformer does not fit a card in float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return factory()
    finally:
        torch.set_default_dtype(previous)


def real_pipeline(name: str, device: torch.device, dtype: torch.dtype):
    """`sdxl`, `sd35m` or `flux` at its released architecture, random weights, tiny offline tokenizers."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from trl_rpo.memory import sdxl_unet_config
    from trl_rpo.memory_guide import (
        clip_g_text_config,
        clip_l_text_config,
        flux_dev_transformer_config,
        t5_xxl_encoder_config,
        vae_config,
    )
    from trl_rpo.testing._common import tiny_clip_tokenizer
    from trl_rpo.testing.flow import tiny_t5_tokenizer

    def module(factory):  # weights made on the device, in the training dtype; schedulers and tokenizers are not
        return _build(factory, device, dtype)

    def clip(config, projection=False):
        return module(lambda: (CLIPTextModelWithProjection if projection else CLIPTextModel)(CLIPTextConfig(**config)))

    if name == "sdxl":
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        )
        return StableDiffusionXLPipeline(
            vae=module(lambda: AutoencoderKL(**vae_config(4), scaling_factor=0.13025)),
            text_encoder=clip(clip_l_text_config()),
            text_encoder_2=clip(clip_g_text_config(), True),
            tokenizer=tiny_clip_tokenizer(),
            tokenizer_2=tiny_clip_tokenizer(),
            unet=module(lambda: UNet2DConditionModel(**sdxl_unet_config())),
            scheduler=scheduler,
        )
    t5 = module(lambda: T5EncoderModel(T5Config(**t5_xxl_encoder_config())))
    if name == "sd35m":
        return StableDiffusion3Pipeline(
            transformer=module(lambda: SD3Transformer2DModel(**SD35_MEDIUM)),
            vae=module(lambda: AutoencoderKL(**vae_config(16), scaling_factor=1.5305, shift_factor=0.0609)),
            text_encoder=clip(clip_l_text_config(), True),
            text_encoder_2=clip(clip_g_text_config(), True),
            text_encoder_3=t5,
            tokenizer=tiny_clip_tokenizer(),
            tokenizer_2=tiny_clip_tokenizer(),
            tokenizer_3=tiny_t5_tokenizer(512),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return FluxPipeline(
        transformer=module(lambda: FluxTransformer2DModel(**flux_dev_transformer_config())),
        vae=module(lambda: AutoencoderKL(**vae_config(16), scaling_factor=0.3611, shift_factor=0.1159)),
        text_encoder=clip(clip_l_text_config()),
        text_encoder_2=t5,
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_t5_tokenizer(512),
        scheduler=scheduler,
    )


def tiny_pipeline(name: str):
    from trl_rpo.testing import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sdxl_pipeline

    return {
        "sdxl": lambda: tiny_sdxl_pipeline(sample_size=32),
        "sd35m": lambda: tiny_sd3_pipeline(sample_size=32),
        "flux": tiny_flux_pipeline,
    }[name]()


def step_clock():
    """A `TrainerCallback` that records when each optimizer step ends (after a CUDA synchronisation)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    return StepClock()


def _seconds_per_step(times: list[float], warmup: int) -> float:
    durations = _steady(times, warmup)
    if not durations:
        raise RuntimeError(f"too few steps timed ({len(times)} ends, {warmup} warm-up)")
    return statistics.median(durations)


def _measured(run) -> dict[str, Any]:
    """Run `run() -> seconds per step` with peak-memory accounting, then free what it built."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds = run()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"seconds_per_step": round(seconds, 4), "peak_gib": peak}


def _dpo_setup(settings: SimpleNamespace):
    """What every Diffusion-DPO case shares: LoRA r16 on the attention projections, 2 pairs per step, bf16 on a GPU."""
    from peft import LoraConfig

    lora = LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=ATTENTION)
    args = SimpleNamespace(
        resolution=settings.dpo_resolution,
        batch_size=2,
        learning_rate=1e-5,
        seed=0,
        num_rows=2 * (settings.steps + settings.warmup + 2),
        steps=settings.steps + settings.warmup + 1,
    )
    return lora, args


def _dpo_trainer(settings: SimpleNamespace, args, lora, model: str, **options) -> float:
    """Seconds per step of `DiffusionDPOTrainer` on the case's pipeline (`model`: `sdxl` or `sd35m`)."""
    clock = step_clock()
    run = make_trainer(
        args,
        model,
        str(settings.work / f"{model}-{len(options)}-{options.get('precompute_latents')}"),
        callbacks=[clock],
        pipe=settings.pipeline(model),
        peft_config=lora,
        **({"bf16": True} if settings.bf16 else {}),
        **options,
    )
    run.train()
    return _seconds_per_step(clock.times, settings.warmup)


def sdxl_dpo(settings: SimpleNamespace) -> dict[str, Any]:
    lora, args = _dpo_setup(settings)

    def plain() -> float:
        loop = PlainDiffusionDPO(
            args,
            "sdxl",
            pipe=settings.pipeline("sdxl"),
            peft_config=lora,
            device=settings.device,
            dtype=settings.dtype,
        )
        ends = []
        for _ in range(args.steps):
            loop.step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append(time.perf_counter())
        return _seconds_per_step(ends, settings.warmup)

    rows = {
        "plain_stacked_step": _measured(plain),
        "trainer": _measured(lambda: _dpo_trainer(settings, args, lora, "sdxl", precompute_latents=False)),
        "trainer_precompute": _measured(lambda: _dpo_trainer(settings, args, lora, "sdxl", precompute_latents=True)),
    }
    for row in rows.values():
        row["pairs_per_s"] = round(2 / row["seconds_per_step"], 3)
        row["vs_plain"] = round(rows["plain_stacked_step"]["seconds_per_step"] / row["seconds_per_step"], 3)
    return {"resolution": args.resolution, "pairs_per_step": 2, "lora_r": 16, "variants": rows}


def sd35m_dpo(settings: SimpleNamespace) -> dict[str, Any]:
    lora, args = _dpo_setup(settings)
    row = _measured(
        lambda: _dpo_trainer(
            settings, args, lora, "sd35m", precompute_latents=False, max_sequence_length=settings.text_tokens
        )
    )
    row["pairs_per_s"] = round(2 / row["seconds_per_step"], 3)
    return {"resolution": args.resolution, "pairs_per_step": 2, "lora_r": 16, "variants": {"trainer": row}}


def flux_grpo(settings: SimpleNamespace) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig

    from trl_rpo import DiffusionGRPOConfig, DiffusionGRPOTrainer
    from trl_rpo.rewards import jpeg_compressibility

    prompts = Dataset.from_dict({"prompt": [f"a photo of object number {i}" for i in range(16)]})
    images, steps = 4, settings.rollout_steps

    def trainer(**options) -> float:
        clock = step_clock()
        config = DiffusionGRPOConfig(
            output_dir=str(settings.work / f"flux-{len(options)}"),
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            max_steps=settings.steps + settings.warmup + 1,
            num_generations=4,
            per_device_train_batch_size=images,
            num_inference_steps=steps,
            resolution=settings.grpo_resolution,
            max_sequence_length=settings.text_tokens,
            log_kl=False,
            bf16=settings.bf16,
            seed=0,
            **options,
        )
        lora = LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian", target_modules=FLUX_ATTENTION)
        run = DiffusionGRPOTrainer(
            model=settings.pipeline("flux"),
            reward_funcs=jpeg_compressibility,
            args=config,
            train_dataset=prompts,
            peft_config=lora,
            callbacks=[clock],
        )
        run.train()
        return _seconds_per_step(clock.times, settings.warmup)

    rows = {
        "default": _measured(trainer),
        "sde_window_2": _measured(
            lambda: trainer(sde_window_size=2, sde_window_range=[0, steps // 2], same_latent=True)
        ),
    }
    for row in rows.values():
        row["images_per_s"] = round(images / row["seconds_per_step"], 3)
        row["vs_default"] = round(rows["default"]["seconds_per_step"] / row["seconds_per_step"], 3)
    return {
        "resolution": settings.grpo_resolution,
        "images_per_step": images,
        "num_inference_steps": steps,
        "lora_r": 16,
        "variants": rows,
    }


CASES = {"sdxl_dpo": sdxl_dpo, "sd35m_dpo": sd35m_dpo, "flux_grpo": flux_grpo}


def run_suite(tiny: bool, work: Path, cases: list[str], steps: int, warmup: int) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32

    def pipeline(name: str):
        return tiny_pipeline(name) if tiny else real_pipeline(name, device, dtype)

    settings = SimpleNamespace(
        device=device,
        dtype=dtype,
        bf16=cuda,
        work=work,
        steps=steps,
        warmup=warmup,
        pipeline=pipeline,
        dpo_resolution=64 if tiny else 1024,
        grpo_resolution=32 if tiny else 512,
        rollout_steps=4 if tiny else 10,
        text_tokens=32 if tiny else 128,
    )
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "tiny": tiny,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "timed_steps": steps,
        "warmup_steps": warmup,
        "cases": {},
    }
    for name in cases:
        start = time.perf_counter()
        try:
            result["cases"][name] = {**CASES[name](settings), "wall_s": round(time.perf_counter() - start, 1)}
        except Exception as err:  # one failing case must not hide the others' figures
            result["cases"][name] = {"error": f"{type(err).__name__}: {err}"}
        print(name, json.dumps(result["cases"][name]), flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny pipelines on the CPU (checks the suite runs)")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 6; 2 with --tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 2; 1 with --tiny)")
    args = parser.parse_args()
    steps = args.steps or (2 if args.tiny else 6)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = run_suite(args.tiny, Path(tmp), args.cases, steps, warmup)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    failed = [name for name, case in result["cases"].items() if "error" in case]
    print(f"wrote {args.output}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
