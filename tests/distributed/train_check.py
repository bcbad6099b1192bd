"""Run one trainer under `accelerate launch` (several processes) and write what each rank saw to JSON.

Used by tests/test_distributed.py; run by hand with e.g.

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --main_process_port 29511 \
        tests/distributed/train_check.py --trainer dpo --output_dir /tmp/check

Each rank writes `rank-<r>.json`: the process count, the prompts it trained on per step, its local metric values,
the logged (reduced) metrics and a checksum of its trainable parameters after training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections import defaultdict
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import TrainerCallback

from tests._helpers import wide_preference_pairs
from trl_rpo import (
    DiffusionDPOConfig,
    DiffusionDPOTrainer,
    DiffusionGRPOConfig,
    DiffusionGRPOTrainer,
    DiffusionNFTConfig,
    DiffusionNFTTrainer,
    TailorPOConfig,
    TailorPOTrainer,
)
from trl_rpo.models import DenoiserAdapter
from trl_rpo.testing import (
    tiny_flux_pipeline,
    tiny_lora_config,
    tiny_preference_dataset,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
)
from trl_rpo.trainer.base import zero3_init_disabled

BUILDERS = {"sd": tiny_sd_pipeline, "sdxl": tiny_sdxl_pipeline, "flux": tiny_flux_pipeline}
FLOW_ARGS = {"resolution": 32, "max_sequence_length": 16}  # the tiny flow pipelines: 32 px, short T5 prompts


class Recording:
    """Mixin: remembers the prompts of every training batch, the local value of every metric and the random draws."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_prompts: list[list[str]] = []
        self.local_metrics: dict[str, list[float]] = defaultdict(list)
        self.pooled_values: dict[str, list[list[float]]] = defaultdict(list)  # this process's values, per call
        self.draws: list[dict] = []  # per training step: what this process drew from its random stream
        self.augmentations: list[dict] = []  # per training step (DPO on images): crops and VAE posterior draws

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen_prompts.append(list(inputs["prompt"]))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _record_metric(self, mode, name, value):
        self.local_metrics[name].append(value.detach().float().mean().item())
        super()._record_metric(mode, name, value)

    def _record_pooled(self, mode, name, values, std=False):
        self.pooled_values[name].append(values.detach().float().reshape(-1).tolist())
        super()._record_pooled(mode, name, values, std)


class RecordingDPO(Recording, DiffusionDPOTrainer):
    def encode_batch(self, inputs):
        latents, conditioning = super().encode_batch(inputs)
        if self.model.training and "pixel_values" in inputs:
            # The draws behind these latents: each chosen image's crop offset, and the standard normal values of the
            # VAE posterior sample (latents = scale * (mean + std * eps), mean and std recomputed without sampling).
            vae = self.pipeline.vae
            with torch.no_grad():
                posterior = vae.encode(inputs["pixel_values"].to(vae.device, vae.dtype)).latent_dist
            eps = (latents.cpu() / vae.config.scaling_factor - posterior.mean.cpu()) / posterior.std.cpu()
            half = len(inputs["prompt"])
            self.augmentations.append(
                {"crops": inputs["crop_top_lefts"][:half].tolist(), "vae_eps": eps.flatten()[:4].tolist()}
            )
        return latents, conditioning

    def sample_noise_and_timesteps(self, latents):
        noise, timesteps = super().sample_noise_and_timesteps(latents)
        if self.model.training:
            self.draws.append({"timesteps": timesteps.tolist(), "noise": noise.flatten()[:4].tolist()})
        return noise, timesteps


class RecordingRollouts(Recording):
    """Also records the starting latents of every training rollout, as the rollout received them."""

    def initial_latents(self, num, generator=None):
        latents = super().initial_latents(num, generator)
        if self.model.training:
            self.draws.append({"start": latents.flatten()[:4].tolist()})
        return latents


class RecordingTailorPO(RecordingRollouts, TailorPOTrainer):
    def sample_pairs(self, prompts, conditioning=None, generator=None):
        pairs = super().sample_pairs(prompts, conditioning, **({"generator": generator} if generator else {}))
        if self.model.training:
            self.trained_pairs = getattr(self, "trained_pairs", []) + [(list(prompts), pairs)]
        return pairs

    def local_pair_gradient(self, params):
        """(sum over this process's pairs of the per-pair loss gradient, pair count), for the first training step.

        Recomputed outside DDP on the bare UNet, whose weights the caller has set back to their initial values:
        what this process's pairs alone contribute, to compare the trained update with.
        """
        prompts, pairs = self.trained_pairs[0]
        if len(pairs) == 0:
            return [torch.zeros_like(p) for p in params], 0
        unet = self._unwrapped_unet()
        cond, uncond = self.encode_conditioning(prompts)
        policy_c, policy_r = self.step_log_probs(unet, pairs, cond, uncond)
        with torch.no_grad(), self.reference_model() as reference:
            ref_c, ref_r = self.step_log_probs(reference, pairs, cond, uncond)
        losses = self.preference_loss(policy_c, policy_r, ref_c, ref_r)[0]
        return list(torch.autograd.grad(losses.sum(), params)), len(pairs)


class RecordingGRPO(RecordingRollouts, DiffusionGRPOTrainer):
    pass


class RecordingNFT(RecordingRollouts, DiffusionNFTTrainer):
    """Also records each training rollout's rewards and advantages (to check `scale_rewards="batch"` across ranks)."""

    def rollout(self, prompts, conditioning=None, generator=None):
        rollout = super().rollout(prompts, conditioning, generator)
        if self.model.training:
            self.draws[-1].update(rewards=rollout.rewards.tolist(), advantages=rollout.advantages.tolist())
        return rollout


def brightness(images, prompts, **kwargs):
    return [sum(img.convert("L").getdata()) / (255.0 * img.width * img.height) for img in images]


def discrete_brightness(images, prompts, **kwargs):
    """A discrete reward that ties every candidate on process 1 and rarely on process 0: ranks find different numbers
    of pairs, process 1 none at all (as `alignment_score` does when every candidate is equally right or wrong)."""
    if PartialState().process_index == 1:
        return [0.0] * len(images)
    return [float(sum(img.convert("L").getdata())) for img in images]  # integer sums of 8-bit pixels


def half_tied_brightness(images, prompts, **kwargs):
    """Brightness, except that on process 1 every candidate of the batch's first prompt ties: process 1 finds pairs
    for one of its prompts, process 0 for all of its prompts (different, non-zero pair counts)."""
    if PartialState().process_index == 1:
        return [0.0 if prompt == prompts[0] else value for prompt, value in zip(prompts, brightness(images, prompts))]
    return brightness(images, prompts)


REWARDS = {"brightness": brightness, "discrete_brightness": discrete_brightness,
           "half_tied_brightness": half_tied_brightness}  # fmt: skip


def _denoiser_inputs(trainer):
    """Fixed inputs for one denoiser call of the trainer's family: latents, timesteps and the conditioning dict."""
    generator = torch.Generator().manual_seed(0)
    config = trainer.accelerator.unwrap_model(trainer.model).config
    side = trainer.resolution // trainer.pipeline.vae_scale_factor
    latents = torch.randn(2, trainer.model_adapter.latent_channels, side, side, generator=generator)
    name = trainer.family.name
    if name == "flux":
        conditioning = {
            "prompt_embeds": torch.randn(2, 4, config.joint_attention_dim, generator=generator),
            "pooled_prompt_embeds": torch.randn(2, config.pooled_projection_dim, generator=generator),
        }
        return latents, torch.tensor([10.0, 500.0]), conditioning
    conditioning = {"prompt_embeds": torch.randn(2, 4, config.cross_attention_dim, generator=generator)}
    if name == "sdxl":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        conditioning["pooled_prompt_embeds"] = torch.randn(2, pooled, generator=generator)
        conditioning["time_ids"] = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 2)
    return latents, torch.tensor([10, 500]), conditioning


@torch.no_grad()
def _reload_difference(trainer, cli, saved) -> float | None:
    """Max |difference| between the trained denoiser and a fresh pipeline with the saved weights (same input).

    Every rank runs the trained denoiser (under ZeRO-3 its forward gathers the partitioned weights collectively);
    the main process loads the saved LoRA (`load_lora_weights`) or denoiser folder into a fresh pipeline and
    compares. Both calls go through the family's adapter (FLUX: packed latents, RoPE ids, guidance embedding).
    """
    from diffusers import DiffusionPipeline

    unet = trainer.accelerator.unwrap_model(trainer.model)
    latents, timesteps, conditioning = _denoiser_inputs(trainer)
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    latents, timesteps = latents.to(device, dtype), timesteps.to(device)
    conditioning = {k: v.to(device, dtype) for k, v in conditioning.items()}
    unet.eval()
    trained = trainer.model_adapter.predict(unet, latents, timesteps, conditioning).float()
    if not trainer.accelerator.is_main_process:
        return None
    if cli.model_path is not None:
        # Only this rank loads: transformers' ZeRO-3 hook (a collective zero.Init) must be off, as in the trainer.
        with zero3_init_disabled():
            fresh = DiffusionPipeline.from_pretrained(cli.model_path)
    else:
        fresh = BUILDERS[cli.model]()
    denoiser = trainer.family.denoiser
    if cli.full:
        setattr(fresh, denoiser, type(unet).from_pretrained(saved, subfolder=denoiser))
    else:
        fresh.load_lora_weights(str(saved))
    getattr(fresh, denoiser).to(device, dtype)
    adapter = DenoiserAdapter(fresh, embedded_guidance_scale=trainer.args.embedded_guidance_scale)
    loaded = adapter.predict(getattr(fresh, denoiser), latents, timesteps, conditioning).float()
    return float((loaded - trained).abs().max())


VALIDATION_PROMPTS = ("a red square", "a blue circle")


def _validation_difference(trainer, cli, run_dir: Path) -> float | None:
    """Max |difference| (0-255 levels) between the last validation images and a whole, unpartitioned UNet's.

    Every rank takes part in gathering the trained UNet's weights (a collective under ZeRO-3); the main process
    copies them into a fresh pipeline, outside DeepSpeed, renders the validation prompts with the trainer's
    settings and compares with the PNGs the trainer wrote for the final step.
    """
    import numpy as np
    from PIL import Image

    unet = trainer.accelerator.unwrap_model(trainer.model)
    gathered = contextlib.nullcontext()
    if trainer.is_deepspeed_enabled:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(unet.parameters()), modifier_rank=None)
    with gathered:
        state = (
            {k: v.detach().clone() for k, v in unet.state_dict().items()}
            if trainer.accelerator.is_main_process
            else None
        )
    if not trainer.accelerator.is_main_process:
        return None
    from diffusers import DiffusionPipeline

    with zero3_init_disabled():
        fresh = DiffusionPipeline.from_pretrained(cli.model_path) if cli.model_path else None
    if fresh is None:
        fresh = BUILDERS[cli.model]()
    if trainer.peft_config is not None:
        fresh.unet.add_adapter(trainer.peft_config)
    fresh.unet.load_state_dict(state, strict=True)
    fresh.set_progress_bar_config(disable=True)
    args = trainer.args
    expected = fresh(
        list(args.validation_prompts), num_images_per_prompt=args.num_validation_images,
        num_inference_steps=args.validation_num_inference_steps, guidance_scale=args.validation_guidance_scale,
        height=trainer.resolution, width=trainer.resolution, generator=torch.Generator().manual_seed(args.seed),
    ).images  # fmt: skip
    folder = run_dir / "validation" / f"step-{trainer.state.global_step:06d}"
    written = sorted(folder.glob("*.png"))
    assert len(written) == len(expected), (written, len(expected))
    return max(
        float(np.abs(np.asarray(Image.open(path), dtype=np.int16) - np.asarray(image, dtype=np.int16)).max())
        for path, image in zip(written, expected)
    )


def _trained_checksum(trainer) -> list[float]:
    """The sum of each trained tensor (gathered under ZeRO-3, a collective: every process must call this)."""
    unet = trainer.accelerator.unwrap_model(trainer.model)
    params = [p for p in unet.parameters() if p.requires_grad]
    gathered = contextlib.nullcontext()
    if trainer.is_deepspeed_enabled:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gathered:
        return [float(p.detach().double().sum()) for p in params]


class ChecksumAtStart(TrainerCallback):
    """The trained weights' checksum when training begins: after a resume, what the checkpoint loaded."""

    def __init__(self, trainer):
        self.trainer, self.checksum = trainer, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.checksum = _trained_checksum(self.trainer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", choices=("dpo", "tailorpo", "grpo", "nft"), required=True)
    parser.add_argument("--model", choices=tuple(BUILDERS), default="sd")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--per_device_train_batch_size", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--deepspeed", default=None, help="DeepSpeed JSON (ZeRO tests)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--save", action="store_true", help="save the model to output_dir/model at the end")
    parser.add_argument("--save_steps", type=int, default=None, help="write checkpoint-N every N steps")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint of output_dir/run")
    parser.add_argument("--cuda", action="store_true", help="GPUs with NCCL (default: CPU processes with gloo)")
    parser.add_argument("--model_path", default=None, help="load this saved pipeline folder instead of building one")
    parser.add_argument("--validation", action="store_true", help="render validation images every step")
    parser.add_argument("--reward", choices=tuple(REWARDS), default="brightness")
    parser.add_argument("--sgd", action="store_true", help="SGD, learning rate 1, no clipping: update = -gradient")
    parser.add_argument("--augment", action="store_true", help="DPO: 64x40 images, random crops and flips")
    cli = parser.parse_args()
    # On CPU, a bare PartialState() ignores ACCELERATE_USE_CPU: ask for gloo explicitly before the trainer.
    state = PartialState() if cli.cuda else PartialState(cpu=True, backend="gloo")
    out = Path(cli.output_dir)
    if cli.model_path is not None:
        pipe = cli.model_path  # loaded by the trainer, after the DeepSpeed config exists (the ZeRO-3 case)
    else:
        pipe = BUILDERS[cli.model]()
    peft = None if cli.full else tiny_lora_config()
    common = dict(
        output_dir=str(out / "run"), per_device_train_batch_size=cli.per_device_train_batch_size,
        max_steps=cli.max_steps, num_train_epochs=1, learning_rate=1e-3, logging_steps=1, report_to=[],
        save_strategy="steps" if cli.save_steps else "no", save_steps=cli.save_steps or 500, seed=0,
        disable_tqdm=True, accelerator_config={"use_configured_state": True}, deepspeed=cli.deepspeed,
        bf16=cli.cuda, **(FLOW_ARGS if cli.model == "flux" else {}),
    )  # fmt: skip
    if cli.sgd:  # AdamW's first step and clipping hide the gradient's scale; SGD's update is proportional to it
        common.update(optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, learning_rate=1.0)
    if cli.validation:
        common.update(
            validation_prompts=list(VALIDATION_PROMPTS), validation_steps=1, validation_num_inference_steps=2
        )
    if cli.trainer == "dpo":
        data = wide_preference_pairs(cli.rows) if cli.augment else tiny_preference_dataset(cli.rows, seed=0)
        data = data.map(lambda row, i: {"prompt": f"p{i} {row['prompt']}"}, with_indices=True)
        augment = {"random_crop": True, "random_flip": True, "resolution": 32} if cli.augment else {}
        trainer = RecordingDPO(model=pipe, args=DiffusionDPOConfig(beta=500, **augment, **common), train_dataset=data,
                               peft_config=peft)  # fmt: skip
    elif cli.trainer == "grpo":
        from datasets import Dataset

        data = Dataset.from_dict({"prompt": [f"p{i} a red square" for i in range(cli.rows)]})
        trainer = RecordingGRPO(
            model=pipe, reward_funcs=REWARDS[cli.reward], train_dataset=data, peft_config=peft,
            args=DiffusionGRPOConfig(num_inference_steps=3, num_generations=2, beta=0.01, **common),
        )  # fmt: skip
    elif cli.trainer == "nft":
        from datasets import Dataset

        data = Dataset.from_dict({"prompt": [f"p{i} a red square" for i in range(cli.rows)]})
        trainer = RecordingNFT(
            model=pipe, reward_funcs=REWARDS[cli.reward], train_dataset=data, peft_config=peft,
            args=DiffusionNFTConfig(num_inference_steps=3, num_generations=2, scale_rewards="batch", **common),
        )  # fmt: skip
    else:
        from datasets import Dataset

        data = Dataset.from_dict({"prompt": [f"p{i} a red square" for i in range(cli.rows)]})
        trainer = RecordingTailorPO(
            model=pipe, reward_funcs=REWARDS[cli.reward], train_dataset=data, peft_config=peft,
            args=TailorPOConfig(num_inference_steps=3, num_selected_timesteps=2, **common),
        )  # fmt: skip
    if trainer.is_deepspeed_enabled:
        # DeepSpeed keeps tensors below stage3_param_persistence_threshold (default 1e5 elements) whole; every
        # tensor of the tiny UNet is smaller, so lower it to see ZeRO-3 really partition them.
        plugin = trainer.accelerator.state.deepspeed_plugin
        for config in (plugin.deepspeed_config, plugin.hf_ds_config.config):
            config.setdefault("zero_optimization", {})["stage3_param_persistence_threshold"] = 0
    # Before `train`, DeepSpeed has not wrapped (nor, under ZeRO-3, partitioned) the model yet: its weights are whole.
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    initial = [p.detach().double().clone() for p in trained] if cli.sgd else None
    initial_checksum = [float(p.detach().double().sum()) for p in trained]
    start = ChecksumAtStart(trainer)
    trainer.add_callback(start)
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
    unet = trainer.accelerator.unwrap_model(trainer.model)
    # Small tensors (LoRA factors) stay whole under ZeRO-3 (stage3_param_persistence_threshold); the UNet's large
    # frozen weights are the ones partitioned.
    partitioned = trainer.is_deepspeed_enabled and any(
        getattr(p, "ds_numel", 0) > 0 and p.numel() == 0 for p in unet.parameters()
    )
    checksum = _trained_checksum(trainer)
    if cli.sgd and initial is not None:  # the whole update of the trained weights, for exact comparisons
        params = [p for p in unet.parameters() if p.requires_grad]
        update = torch.cat([(p.detach().double() - i).flatten() for p, i in zip(params, initial)])
        recorded = {"update": update}
        if cli.trainer == "tailorpo":  # and what this process's own pairs give at the initial weights
            with torch.no_grad():
                for p, i in zip(params, initial):
                    p.copy_(i.to(p.dtype))
            grads, count = trainer.local_pair_gradient(params)
            recorded["gradient_sum"] = torch.cat([g.detach().double().flatten() for g in grads])
            recorded["pairs"] = count
        out.mkdir(parents=True, exist_ok=True)
        torch.save(recorded, out / f"update-rank-{state.process_index}.pt")
    frozen_whole = all(p.numel() > 0 for m in trainer._frozen_modules() for p in m.parameters())
    reload_difference = None
    if cli.save:
        trainer.save_model(str(out / "model"))
        reload_difference = _reload_difference(trainer, cli, out / "model")
    validation_difference = _validation_difference(trainer, cli, out / "run") if cli.validation else None
    record = {
        "rank": state.process_index,
        "num_processes": state.num_processes,
        "world_size_env": int(os.environ.get("WORLD_SIZE", "1")),
        "global_step": trainer.state.global_step,
        "seen_prompts": trainer.seen_prompts,
        "local_metrics": trainer.local_metrics,
        "pooled_values": trainer.pooled_values,
        "draws": trainer.draws,
        "augmentations": trainer.augmentations,
        "log_history": trainer.state.log_history,
        "checksum": checksum,
        "initial_checksum": initial_checksum,
        "start_checksum": start.checksum,
        "partitioned": partitioned,
        "final_loss": next((e["loss"] for e in reversed(trainer.state.log_history) if "loss" in e), None),
        "is_deepspeed": bool(trainer.is_deepspeed_enabled),
        "frozen_modules_whole": frozen_whole,
        "reload_difference": reload_difference,
        "validation_difference": validation_difference,
    }
    out.mkdir(parents=True, exist_ok=True)
    record["steps_logged"] = [e["step"] for e in trainer.state.log_history if "loss" in e]
    (out / f"rank-{state.process_index}{'-resumed' if cli.resume else ''}.json").write_text(json.dumps(record))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
