"""Memory estimates for diffusion preference training: weights, gradients, optimizer states and activations.

Counts come from the real model configs (models are instantiated on the meta device: no weights, no download;
the configs and the guide's rows are in :mod:`trl_rpo.memory_guide`),
activations from a forward pass on meta tensors that records what autograd would keep for backward (attention as
the fused kernels keep it; with gradient checkpointing, plus the largest block recomputed in backward). Used by
`benchmarks/memory_guide.py` and `docs/memory.md`; checked against measured values on the tiny models in
`tests/test_memory.py`, and (where a GPU is present) the modelled totals against measured CUDA peaks
(:func:`modelled_and_measured_peak`).

Bytes per parameter follow the usual mixed-precision accounting (ZeRO paper, Rajbhandari et al. 2020):

* frozen weights in the compute dtype (2 bytes in bf16); trained weights kept in float32 (4 bytes);
* gradients of trained weights: 4 bytes (float32; DeepSpeed keeps them in the compute dtype, 2 bytes);
* AdamW: two float32 moments (8 bytes), 8-bit AdamW 2 bytes;
* ZeRO-2 divides gradients and optimizer states by the number of GPUs, ZeRO-3 also the trained weights;
  CPU offload moves the optimizer states (and with ZeRO-3 the weights: with LoRA the frozen base weights too, as
  parameters of the engine's module) out of GPU memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ActivationProfile",
    "MemoryEstimate",
    "TrainingSetup",
    "activation_profile",
    "count_parameters",
    "cuda_peak_bytes",
    "estimate_training_memory",
    "lora_parameter_count",
    "modelled_and_measured_peak",
    "on_meta",
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


def on_meta(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """The module `factory()` builds, parameters and buffers on the meta device (no memory, no weights).

    Tied weights (a T5 encoder's `shared` and `embed_tokens`) are tied again: building on the meta device leaves
    them as two parameters, which would count the embedding twice.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        module = factory()
    for part in module.modules():
        if callable(getattr(part, "tie_weights", None)):
            part.tie_weights()
    return module


def count_parameters(factory: Callable[[], torch.nn.Module]) -> int:
    """Parameters of the module `factory()` builds, built on the meta device (no memory, no weights)."""
    return sum(p.numel() for p in on_meta(factory).parameters())


class _FusedAttention(torch.autograd.Function):
    """`scaled_dot_product_attention` as the fused kernels keep it for backward: query, key, value, the output and
    one float32 log-sum-exp per query row (and the mask, if any): no `L x L` attention matrix. Meta tensors only."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask):
        out = query.new_empty(*query.shape[:-1], value.shape[-1])
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse, *([attn_mask] if attn_mask is not None else []))
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - the counting never runs backward
        raise RuntimeError("meta-device attention is for counting saved tensors only")


class _FusedAttentionOnMeta(torch.overrides.TorchFunctionMode):
    """Runs `F.scaled_dot_product_attention` on meta tensors as :class:`_FusedAttention`.

    On the meta device PyTorch picks SDPA's math decomposition, which saves the softmax probabilities (`B x heads x
    L x L`, several GiB per block at 4096 image tokens); FlashAttention and memory-efficient attention on CUDA, and
    the flash kernel on CPU, save only `q, k, v`, the output and a log-sum-exp. Real tensors are left alone.
    """

    _names = ("query", "key", "value", "attn_mask")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            bound = dict(zip(self._names, args), **{k: v for k, v in kwargs.items() if k in self._names})
            if bound["query"].device.type == "meta":
                return _FusedAttention.apply(bound["query"], bound["key"], bound["value"], bound.get("attn_mask"))
        return func(*args, **kwargs)


class _SavedTensorCounter:
    """Counts the bytes autograd saves for backward inside a `with` block (see :func:`saved_activation_bytes`)."""

    def __init__(self, dtype_bytes: int | None = None):
        self.dtype_bytes = dtype_bytes
        self.total = 0
        self._seen: set[int] = set()
        self._saved: list[torch.Tensor] = []  # keeps every base alive, so ids and pointers are not reused
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._attention = _FusedAttentionOnMeta()

    def _pack(self, tensor: torch.Tensor):
        if isinstance(tensor, torch.nn.Parameter) or tensor.requires_grad and tensor.is_leaf:
            return tensor
        # Views share memory with their base: count each base (real tensors: each storage) once.
        base = tensor._base if tensor._base is not None else tensor
        if base.device.type == "meta":
            key, elements = id(base), base.numel()
        else:
            storage = base.untyped_storage()
            key, elements = storage.data_ptr(), storage.nbytes() // base.element_size()
        if key not in self._seen:
            self._seen.add(key)
            self._saved.append(base)
            self.total += elements * (self.dtype_bytes or base.element_size())
        return tensor

    def __enter__(self):
        self._hooks.__enter__()
        self._attention.__enter__()
        return self

    def __exit__(self, *exc):
        self._attention.__exit__(*exc)
        self._hooks.__exit__(*exc)
        self._saved.clear()


def saved_activation_bytes(run: Callable[[], Any], dtype_bytes: int | None = None) -> int:
    """Bytes of the tensors autograd saves for backward while `run()` executes (the activation memory).

    Works on real and on meta tensors. Tensors saved twice (the same storage) count once; parameters saved by a
    layer (a weight used in backward) are not activations and are skipped. `dtype_bytes` counts every tensor at
    that element size (e.g. 2 to estimate bf16 from a float32 or meta run). On meta tensors, attention
    (`F.scaled_dot_product_attention`) counts what the fused kernels save (:class:`_FusedAttentionOnMeta`), as a
    real forward on CUDA or CPU does, not the `L x L` matrix of its math decomposition.
    """
    with _SavedTensorCounter(dtype_bytes) as counter:
        run()
    return counter.total


@dataclass(frozen=True)
class ActivationProfile:
    """Activation bytes of one forward, with and without gradient checkpointing (:func:`activation_profile`).

    Attributes:
        full: saved for backward without checkpointing.
        checkpointed: saved with gradient checkpointing (mostly the inputs of the checkpointed blocks).
        largest_block: the largest checkpointed block's own activations: backward recomputes the blocks one at a
            time, so this much comes on top of `checkpointed` at the peak.
    """

    full: int
    checkpointed: int
    largest_block: int

    @property
    def checkpointed_peak(self) -> int:
        return self.checkpointed + self.largest_block


def activation_profile(model: torch.nn.Module, run: Callable[[], Any], dtype_bytes: int | None = None):
    """:class:`ActivationProfile` of `run()` (a forward of the diffusers `model`), on real or meta tensors.

    Runs it twice: with the model's gradient checkpointing on, recording which blocks it checkpoints, then
    without, attributing what each of those blocks saves to it. Leaves checkpointing off.
    """
    import torch.utils.checkpoint

    blocks: dict[int, torch.nn.Module] = {}

    def recording_checkpoint(block, *args):
        blocks[id(block)] = block
        return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

    model.enable_gradient_checkpointing(gradient_checkpointing_func=recording_checkpoint)
    try:
        checkpointed = saved_activation_bytes(run, dtype_bytes)
    finally:
        model.disable_gradient_checkpointing()
    counter, starts, sizes = _SavedTensorCounter(dtype_bytes), {}, [0]
    handles = []
    for block in blocks.values():
        handles.append(block.register_forward_pre_hook(lambda m, a: starts.__setitem__(id(m), counter.total)))
        handles.append(block.register_forward_hook(lambda m, a, o: sizes.append(counter.total - starts[id(m)])))
    try:
        with counter:
            run()
    finally:
        for handle in handles:
            handle.remove()
    return ActivationProfile(full=counter.total, checkpointed=checkpointed, largest_block=max(sizes))


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
        if setup.lora:  # the base weights are parameters of the engine's module too: offloaded with it
            frozen_bytes = 0.0
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
