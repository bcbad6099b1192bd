"""Pretrain the shapes world's base text-to-image model from scratch, on a CPU, reproducibly.

    python -m trl_rpo.shapes.pretrain --config trl_rpo/shapes/pretrain.yaml --output-dir outputs/shapes-base

The result is a standard diffusers `StableDiffusionPipeline` folder (UNet2DConditionModel, CLIPTextModel with a
word-level tokenizer, AutoencoderKL, DDIMScheduler) that `trl_rpo.shapes.load_pipeline(path)` and
`StableDiffusionPipeline.from_pretrained(path)` load. The checkpoint shipped in `trl_rpo/shapes/checkpoint/` was
made by exactly this command with the YAML next to this file; `training_info.json` in it records the config,
the losses, the wall time and the base model's alignment.

Two stages, both on images rendered by `trl_rpo.shapes.render` for *train-split* prompts only (held-out
(shape, color) pairs are never seen, so held-out prompts test compositional generalization):

1. an AutoencoderKL (32x32 RGB -> 16x16x4 latents) trained for reconstruction with a small KL term;
2. the UNet and the text encoder trained jointly with the epsilon objective (or v-prediction, optionally on a
   schedule rescaled to zero terminal SNR), Min-SNR weighting (`diffusers.training_utils.compute_snr`), 10% empty
   prompts for classifier-free guidance and an EMA of the weights (`diffusers.training_utils.EMAModel`), which is
   what is saved.

`vae_from` reuses a trained pipeline's autoencoder and skips stage 1, to compare UNet objectives on one
autoencoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..diffusion import stable_diffusion_ddim_scheduler
from .world import BACKGROUNDS, PALETTE, POSITIONS, SHAPES, all_scenes, prompt_text

__all__ = [
    "PretrainConfig",
    "build_components",
    "build_tokenizer",
    "denoising_target",
    "evaluate_base",
    "main",
    "pretrain",
    "vocabulary",
]

_SPECIAL = ("<|startoftext|>", "<|endoftext|>", "<|unk|>")
_GRAMMAR_WORDS = ("one two three a an on the left right at top bottom in center , of background")


@dataclass
class PretrainConfig:
    """Everything that decides the shapes base model; the shipped checkpoint used `pretrain.yaml`'s values."""

    seed: int = field(default=0, metadata={"help": "Seed of rendering, initialization, noise and data order."})
    image_size: int = field(default=32, metadata={"help": "Side of the rendered training images, in pixels."})
    images_per_scene: int = field(default=8, metadata={"help": "Rendered layouts (render seeds) per train scene."})
    vae_steps: int = field(default=600, metadata={"help": "Optimizer steps of the autoencoder stage."})
    vae_learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate of the autoencoder."})
    vae_kl_weight: float = field(default=1e-6, metadata={"help": "Weight of the KL term of the autoencoder loss."})
    vae_l1_weight: float = field(
        default=0.0, metadata={"help": "Weight of an L1 reconstruction term (sharper edges than MSE alone)."}
    )
    vae_channels: tuple[int, ...] = field(
        default=(16, 32), metadata={"help": "Autoencoder block_out_channels (two blocks: one 2x downsampling)."}
    )
    latent_channels: int = field(
        default=4,
        metadata={"help": "Latent channels; 12 hold every value of a 32x32x3 image at 16x16 (sharp edges)."},
    )
    steps: int = field(default=2400, metadata={"help": "Optimizer steps of the UNet + text encoder stage."})
    batch_size: int = field(default=32, metadata={"help": "Images per optimizer step (both stages)."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak AdamW learning rate of the UNet stage."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up steps before the cosine decay."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (both stages)."})
    snr_gamma: float | None = field(default=5.0, metadata={"help": "Min-SNR-gamma weighting; None disables."})
    offset_noise: float = field(
        default=0.0,
        metadata={"help": "Offset noise: add this times a per-image, per-channel constant to the noise, so the model "
                  "can move an image's mean (black and white backgrounds) despite non-zero terminal SNR."},
    )  # fmt: skip
    prediction_type: str = field(
        default="epsilon",
        metadata={"help": "What the UNet predicts: 'epsilon' (the noise) or 'v_prediction' (the velocity, "
                  "Salimans & Ho 2022); saved in the scheduler's config, which every trainer reads."},
    )  # fmt: skip
    zero_terminal_snr: bool = field(
        default=False,
        metadata={"help": "Rescale the betas to zero terminal SNR and sample with trailing timesteps (Lin et al. "
                  "2024), so the noisiest training input carries no trace of the image; needs v_prediction."},
    )  # fmt: skip
    vae_from: str | None = field(
        default=None,
        metadata={"help": "A pipeline folder whose trained autoencoder is reused (stage 1 is skipped)."},
    )
    empty_prompt_probability: float = field(
        default=0.1, metadata={"help": "Share of captions replaced by '' so classifier-free guidance works."}
    )
    ema_decay: float = field(default=0.999, metadata={"help": "Decay of the EMA of the weights that is saved."})
    unet_channels: tuple[int, ...] = field(
        default=(32, 64, 64), metadata={"help": "UNet block_out_channels (16, 8, 4 pixel latents)."}
    )
    text_hidden_size: int = field(default=64, metadata={"help": "Hidden size of the 2-layer CLIP text encoder."})
    log_every: int = field(default=100, metadata={"help": "Print the running loss every this many steps."})
    eval_prompts: int = field(default=48, metadata={"help": "Held-out prompts of the final alignment check."})
    eval_seeds: tuple[int, ...] = field(default=(0, 1), metadata={"help": "Seeds of the final alignment check."})
    num_inference_steps: int = field(default=20, metadata={"help": "DDIM steps of the final alignment check."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Guidance of the final alignment check."})

    def __post_init__(self):
        self.unet_channels = tuple(self.unet_channels)
        self.vae_channels = tuple(self.vae_channels)
        self.eval_seeds = tuple(self.eval_seeds)
        for name in ("image_size", "images_per_scene", "steps", "batch_size", "vae_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_size % 2:
            raise ValueError(f"image_size must be even (the autoencoder halves it), got {self.image_size}")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {self.prediction_type!r}")
        if self.zero_terminal_snr and self.prediction_type != "v_prediction":
            raise ValueError(
                "zero_terminal_snr needs prediction_type='v_prediction': at zero SNR the noise is the input itself "
                "and an epsilon model learns nothing about the image (Lin et al. 2024)"
            )


def vocabulary() -> list[str]:
    """Every token of the word-level tokenizer: special tokens, then the grammar's words, sorted."""
    words = set(_GRAMMAR_WORDS.split()) | set(PALETTE) | set(BACKGROUNDS) | set(POSITIONS)
    words |= set(SHAPES) | {shape + "s" for shape in SHAPES}
    return [*_SPECIAL, *sorted(words)]


def build_tokenizer(model_max_length: int = 16):
    """A word-level `PreTrainedTokenizerFast` for the shapes grammar (one token per word, CLIP's bos/eos).

    Shapes prompts are at most 11 words, so 16 positions hold any prompt with its bos and eos; unknown words map
    to `<|unk|>`. Padding uses the eos token, as in Stable Diffusion.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = _SPECIAL[0], _SPECIAL[1]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=_SPECIAL[2],
        pad_token=eos,
        model_max_length=model_max_length,
    )


def build_components(config: PretrainConfig) -> dict[str, Any]:
    """Freshly initialized pipeline components (seeded by `config.seed`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(config.seed)
    tokenizer = build_tokenizer()
    hidden = config.text_hidden_size
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=config.vae_channels,
        layers_per_block=1,
        latent_channels=config.latent_channels,
        norm_num_groups=8,
        sample_size=config.image_size,
        mid_block_add_attention=False,
    )
    c0, c1, c2 = config.unet_channels
    unet = UNet2DConditionModel(
        sample_size=config.image_size // 2,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        block_out_channels=(c0, c1, c2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = stable_diffusion_ddim_scheduler()
    if config.prediction_type != "epsilon" or config.zero_terminal_snr:
        zero = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"} if config.zero_terminal_snr else {}
        scheduler = type(scheduler).from_config(scheduler.config, prediction_type=config.prediction_type, **zero)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "unet": unet, "scheduler": scheduler}


def _render_dataset(config: PretrainConfig) -> tuple[torch.Tensor, list[str]]:
    """Train-split scenes x `images_per_scene` layouts as a [-1, 1] tensor, with their prompts."""
    from .render import render

    prompts, arrays = [], []
    for scene in all_scenes("train"):
        text = prompt_text(scene)
        for k in range(config.images_per_scene):
            arrays.append(np.asarray(render(scene, size=config.image_size, seed=config.seed * 1000 + k)))
            prompts.append(text)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, prompts


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _train_vae(vae, pixels: torch.Tensor, config: PretrainConfig, rng: torch.Generator, log) -> list[float]:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=config.weight_decay)
    vae.train()
    losses = []
    for step in range(config.vae_steps):
        for group in optimizer.param_groups:
            group["lr"] = config.vae_learning_rate * _cosine_with_warmup(step, config.vae_steps, 50)
        batch = pixels[torch.randint(len(pixels), (config.batch_size,), generator=rng)]
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=rng)).sample
        loss = F.mse_loss(reconstruction, batch) + config.vae_kl_weight * posterior.kl().mean()
        if config.vae_l1_weight:
            loss = loss + config.vae_l1_weight * F.l1_loss(reconstruction, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % config.log_every == 0:
            log(f"vae step {step + 1}/{config.vae_steps} loss {np.mean(losses[-config.log_every:]):.5f}")
    vae.eval()
    return losses


@torch.no_grad()
def _encode_dataset(vae, pixels: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(pixels), batch_size):
        dist = vae.encode(pixels[start : start + batch_size]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def denoising_target(
    scheduler, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, snr_gamma: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The UNet's regression target and each sample's loss weight, for the scheduler's `prediction_type`.

    epsilon: target eps, weight min(SNR_t, gamma) / SNR_t; v_prediction: target v = sqrt(abar_t) eps -
    sqrt(1 - abar_t) x0 (Salimans & Ho 2022, `scheduler.get_velocity`), weight min(SNR_t, gamma) / (SNR_t + 1), which
    stays finite at zero terminal SNR (Min-SNR-gamma, Hang et al. 2023, as diffusers' training scripts apply it).
    Weights are 1 when `snr_gamma` is None.
    """
    from diffusers.training_utils import compute_snr

    velocity = scheduler.config.prediction_type == "v_prediction"
    target = scheduler.get_velocity(x0, noise, timesteps) if velocity else noise
    if snr_gamma is None:
        return target, torch.ones(len(x0))
    snr = compute_snr(scheduler, timesteps)
    return target, torch.clamp(snr, max=snr_gamma) / (snr + 1 if velocity else snr)


def _train_unet(components, latents, prompts, config: PretrainConfig, rng: torch.Generator, log) -> list[float]:
    from diffusers.training_utils import EMAModel

    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    scheduler = components["scheduler"]
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    ema = EMAModel(params, decay=config.ema_decay)
    means, stds = latents
    unique = sorted(set(prompts))
    token_ids = tokenizer(
        [*unique, ""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    row_of = {text: i for i, text in enumerate(unique)}
    prompt_rows = torch.tensor([row_of[text] for text in prompts])
    empty_row = len(unique)
    unet.train()
    text_encoder.train()
    losses = []
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * _cosine_with_warmup(step, config.steps, config.warmup_steps)
        index = torch.randint(len(means), (config.batch_size,), generator=rng)
        x0 = means[index] + stds[index] * torch.randn(means[index].shape, generator=rng)
        x0 = x0 * components["vae"].config.scaling_factor
        rows = prompt_rows[index].clone()
        rows[torch.rand(len(rows), generator=rng) < config.empty_prompt_probability] = empty_row
        hidden = text_encoder(token_ids[rows])[0]
        noise = torch.randn(x0.shape, generator=rng)
        if config.offset_noise:
            noise = noise + config.offset_noise * torch.randn((x0.shape[0], x0.shape[1], 1, 1), generator=rng)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(x0),), generator=rng)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        prediction = unet(noisy, timesteps, hidden).sample
        target, weight = denoising_target(scheduler, x0, noise, timesteps, config.snr_gamma)
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3)) * weight
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        losses.append(loss.item())
        if (step + 1) % config.log_every == 0:
            log(f"unet step {step + 1}/{config.steps} loss {np.mean(losses[-config.log_every:]):.4f}")
    ema.copy_to(params)
    unet.eval()
    text_encoder.eval()
    return losses


def evaluate_base(pipeline, config: PretrainConfig | None = None) -> dict[str, Any]:
    """Alignment of a shapes pipeline on held-out and train prompts (the protocol recorded with the checkpoint)."""
    from ..evaluation import evaluate_pipeline
    from .evaluate import alignment_score
    from .world import prompts as shape_prompts

    config = config or PretrainConfig()
    out: dict[str, Any] = {
        "protocol": {
            "prompts": config.eval_prompts,
            "prompt_seed": 0,
            "seeds": list(config.eval_seeds),
            "num_inference_steps": config.num_inference_steps,
            "guidance_scale": config.guidance_scale,
        }
    }
    for split in ("held_out", "train"):
        result = evaluate_pipeline(
            pipeline,
            shape_prompts(config.eval_prompts, seed=0, split=split),
            alignment_score,
            seeds=config.eval_seeds,
            batch_size=16,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
        )
        out[split] = {"alignment": result.mean["alignment_score"], "ci": result.ci["alignment_score"]}
    return out


def pretrain(config: PretrainConfig, output_dir: str | Path, log=print) -> dict[str, Any]:
    """Train both stages, save the pipeline to `output_dir` (which must not hold one) and return the run record."""
    from diffusers import StableDiffusionPipeline

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; choose a new --output-dir (nothing is overwritten)")
    start = time.perf_counter()
    random.seed(config.seed)
    np.random.seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)
    components = build_components(config)
    pixels, prompts = _render_dataset(config)
    log(f"rendered {len(pixels)} images of {len(set(prompts))} train scenes")
    if config.vae_from:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(config.vae_from, subfolder="vae", use_safetensors=True)
        if components["vae"].config.latent_channels != config.latent_channels:
            raise ValueError(f"vae_from {config.vae_from}: its autoencoder has "
                             f"{components['vae'].config.latent_channels} latent channels, the config's UNet "
                             f"expects latent_channels={config.latent_channels}")  # fmt: skip
        vae_losses = []
        means, stds = _encode_dataset(components["vae"], pixels)
        log(f"autoencoder from {config.vae_from} (scaling factor {components['vae'].config.scaling_factor:.4f})")
    else:
        vae_losses = _train_vae(components["vae"], pixels, config, rng, log)
        means, stds = _encode_dataset(components["vae"], pixels)
        # Latents scaled to unit variance, as Stable Diffusion's scaling_factor does for its VAE.
        components["vae"].register_to_config(scaling_factor=float(1.0 / means.std()))
    vae_seconds = time.perf_counter() - start
    unet_losses = _train_unet(components, (means, stds), prompts, config, rng, log)
    pipeline = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)  # fmt: skip
    pipeline.set_progress_bar_config(disable=True)
    train_seconds = time.perf_counter() - start
    evaluation = evaluate_base(pipeline, config)
    pipeline.save_pretrained(output_dir)
    record = {
        "config": dataclasses.asdict(config),
        "train_seconds": round(train_seconds, 1),
        "vae_seconds": round(vae_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "final_vae_loss": float(np.mean(vae_losses[-50:])) if vae_losses else None,
        "final_unet_loss": float(np.mean(unet_losses[-100:])),
        "alignment": evaluation,
    }
    (output_dir / "training_info.json").write_text(json.dumps(record, indent=2) + "\n")
    log(json.dumps(record["alignment"]))
    return record


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of PretrainConfig fields (the shipped one: pretrain.yaml)")
    parser.add_argument("--output-dir", required=True, help="new folder for the pipeline (never overwritten)")
    unset = object()  # not None: `--snr_gamma null` must be able to set a field to None
    for f in dataclasses.fields(PretrainConfig):
        parser.add_argument(f"--{f.name}", type=_parse_value, default=unset, help=f.metadata["help"])
    cli = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if cli.config:
        values.update(yaml.safe_load(Path(cli.config).read_text()) or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(PretrainConfig)})
        if unknown:
            parser.error(f"{cli.config}: unknown fields {unknown}")
    values.update({f.name: getattr(cli, f.name) for f in dataclasses.fields(PretrainConfig)
                   if getattr(cli, f.name) is not unset})  # fmt: skip
    config = PretrainConfig(**values)
    pretrain(config, cli.output_dir, log=lambda message: print(message, flush=True))
    return 0


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


if __name__ == "__main__":
    sys.exit(main())
