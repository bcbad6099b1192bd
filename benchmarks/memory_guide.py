"""Memory guide for Diffusion-DPO: GPU memory per rank by option, from the real model configs.

    python benchmarks/memory_guide.py [--model sdxl|flux-dev|sd35-large|qwen-image|...|all] [--num_gpus 8]
                                      [--resolution 1024] [--lora_r 16] [--max_sequence_length N] [--markdown]
                                      [--measure]

Models (`trl_rpo.memory_guide.GUIDE_MODELS`): SDXL (LoRA and full fine-tuning), FLUX.1-dev (LoRA on its 12 B
transformer), SD3.5 Large (full fine-tuning of its 8 B transformer), Qwen-Image, Z-Image-Turbo and FLUX.2 [klein] 4B
(LoRA and full). Parameter counts come from the denoiser,
text encoders and VAE instantiated on the meta device from the real configs (exact, no weights needed);
activations from a meta-device forward of the denoiser on Diffusion-DPO's policy batch (chosen + rejected = 2
latents per pair, per-device batch 1) that records what autograd saves for backward, in bf16, attention counted as
the fused kernels keep it. Each row says whether it fits a 24, 40 and 80 GB card with 15% headroom; the
recommended option per card is the first row (fewest memory measures) that fits. Formulas: `trl_rpo.memory`,
models and rows: `trl_rpo.memory_guide`;
`tests/test_memory.py` checks the counting against real tensors on the tiny models.
"""

from __future__ import annotations

import argparse
import time

import torch

KEYS = ["weights", "gradients", "optimizer", "activations", "encoders", "total"]
DENOISER = {"sdxl": "UNet"}  # the others are transformers


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


def _print_guide(key: str, cli) -> None:
    from trl_rpo.memory_guide import CARD_HEADROOM, CARDS_GIB, fits_card, memory_guide

    start = time.perf_counter()
    guide = memory_guide(key, num_gpus=cli.num_gpus, resolution=cli.resolution, lora_r=cli.lora_r,
                         text_tokens=cli.max_sequence_length)  # fmt: skip
    denoiser = DENOISER.get(key, "transformer")
    print(f"## {guide.model}\n")
    print(f"{denoiser} {guide.denoiser_params / 1e9:.3f} B parameters; LoRA r={guide.lora_r} on the family's "
          f"default targets: {guide.lora_params / 1e6:.1f} M; text encoders + VAE {guide.encoder_params / 1e9:.3f} B "
          f"(frozen, bf16); {guide.resolution} px, {guide.text_tokens} text tokens, 1 pair per GPU, bf16")  # fmt: skip
    for lora, profile in guide.activations.items():
        kind = "LoRA" if lora else "full fine-tuning"
        print(f"policy activations (2 latents), {kind}: {profile.full / 2**30:.2f} GiB; with gradient checkpointing "
              f"{profile.checkpointed / 2**30:.2f} GiB saved + {profile.largest_block / 2**30:.2f} GiB for the "
              "largest block recomputed in backward")  # fmt: skip
    cards = [f"{card} GB" for card in CARDS_GIB]
    if cli.markdown:
        print("\n| option (GiB per GPU) | " + " | ".join(KEYS + cards) + " |")
        print("|---|" + "---:|" * len(KEYS) + ":---:|" * len(cards))
        for setup, estimate in guide.rows:
            row, fit = estimate.row(), ["yes" if fits_card(estimate, c) else "-" for c in CARDS_GIB]
            print(f"| {setup.name} | " + " | ".join([f"{row[k]:.2f}" for k in KEYS] + fit) + " |")
    else:
        print(f"\n{'option (GiB per GPU)':<52}" + "".join(f"{k:>12}" for k in KEYS + cards))
        for setup, estimate in guide.rows:
            row, fit = estimate.row(), ["yes" if fits_card(estimate, c) else "-" for c in CARDS_GIB]
            print(f"{setup.name:<52}" + "".join(f"{row[k]:>12.2f}" for k in KEYS) + "".join(f"{f:>12}" for f in fit))
    print(f"\nFirst option that fits, with {CARD_HEADROOM:.0%} headroom:\n")
    for lora in sorted({setup.lora for setup, _ in guide.rows}, reverse=True):
        for card in CARDS_GIB:
            setup = guide.recommended(card, lora=lora)
            print(f"- {card} GB, {'LoRA' if lora else 'full fine-tuning'}: {setup.name if setup else 'none of these'}")
    print(f"\n({time.perf_counter() - start:.1f} s)\n")


def main() -> None:
    from trl_rpo.memory_guide import GUIDE_MODELS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[*GUIDE_MODELS, "all"], default="sdxl")
    parser.add_argument("--num_gpus", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--max_sequence_length", type=int, default=None,
                        help="T5 tokens (SD3 / FLUX; default: the pipeline's, 256 / 512)")  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown (docs/memory.md)")
    parser.add_argument("--measure", action="store_true", help="also compare modelled totals with CUDA peaks")
    cli = parser.parse_args()
    if cli.measure:
        _print_measured()
    for key in GUIDE_MODELS if cli.model == "all" else [cli.model]:
        _print_guide(key, cli)


if __name__ == "__main__":
    main()
