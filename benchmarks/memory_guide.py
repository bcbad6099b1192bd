"""Memory guide for Diffusion-DPO on SDXL: GPU memory per rank by option, from the real model configs.

    python benchmarks/memory_guide.py [--num_gpus 8] [--resolution 1024] [--lora_r 16] [--markdown]

Parameter counts come from SDXL's UNet, text encoders and VAE instantiated on the meta device (exact, no
weights needed); activations from a meta-device forward of the UNet on Diffusion-DPO's policy batch (chosen +
rejected = 2 latents per pair, per-device batch 1) that records what autograd saves for backward, in bf16.
Formulas: `trl_rpo.memory`. `tests/test_memory.py` checks the counting against real tensors on the tiny models.
"""

from __future__ import annotations

import argparse
import time

import torch


def _encoders_params() -> int:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from trl_rpo.memory import count_parameters

    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            vocab_size=49408, max_position_embeddings=77, projection_dim=768)  # fmt: skip
    big_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                           vocab_size=49408, max_position_embeddings=77, projection_dim=1280,
                           hidden_act="gelu")  # fmt: skip
    vae = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
               down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip
    return (
        count_parameters(lambda: CLIPTextModel(clip_l))
        + count_parameters(lambda: CLIPTextModelWithProjection(big_g))
        + count_parameters(lambda: AutoencoderKL(**vae))
    )


def _activations(resolution: int, lora_r: int | None, checkpointing: bool) -> int:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from trl_rpo.memory import saved_activation_bytes, sdxl_unet_config

    with init_empty_weights():
        unet = UNet2DConditionModel(**sdxl_unet_config())
        if lora_r is not None:
            from peft import LoraConfig

            unet.requires_grad_(False)
            targets = ["to_q", "to_k", "to_v", "to_out.0"]
            unet.add_adapter(LoraConfig(r=lora_r, lora_alpha=lora_r, target_modules=targets))
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    side = resolution // 8
    meta = {"device": "meta"}

    def run():
        return unet(
            torch.empty(2, 4, side, side, **meta),
            torch.zeros(2, dtype=torch.long, **meta),
            torch.empty(2, 77, 2048, **meta),
            added_cond_kwargs={"text_embeds": torch.empty(2, 1280, **meta), "time_ids": torch.empty(2, 6, **meta)},
        ).sample

    return saved_activation_bytes(run, dtype_bytes=2)


def _print_measured() -> None:
    """Modelled total vs measured CUDA peak (`max_memory_allocated`) of a float32 Diffusion-DPO step, small UNet."""
    from trl_rpo.memory import modelled_and_measured_peak, small_unet_config

    if not torch.cuda.is_available():
        print("--measure: no CUDA GPU here; modelled totals are GPU bytes, so there is nothing to measure\n")
        return
    print(f"modelled vs measured ({torch.cuda.get_device_name()}, small UNet, fp32, 1 pair, 32x32 latents):")
    for name, rank in (("LoRA r=8", 8), ("full", None)):
        modelled, measured = modelled_and_measured_peak(small_unet_config(), rank, latent_side=32)
        row = modelled.row()
        parts = ", ".join(f"{k} {row[k]:.3f}" for k in ("weights", "gradients", "optimizer", "activations"))
        print(f"  {name:<9} modelled {row['total']:.3f} GiB ({parts}); measured peak {measured / 2**30:.3f} GiB; "
              f"measured/modelled {measured / modelled.total:.2f}")  # fmt: skip
    print()


def main() -> None:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    from trl_rpo.memory import (
        TrainingSetup,
        count_parameters,
        estimate_training_memory,
        lora_parameter_count,
        sdxl_unet_config,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_gpus", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (docs/memory.md)")
    parser.add_argument("--measure", action="store_true", help="also compare modelled totals with CUDA peaks")
    cli = parser.parse_args()
    if cli.measure:
        _print_measured()
    start = time.perf_counter()
    unet_params = count_parameters(lambda: UNet2DConditionModel(**sdxl_unet_config()))
    with init_empty_weights():
        lora_params = lora_parameter_count(UNet2DConditionModel(**sdxl_unet_config()), cli.lora_r)
    encoder_params = _encoders_params()
    act = {
        (lora, ckpt): _activations(cli.resolution, cli.lora_r if lora else None, ckpt)
        for lora in (True, False)
        for ckpt in (False, True)
    }
    n = cli.num_gpus
    setups = [
        TrainingSetup("LoRA, AdamW", lora=True),
        TrainingSetup("LoRA + grad. checkpointing", lora=True, gradient_checkpointing=True),
        TrainingSetup("LoRA + checkpointing + precomputed latents", lora=True, gradient_checkpointing=True,
                      precompute_latents=True),  # fmt: skip
        TrainingSetup(f"LoRA, ZeRO-2 x{n}, checkpointing", lora=True, zero_stage=2, num_gpus=n,
                      gradient_checkpointing=True),  # fmt: skip
        TrainingSetup("full, AdamW", lora=False),
        TrainingSetup("full + checkpointing", lora=False, gradient_checkpointing=True),
        TrainingSetup("full + checkpointing + 8-bit AdamW", lora=False, gradient_checkpointing=True,
                      optimizer_bytes=2),  # fmt: skip
        TrainingSetup(f"full, ZeRO-2 x{n}, checkpointing", lora=False, zero_stage=2, num_gpus=n,
                      gradient_checkpointing=True),  # fmt: skip
        TrainingSetup(f"full, ZeRO-3 x{n}, checkpointing", lora=False, zero_stage=3, num_gpus=n,
                      gradient_checkpointing=True),  # fmt: skip
        TrainingSetup(f"full, ZeRO-3 x{n} + CPU offload, ckpt.", lora=False, zero_stage=3, num_gpus=n,
                      offload=True, gradient_checkpointing=True),  # fmt: skip
    ]
    rows = []
    for setup in setups:
        setup = TrainingSetup(**{**setup.__dict__, "lora_fraction": lora_params / unet_params})
        estimate = estimate_training_memory(setup, unet_params, encoder_params, act[(setup.lora, False)],
                                            act[(setup.lora, True)])  # fmt: skip
        rows.append((setup.name, estimate.row()))
    gib = {key: value / 2**30 for key, value in act.items()}
    print(f"SDXL UNet {unet_params / 1e9:.3f} B parameters; LoRA r={cli.lora_r} on attention: "
          f"{lora_params / 1e6:.1f} M; text encoders + VAE {encoder_params / 1e6:.0f} M; {cli.resolution} px, "
          "1 pair per GPU, bf16")  # fmt: skip
    print(f"policy activations (2 latents): {gib[(False, False)]:.1f} GiB full, {gib[(True, False)]:.1f} GiB LoRA; "
          f"with gradient checkpointing {gib[(False, True)]:.2f} / {gib[(True, True)]:.2f} GiB")  # fmt: skip
    keys = ["weights", "gradients", "optimizer", "activations", "encoders", "total"]
    if cli.markdown:
        print("\n| option | " + " | ".join(keys) + " |")
        print("|---|" + "---:|" * len(keys))
        for name, row in rows:
            print(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    else:
        print(f"\n{'option (GiB per GPU)':<45}" + "".join(f"{k:>12}" for k in keys))
        for name, row in rows:
            print(f"{name:<45}" + "".join(f"{row[k]:>12.2f}" for k in keys))
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
