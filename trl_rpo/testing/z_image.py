"""A tiny, seeded Z-Image pipeline (`ZImagePipeline`) built offline from configs."""

from __future__ import annotations

from ._common import _TEXT_HIDDEN, _quiet, _seed
from .flow import _flow_vae
from .qwen import _tiny_qwen_tokenizer

# Qwen3's chat template, reduced to what `ZImagePipeline` uses: user turns and the generation prompt. (The pipeline
# passes `enable_thinking=True`, for which Qwen3's template adds nothing.)
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_z_image_pipeline(seed: int = 0):
    """A seeded tiny `ZImagePipeline` (Z-Image / Z-Image-Turbo layout: a Qwen3 text encoder, a single-stream DiT).

    The real classes, built in memory: a `Qwen2Tokenizer` (byte-level BPE with Qwen's chat special tokens and a
    chat template), a two-layer `Qwen3Model` text encoder (the pipeline reads its second-to-last hidden states), the
    tiny flow VAE (4 latent channels, `shift_factor` set), a `ZImageTransformer2DModel` (two main and one refiner
    layer per stream, 2x2 patches, width 32) and `FlowMatchEulerDiscreteScheduler(shift=3.0)` as Z-Image-Turbo's.
    About 150k parameters; it saves and loads with `save_pretrained` / `from_pretrained`. Use 32 px images (multiples
    of 16) and `max_sequence_length=32`; `guidance_scale=0` is Turbo's CFG-free sampling.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _tiny_qwen_tokenizer("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")
    tokenizer.chat_template = _CHAT_TEMPLATE
    _seed(seed)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=_TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        )
    ).eval()  # fmt: skip
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=_TEXT_HIDDEN, axes_dims=[4, 6, 6], axes_lens=[256, 64, 64],
    )  # fmt: skip
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(4),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    return _quiet(pipe)
