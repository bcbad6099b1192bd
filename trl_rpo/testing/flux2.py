"""A tiny, seeded FLUX.2 [klein] pipeline (`Flux2KleinPipeline`) built offline from configs."""

from __future__ import annotations

import torch

from ._common import _quiet, _seed
from .qwen import _tiny_qwen_tokenizer
from .z_image import _CHAT_TEMPLATE

_KLEIN_TEXT_HIDDEN = 16
_KLEIN_TEXT_LAYERS = 27  # the pipeline stacks hidden states 9, 18 and 27 (`text_encoder_out_layers`)


def tiny_flux2_klein_pipeline(seed: int = 0, is_distilled: bool = False):
    """A seeded tiny `Flux2KleinPipeline` (FLUX.2 [klein] layout: a Qwen3 text encoder, the FLUX.2 VAE and DiT).

    The real classes, built in memory: a `Qwen2Tokenizer` with a chat template, a `Qwen3ForCausalLM` with the 27
    layers whose hidden states 9, 18 and 27 the pipeline stacks (width 16: prompt features of width 48), an
    `AutoencoderKLFlux2` (factor 8, 4 latent channels; its batch-norm statistics, which normalise the 2x2-patchified
    latents, set to seeded non-trivial values), a `Flux2Transformer2DModel` with one double- and one single-stream
    block and no guidance embedding, and the flow scheduler with dynamic shifting (the pipeline computes its `mu`
    empirically from token count and step count). `is_distilled=True` is the step-distilled [klein] (no CFG). About
    350k parameters; it saves and loads with `save_pretrained` / `from_pretrained`. Use 32 px images (multiples of
    16) and `max_sequence_length=32`.
    """
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = _tiny_qwen_tokenizer("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")
    tokenizer.chat_template = _CHAT_TEMPLATE
    _seed(seed)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=_KLEIN_TEXT_HIDDEN, intermediate_size=24,
            num_hidden_layers=_KLEIN_TEXT_LAYERS, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
            max_position_embeddings=128, pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            tie_word_embeddings=True,
        )
    ).eval()  # fmt: skip
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=32, use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
    )  # fmt: skip
    with torch.no_grad():
        vae.bn.running_mean.uniform_(-0.5, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * _KLEIN_TEXT_HIDDEN, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
    pipe = Flux2KleinPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
        is_distilled=is_distilled,
    )  # fmt: skip
    return _quiet(pipe)
