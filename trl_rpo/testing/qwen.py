"""Tiny, seeded Qwen-Image pipelines (`QwenImagePipeline`, its img2img sibling, `QwenImageEditPipeline`) built
offline from configs."""

from __future__ import annotations

import re

from ._common import _TEXT_HIDDEN, _byte_level_alphabet, _quiet, _seed

# The system part of `QwenImageEditPipeline.prompt_template_encode`: everything before the image. The pipeline drops
# the encoder states of its first `prompt_template_encode_start_idx` (64) tokens, which is exactly this prefix with
# Qwen's real tokenizer; the tiny tokenizer has one token per pre-token of it so that the same 64 are dropped.
_EDIT_SYSTEM_PROMPT = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n"
)
# The same for `QwenImagePipeline.prompt_template_encode`: its first 34 tokens (`prompt_template_encode_start_idx`).
_T2I_SYSTEM_PROMPT = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
)
_QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE of one pre-token: merge the best-ranked adjacent pair until none is in `ranks`."""
    parts = list(word)
    while len(parts) > 1:
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts, parts[1:])))
        if rank == len(ranks):
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _tiny_qwen_tokenizer(text: str = _EDIT_SYSTEM_PROMPT):
    """A real `Qwen2Tokenizer` (byte-level BPE, Qwen's pre-tokenizer regex, chat special tokens) built in memory.

    Its vocabulary is the 256 byte symbols (every string tokenizes) plus the pre-tokens of `text`, each made one
    token by merges appended until it is (a merge added last has the lowest rank, so it never changes how an earlier
    word tokenizes). With the edit template's system prompt the prefix is 64 tokens, as with Qwen's tokenizer.
    """
    from transformers import Qwen2Tokenizer

    pre_tokenizer = Qwen2Tokenizer()._tokenizer.pre_tokenizer  # Qwen's regex split + byte-level mapping
    specials = "(" + "|".join(re.escape(token) for token in _QWEN_SPECIAL_TOKENS) + ")"
    words = [
        word
        for piece in re.split(specials, text)
        if piece and piece not in _QWEN_SPECIAL_TOKENS
        for word, _ in pre_tokenizer.pre_tokenize_str(piece)
    ]
    vocab = {symbol: i for i, symbol in enumerate(_byte_level_alphabet())}
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        while len(parts := _bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
    for token in _QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=_QWEN_SPECIAL_TOKENS[1:])


def _qwen2vl_processor_without_video(image_processor, tokenizer):
    """A `Qwen2VLProcessor` whose video slot is empty, assembled without its constructor.

    Only because of torchvision: transformers 5 makes `Qwen2VLProcessor.__init__` require a video processor, and the
    only one it accepts (`Qwen2VLVideoProcessor`) needs torchvision, which the test machines cannot install. Qwen-Image
    -Edit never passes videos, so the processor is the real class with what its `__init__` would set, except the video
    processor:

    - `image_processor` (`Qwen2VLImageProcessorPil`, no torchvision) and `tokenizer`: the sub-processors `__call__`
      runs; `chat_template` None (the pipeline formats its own template).
    - `image_token` / `image_token_id` (`<|image_pad|>`): `__call__` expands each into the image's patch tokens and
      checks the count; `video_token` / `video_token_id` (`<|video_pad|>`): read by the same checks.
    - `video_processor = None`: the empty slot (a `None` that `__call__` never reaches without videos, and that lets
      `repr` work). `save_pretrained` fails on it, so the processor (and the pipeline) does not round-trip.
    """
    from transformers import Qwen2VLProcessor

    processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    processor.image_processor = image_processor
    processor.tokenizer = tokenizer
    processor.video_processor = None
    processor.chat_template = None
    processor.image_token = "<|image_pad|>"
    processor.video_token = "<|video_pad|>"
    processor.image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    processor.video_token_id = tokenizer.convert_tokens_to_ids(processor.video_token)
    return processor


def tiny_qwen_image_edit_pipeline(seed: int = 0):
    """A seeded tiny `QwenImageEditPipeline` (Qwen-Image-Edit layout: a Qwen2.5-VL encoder reads image and prompt).

    The real classes, built in memory: a `Qwen2Tokenizer` (byte-level BPE with Qwen's special tokens; the edit
    template's system prefix is 64 tokens, the pipeline's drop index), a `Qwen2_5_VLForConditionalGeneration` text
    encoder (two text layers with multimodal RoPE, a two-block vision tower), a `Qwen2VLProcessor` with the PIL
    `Qwen2VLImageProcessorPil` (images become at most 4x4 patches of 14 px), an `AutoencoderKLQwenImage`, a two-layer
    `QwenImageTransformer2DModel` (2x2 patches, no guidance embedding: real CFG through `true_cfg_scale` and a
    negative prompt) and `FlowMatchEulerDiscreteScheduler` with Qwen-Image's dynamic exponential shift. About 200k
    parameters; the same seed gives identical weights.

    Sizes: the pipeline always VAE-encodes the input image at about 1024x1024 pixels (its `calculate_dimensions`),
    so the tiny VAE downsamples by 16 (Qwen-Image's by 8) and has no residual blocks in its encoder, which keeps an
    edit to about a second per image on one CPU thread. Edited images are multiples of 32 px (VAE factor x 2x2
    patch); use 32 px and at least 2 steps (with one, the `shift_terminal` stretch of Qwen-Image's scheduler settings
    divides zero by zero: NaN images).

    Limitations: the processor is assembled without its video processor (see `_qwen2vl_processor_without_video`),
    only because transformers requires torchvision for that slot. Editing works; `save_pretrained` raises (the empty
    video slot cannot be saved) and `from_pretrained` of a Qwen-Image-Edit folder needs torchvision, so this pipeline
    does not round-trip through a folder: build it in memory wherever it is needed.
    """
    from diffusers import QwenImageEditPipeline

    try:  # transformers >= 5 names the PIL backend explicitly
        from transformers import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import Qwen2VLImageProcessor as ImageProcessor

    tokenizer = _tiny_qwen_tokenizer()
    processor = _qwen2vl_processor_without_video(ImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56), tokenizer)
    text_encoder, vae, transformer, scheduler = _qwen_image_components(seed, tokenizer, vae_downsamplings=4)
    pipe = QwenImageEditPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )
    return _quiet(pipe)


def _qwen_image_t2i_components(seed: int) -> dict:
    tokenizer = _tiny_qwen_tokenizer(_T2I_SYSTEM_PROMPT)
    text_encoder, vae, transformer, scheduler = _qwen_image_components(seed, tokenizer, vae_downsamplings=3)
    return {"scheduler": scheduler, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "transformer": transformer}  # fmt: skip


def tiny_qwen_image_pipeline(seed: int = 0):
    """A seeded tiny `QwenImagePipeline` (Qwen-Image layout: a Qwen2.5-VL text encoder, true CFG, 2x2 patches).

    The real classes, built in memory: a `Qwen2Tokenizer` (byte-level BPE with Qwen's special tokens; the system
    prefix of the pipeline's prompt template is 34 tokens, its drop index), a `Qwen2_5_VLForConditionalGeneration`
    text encoder, an `AutoencoderKLQwenImage` with Qwen-Image's factor 8 (latent mean 0 and std 1 per channel), a
    two-layer `QwenImageTransformer2DModel` without guidance embedding (CFG is `true_cfg_scale` with a
    `negative_prompt`) and the dynamic exponential-shift scheduler. About 200k parameters; it saves and loads
    with `save_pretrained` / `DiffusionPipeline.from_pretrained`. Use 32 px images (multiples of 16), at least 2
    steps (one step divides zero by zero in the `shift_terminal` stretch) and `max_sequence_length=32`.
    """
    from diffusers import QwenImagePipeline

    return _quiet(QwenImagePipeline(**_qwen_image_t2i_components(seed)))


def tiny_qwen_image_img2img_pipeline(seed: int = 0):
    """A seeded tiny `QwenImageImg2ImgPipeline` (the components of `tiny_qwen_image_pipeline`)."""
    from diffusers import QwenImageImg2ImgPipeline

    return _quiet(QwenImageImg2ImgPipeline(**_qwen_image_t2i_components(seed)))


def _qwen_image_components(seed: int, tokenizer, vae_downsamplings: int) -> tuple:
    """The seeded text encoder, VAE, transformer and scheduler of the tiny Qwen-Image pipelines.

    A `Qwen2_5_VLForConditionalGeneration` (two text layers with multimodal RoPE, a two-block vision tower), an
    `AutoencoderKLQwenImage` downsampling `2 ** vae_downsamplings` times (no residual blocks), a two-layer
    `QwenImageTransformer2DModel` (2x2 patches, no guidance embedding) and `FlowMatchEulerDiscreteScheduler` with
    Qwen-Image's dynamic exponential shift.
    """
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    token_id = tokenizer.convert_tokens_to_ids
    _seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": _TEXT_HIDDEN,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            # multimodal RoPE: temporal / height / width sections of the 16-dim heads' 8 frequencies
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
            "bos_token_id": None,
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 37,
            "num_heads": 2,
            "out_hidden_size": _TEXT_HIDDEN,
            "fullatt_block_indexes": [1],  # windowed attention, then full, as Qwen2.5-VL alternates
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    z_dim = 4
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1] * (vae_downsamplings + 1),
        num_res_blocks=0,
        temperal_downsample=[False] + [True] * (vae_downsamplings - 1),  # 2 ** len(...) is the VAE factor
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * z_dim,  # 2x2-packed latents
        out_channels=z_dim,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        time_shift_type="exponential",
        use_dynamic_shifting=True,
    )
    return text_encoder, vae, transformer, scheduler
