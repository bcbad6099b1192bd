"""Tiny, seeded flow-matching pipelines (SD3 / SD3.5 and FLUX.1 layouts) built offline from configs."""

from __future__ import annotations

from ._common import _TEXT_HIDDEN, _quiet, _seed, _text_config, tiny_clip_tokenizer

# --- Tiny flow-matching pipelines (SD3 / SD3.5 and FLUX.1 layouts) -------------------------------------------

_T5_MAX_LENGTH = 32


def tiny_t5_tokenizer(model_max_length: int = _T5_MAX_LENGTH):
    """A character-level T5-style tokenizer (`PreTrainedTokenizerFast`) built in memory, no files.

    A `tokenizers` word-level model over printable ASCII characters (each character is a token) plus `<pad>`,
    `</s>` and `<unk>`, with T5's conventions: pad id 0, eos appended to every sequence.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for code in range(32, 127):
        vocab[chr(code)] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def _t5_encoder(hidden: int = _TEXT_HIDDEN):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tiny_t5_tokenizer()),
        d_model=hidden,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,  # T5's default 0.1 would make a pipeline built in memory (train mode) non-deterministic
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config).eval()


def _flow_vae(latent_channels: int = 4):
    """The tiny VAE with `shift_factor` set: SD3 / FLUX pipelines compute `latents / scaling + shift`."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        shift_factor=0.0609,
        scaling_factor=1.5035,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _sd3_components(seed: int, sample_size: int = 16) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    _seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=_TEXT_HIDDEN,
        caption_projection_dim=32,
        pooled_projection_dim=2 * _TEXT_HIDDEN,
        out_channels=4,
    )
    return {
        "transformer": transformer,
        "vae": _flow_vae(4),
        "text_encoder": CLIPTextModelWithProjection(_text_config()),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config()),
        "text_encoder_3": _t5_encoder(),
        "tokenizer": tiny_clip_tokenizer(),
        "tokenizer_2": tiny_clip_tokenizer(),
        "tokenizer_3": tiny_t5_tokenizer(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


def _flux_components(seed: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel

    _seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN,
        pooled_projection_dim=_TEXT_HIDDEN,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=64,
        base_shift=0.5,
        max_image_seq_len=256,
        max_shift=1.15,
        use_dynamic_shifting=True,
        shift=3.0,
    )
    return {
        "transformer": transformer,
        "vae": _flow_vae(4),
        "text_encoder": CLIPTextModel(_text_config()),
        "text_encoder_2": _t5_encoder(),
        "tokenizer": tiny_clip_tokenizer(),
        "tokenizer_2": tiny_t5_tokenizer(),
        "scheduler": scheduler,
    }


def tiny_sd3_pipeline(seed: int = 0, sample_size: int = 16):
    """A seeded tiny `StableDiffusion3Pipeline` (SD3 / SD3.5 layout, about 80k transformer parameters).

    Two CLIP encoders with projection (their pooled outputs concatenate to the transformer's
    `pooled_projection_dim`), a T5 encoder (character-level tokenizer, `max_sequence_length` <= 32), an
    `SD3Transformer2DModel` with patch size 2, a VAE with `shift_factor`, and `FlowMatchEulerDiscreteScheduler`
    (shift 3, as SD3). Images are `2 * sample_size` pixels; call it with `max_sequence_length=32`.
    """
    from diffusers import StableDiffusion3Pipeline

    return _quiet(StableDiffusion3Pipeline(**_sd3_components(seed, sample_size)))


def tiny_flux_pipeline(seed: int = 0):
    """A seeded tiny `FluxPipeline` (FLUX.1-dev layout: guidance embedding, packed 2x2 latents, RoPE ids).

    A `CLIPTextModel` (pooled output = `pooled_projection_dim`), a T5 encoder, a one-double / one-single-block
    `FluxTransformer2DModel` and the dynamic-shift flow scheduler. Use 32 px images and `max_sequence_length=32`.
    """
    from diffusers import FluxPipeline

    return _quiet(FluxPipeline(**_flux_components(seed)))


def tiny_sd3_img2img_pipeline(seed: int = 0):
    """A seeded tiny `StableDiffusion3Img2ImgPipeline` (the components of `tiny_sd3_pipeline`)."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    return _quiet(StableDiffusion3Img2ImgPipeline(**_sd3_components(seed)))


def tiny_flux_img2img_pipeline(seed: int = 0):
    """A seeded tiny `FluxImg2ImgPipeline` (the components of `tiny_flux_pipeline`)."""
    from diffusers import FluxImg2ImgPipeline

    return _quiet(FluxImg2ImgPipeline(**_flux_components(seed)))


def tiny_flux_kontext_pipeline(seed: int = 0):
    """A seeded tiny `FluxKontextPipeline` (FLUX.1 Kontext layout: the input image's tokens join the sequence)."""
    from diffusers import FluxKontextPipeline

    return _quiet(FluxKontextPipeline(**_flux_components(seed), image_encoder=None, feature_extractor=None))
