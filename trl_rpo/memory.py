"""Memory estimates for diffusion preference training: weights, gradients, optimizer states and activations.

Counts come from the real model configs (models are instantiated on the meta device: no weights, no download),
activations from a forward pass on meta tensors that records what autograd would keep for backward. Used by
`benchmarks/memory_guide.py` and `docs/memory.md`; checked against measured values on the tiny models in
`tests/test_memory.py`, and (where a GPU is present) the modelled totals against measured CUDA peaks
(:func:`modelled_and_measured_peak`).

Bytes per parameter follow the usual mixed-precision accounting (ZeRO paper, Rajbhandari et al. 2020):

* frozen weights in the compute dtype (2 bytes in bf16); trained weights kept in float32 (4 bytes);
* gradients of trained weights: 4 bytes (float32; DeepSpeed keeps them in the compute dtype, 2 bytes);
* AdamW: two float32 moments (8 bytes), 8-bit AdamW 2 bytes;
* ZeRO-2 divides gradients and optimizer states by the number of GPUs, ZeRO-3 also the trained weights;
  CPU offload moves the optimizer states (and with ZeRO-3 the weights) out of GPU memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "MemoryEstimate",
    "TrainingSetup",
    "count_parameters",
    "cuda_peak_bytes",
    "estimate_training_memory",
    "lora_parameter_count",
    "modelled_and_measured_peak",
    "saved_activation_bytes",
    "sdxl_unet_config",
    "small_unet_config",
]

GiB = 2**30


def sdxl_unet_config() -> dict[str, Any]:
    """`unet/config.json` of stabilityai/stable-diffusion-xl-base-1.0 (the fields that set its size)."""
    return {
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_num_groups": 32,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }


def small_unet_config() -> dict[str, Any]:
    """A UNet of ~25 M parameters for measuring against the model on a GPU in seconds (attention at 1/2 and 1/4)."""
    return {
        "block_out_channels": [128, 256, 256],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 256,
        "attention_head_dim": 32,
        "layers_per_block": 2,
        "sample_size": 32,
    }


def count_parameters(factory: Callable[[], torch.nn.Module]) -> int:
    """Parameters of the module `factory()` builds, built on the meta device (no memory, no weights)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = factory()
    return sum(p.numel() for p in module.parameters())


def saved_activation_bytes(run: Callable[[], Any], dtype_bytes: int | None = None) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` executes (the activation memory).

    Works on real and on meta tensors. Tensors saved twice (the same storage) count once; parameters saved by a
    layer (a weight used in backward) are not activations and are skipped. `dtype_bytes` counts every tensor at
    that element size (e.g. 2 to estimate bf16 from a float32 or meta run).
    """
    seen: set[int] = set()
    saved: list[torch.Tensor] = []  # keeps every base alive, so ids and pointers are not reused during `run`
    total = 0

    def pack(tensor: torch.Tensor):
        nonlocal total
        if isinstance(tensor, torch.nn.Parameter) or tensor.requires_grad and tensor.is_leaf:
            return tensor
        # Views share memory with their base: count each base (real tensors: each storage) once.
        base = tensor._base if tensor._base is not None else tensor
        if base.device.type == "meta":
            key, elements = id(base), base.numel()
        else:
            storage = base.untyped_storage()
            key, elements = storage.data_ptr(), storage.nbytes() // base.element_size()
        if key not in seen:
            seen.add(key)
            saved.append(base)
            total += elements * (dtype_bytes or base.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total


@dataclass(frozen=True)
class TrainingSetup:
    """One option of the memory table."""

    name: str
    lora: bool = True
    lora_fraction: float = 0.0  # trained parameters / UNet parameters for LoRA
    zero_stage: int = 0
    num_gpus: int = 1
    offload: bool = False
    optimizer_bytes: int = 8  # AdamW fp32 moments; 2 for 8-bit AdamW
    gradient_checkpointing: bool = False
    precompute_latents: bool = False


@dataclass
class MemoryEstimate:
    """GPU bytes per rank by category."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    encoders: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.encoders

    def row(self) -> dict[str, float]:
        return {k: round(v / GiB, 2) for k, v in {**self.__dict__, "total": self.total}.items()}


def estimate_training_memory(
    setup: TrainingSetup,
    unet_params: int,
    encoder_params: int,
    activation_bytes: float,
    checkpointed_activation_bytes: float,
    compute_bytes: int = 2,
) -> MemoryEstimate:
    """GPU memory of one rank for Diffusion-DPO under `setup` (formulas in the module docstring).

    Diffusion-DPO runs the policy on chosen and rejected latents (batch 2B) with activations kept, and the
    reference without gradients. Full fine-tuning keeps a frozen reference copy of the UNet; LoRA does not.
    `activation_bytes` is for the policy's batch; the encoders (text encoders and VAE, frozen, in the compute
    dtype) are absent with precomputed latents.
    """
    n = max(1, setup.num_gpus)
    trained = unet_params * setup.lora_fraction if setup.lora else unet_params
    frozen = unet_params  # LoRA: the frozen base weights; full fine-tuning: the frozen reference copy
    weights_trained = trained * 4
    if setup.zero_stage >= 3:
        weights_trained /= n
        frozen_bytes = frozen * compute_bytes / (n if setup.lora else 1)  # LoRA base is in the engine's module
    else:
        frozen_bytes = frozen * compute_bytes
    if setup.zero_stage >= 3 and setup.offload:
        weights_trained = 0.0
    gradient_bytes = 4 if setup.zero_stage == 0 else compute_bytes
    gradients = trained * gradient_bytes / (n if setup.zero_stage >= 2 else 1)
    optimizer = trained * setup.optimizer_bytes / (n if setup.zero_stage >= 1 else 1)
    if setup.offload:
        optimizer = 0.0
    activations = checkpointed_activation_bytes if setup.gradient_checkpointing else activation_bytes
    encoders = 0.0 if setup.precompute_latents else encoder_params * compute_bytes
    return MemoryEstimate(weights_trained + frozen_bytes, gradients, optimizer, activations, encoders)


def lora_parameter_count(unet: torch.nn.Module, rank: int, targets=("to_q", "to_k", "to_v", "to_out.0")) -> int:
    """Parameters LoRA of rank `rank` adds on the `targets` linear layers of a UNet: r x (in + out) each."""
    total = 0
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            total += rank * (module.in_features + module.out_features)
    return total


def cuda_peak_bytes(run: Callable[[], Any], device: torch.device | str | None = None) -> int:
    """Peak bytes the CUDA caching allocator had handed out while `run()` executed (`max_memory_allocated`).

    Counts everything allocated at that moment on `device`, including what existed before `run` (weights,
    optimizer states): the figure to compare with a modelled total.
    """
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def _dpo_unet_inputs(config: dict[str, Any], latent_side: int, device) -> dict[str, Any]:
    """One preference pair (2 latents) of UNet inputs for `config`, SD 1.5- or SDXL-style."""
    inputs: dict[str, Any] = {
        "sample": torch.randn(2, config.get("in_channels", 4), latent_side, latent_side, device=device),
        "timestep": torch.tensor([10, 10], device=device),
        "encoder_hidden_states": torch.randn(2, 77, config["cross_attention_dim"], device=device),
    }
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, device=device),
            "time_ids": torch.ones(2, 6, device=device),
        }
    return inputs


def modelled_and_measured_peak(
    unet_config: dict[str, Any], lora_rank: int | None, latent_side: int, device: torch.device | str = "cuda"
) -> tuple[MemoryEstimate, int]:
    """Modelled total and measured CUDA peak of a float32 Diffusion-DPO step with one pair, for one UNet config.

    Builds the UNet on `device` (LoRA of `lora_rank` on the attention projections with the adapter-off
    reference, or full fine-tuning with a frozen reference copy), runs one warm-up step (AdamW states exist
    from then on) and measures the second: policy forward + backward on the pair, reference forward without
    gradients, optimizer step. The model gets the real parameter counts and the activations autograd saved in
    the same forward (:func:`saved_activation_bytes`), so the comparison tests the accounting, not the inputs.
    """
    import copy

    from diffusers import UNet2DConditionModel

    torch.cuda.empty_cache()
    unet = UNet2DConditionModel(**unet_config).to(device).train()
    unet_params = sum(p.numel() for p in unet.parameters())
    reference = None
    if lora_rank:
        from peft import LoraConfig

        unet.requires_grad_(False)
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=targets))
    else:
        reference = copy.deepcopy(unet).requires_grad_(False).eval()
    trained = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-6)
    inputs = _dpo_unet_inputs(unet_config, latent_side, device)

    def step() -> None:
        loss = unet(**inputs).sample.float().pow(2).mean()
        with torch.no_grad():
            if reference is not None:
                reference(**inputs)
            else:
                unet.disable_adapters()
                unet(**inputs)
                unet.enable_adapters()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    measured = cuda_peak_bytes(step, device)
    activations = saved_activation_bytes(lambda: unet(**inputs).sample)
    setup = TrainingSetup(
        "measured", lora=bool(lora_rank), lora_fraction=sum(p.numel() for p in trained) / unet_params,
        precompute_latents=True,
    )  # fmt: skip
    modelled = estimate_training_memory(setup, unet_params, 0, activations, activations, compute_bytes=4)
    return modelled, measured
