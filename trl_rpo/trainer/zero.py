"""DeepSpeed ZeRO helpers for diffusers denoisers: `"auto"` bucket sizes, and gathering partitioned weights.

transformers sizes ZeRO buckets from `model.config.hidden_size`, which diffusers models do not have; and under
ZeRO-3 a partitioned denoiser cannot render validation images, so it is gathered into a plain copy first.
"""

from __future__ import annotations

import torch

__all__ = ["fill_deepspeed_auto_sizes", "gathered_state_dict", "is_zero3", "unpartitioned_copy"]


def fill_deepspeed_auto_sizes(hf_ds_config, unet) -> None:
    """Fill DeepSpeed's `"auto"` bucket sizes from the denoiser's width.

    transformers derives them from `model.config.hidden_size`, which a diffusers UNet or transformer does not
    have, and then refuses the config; these are its formulas with the UNet's largest `block_out_channels` (a
    transformer's `num_attention_heads * attention_head_dim`) as the hidden size. `unet` may also be that int.
    """
    if isinstance(unet, int):
        hidden = unet
    elif hasattr(unet.config, "block_out_channels"):
        hidden = max(unet.config.block_out_channels)
    else:
        hidden = int(unet.config.num_attention_heads * unet.config.attention_head_dim)
    hf_ds_config.fill_only("zero_optimization.reduce_bucket_size", hidden * hidden)
    if hf_ds_config.is_zero3():
        hf_ds_config.fill_only("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
        hf_ds_config.fill_only("zero_optimization.stage3_param_persistence_threshold", 10 * hidden)


def is_zero3(accelerator) -> bool:
    """True when `accelerator` runs DeepSpeed ZeRO stage 3 (weights partitioned across processes)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def gathered_state_dict(module: torch.nn.Module, is_main_process: bool) -> dict[str, torch.Tensor] | None:
    """The whole state dict of a ZeRO-3-partitioned module on the main process (None on the others).

    Every process must call it: the weights are gathered (`deepspeed.zero.GatheredParameters`, a collective)
    one child module at a time, as DeepSpeed's own 16-bit consolidation does, so at most one child is whole at
    once besides the main process's copy.
    """
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    groups = [(f"{name}.", child, True) for name, child in module.named_children()] + [("", module, False)]
    for prefix, part, recurse in groups:
        with deepspeed.zero.GatheredParameters(list(part.parameters(recurse=recurse)), modifier_rank=None):
            if is_main_process:
                items = part.state_dict().items() if recurse else _own_state(part)
                state.update({prefix + k: v.detach().clone() for k, v in items})
    return state if is_main_process else None


def _own_state(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The parameters and persistent buffers held by `module` itself, not by its children."""
    own = [(k, v) for k, v in module._parameters.items() if v is not None]
    return own + [
        (k, v) for k, v in module._buffers.items() if v is not None and k not in module._non_persistent_buffers_set
    ]


def unpartitioned_copy(unet: torch.nn.Module, state: dict[str, torch.Tensor], peft_config=None) -> torch.nn.Module:
    """A plain module with `unet`'s architecture (and LoRA adapters) holding `state`: no DeepSpeed hooks."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        copy_ = type(unet).from_config(unet.config)
        if peft_config is not None:
            copy_.add_adapter(peft_config)
    copy_.load_state_dict(state, strict=True, assign=True)
    return copy_.requires_grad_(False).eval()
