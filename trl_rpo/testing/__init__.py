"""Tiny, seeded text-to-image pipelines and datasets built offline from configs.

Everything here is created in memory from configuration objects: no file is read and nothing is
downloaded, so tests (ours and yours) run on a laptop CPU without a model hub. The models have the
exact architecture of every family the trainers take (same classes, same conditioning): SD 1.5 and SDXL with
UNets of about a million parameters, SD3, FLUX.1 (`flow`), Qwen-Image (`qwen`), Z-Image (`z_image`) and
FLUX.2 [klein] (`flux2`) with transformers of a few hundred thousand::

    from trl_rpo.testing import tiny_sd_pipeline, tiny_preference_dataset

    pipe = tiny_sd_pipeline(seed=0)          # a real StableDiffusionPipeline, 32x32 images
    dataset = tiny_preference_dataset(8)     # prompt / chosen / rejected with PIL images
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature
from PIL import Image

from ._common import _TEXT_HIDDEN, _byte_level_alphabet, _quiet, _seed, _text_config, _vae, tiny_clip_tokenizer
from .flow import (
    tiny_flux_img2img_pipeline,
    tiny_flux_kontext_pipeline,
    tiny_flux_pipeline,
    tiny_sd3_img2img_pipeline,
    tiny_sd3_pipeline,
    tiny_t5_tokenizer,
)
from .flux2 import tiny_flux2_klein_pipeline
from .qwen import tiny_qwen_image_edit_pipeline, tiny_qwen_image_img2img_pipeline, tiny_qwen_image_pipeline
from .z_image import tiny_z_image_pipeline

__all__ = [
    "tiny_clip_tokenizer",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_preference_dataset",
    "tiny_lora_config",
    "tiny_clip_model",
    "tiny_clip_processor",
    "tiny_aesthetic_scorer",
    "tiny_clip_scorer",
    "tiny_pickscore_scorer",
    "tiny_instruct_pix2pix_pipeline",
    "tiny_sdxl_instruct_pix2pix_pipeline",
    "tiny_inpaint_pipeline",
    "tiny_sdxl_inpaint_pipeline",
    "tiny_controlnet_pipeline",
    "tiny_img2img_pipeline",
    "tiny_t5_tokenizer",
    "tiny_sd3_pipeline",
    "tiny_flux_pipeline",
    "tiny_sd3_img2img_pipeline",
    "tiny_flux_img2img_pipeline",
    "tiny_flux_kontext_pipeline",
    "tiny_qwen_image_edit_pipeline",
    "tiny_qwen_image_img2img_pipeline",
    "tiny_qwen_image_pipeline",
    "tiny_z_image_pipeline",
    "tiny_flux2_klein_pipeline",
    "tiny_chat_tokenizer",
    "tiny_vision_language_model",
]

def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 16):
    """A seeded tiny `StableDiffusionPipeline` (SD 1.5 layout: one CLIP text encoder, cross-attention UNet).

    Args:
        seed: seeds the random initialisation; the same seed gives identical weights.
        prediction_type: the scheduler's `prediction_type`, `"epsilon"` or `"v_prediction"`.
        sample_size: latent side; images are `2 * sample_size` pixels (the VAE downsamples by 2).
    """
    from diffusers import StableDiffusionPipeline

    components = _sd_components(seed, in_channels=4, sample_size=sample_size, prediction_type=prediction_type)
    return _quiet(StableDiffusionPipeline(**components))


def tiny_sdxl_pipeline(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 16):
    """A seeded tiny `StableDiffusionXLPipeline` (two text encoders, pooled embeddings, micro-conditioning).

    The UNet uses `addition_embed_type="text_time"` exactly as SDXL does, so the six time ids
    (original size, crop top-left, target size) and the pooled embedding of the second encoder are
    real inputs of the model.
    """
    from diffusers import StableDiffusionXLPipeline

    components = _sdxl_components(seed, in_channels=4, sample_size=sample_size, prediction_type=prediction_type)
    return _quiet(StableDiffusionXLPipeline(**components))


_COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 40),
}


def _square_image(color: tuple[int, int, int], size: int, rng: np.random.Generator, noise: float) -> Image.Image:
    """A colored square on a white background, with optional pixel noise."""
    arr = np.full((size, size, 3), 255, dtype=np.float32)
    lo, hi = size // 4, 3 * size // 4
    arr[lo:hi, lo:hi] = color
    if noise:
        arr += rng.normal(0.0, noise, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def tiny_preference_dataset(num_rows: int = 8, image_size: int = 32, seed: int = 0) -> Dataset:
    """A small TRL-format preference dataset (`prompt`, `chosen`, `rejected`) with real images.

    Each prompt names a color; *chosen* is a clean square of that color, *rejected* a noisy square
    of another color, so a model trained on it has something learnable to prefer.
    """
    rng = np.random.default_rng(seed)
    names = list(_COLORS)
    rows = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(num_rows):
        good = names[i % len(names)]
        bad = names[(i + 1 + int(rng.integers(len(names) - 1))) % len(names)]
        if bad == good:
            bad = names[(names.index(good) + 1) % len(names)]
        rows["prompt"].append(f"a {good} square on a white background")
        rows["chosen"].append(_square_image(_COLORS[good], image_size, rng, noise=0.0))
        rows["rejected"].append(_square_image(_COLORS[bad], image_size, rng, noise=40.0))
    features = Features({"prompt": Value("string"), "chosen": ImageFeature(), "rejected": ImageFeature()})
    return Dataset.from_dict(rows, features=features)


def tiny_lora_config(r: int = 4, lora_alpha: int | None = None):
    """The LoRA config used by the diffusers training scripts (attention projections, gaussian init)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha if lora_alpha is not None else r,
        init_lora_weights="gaussian",
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )


def _vision_config(image_size: int, patch_size: int, projection_dim: int = 512):
    """The tiny CLIP vision tower shared by the CLIP scorers and the tiny vision-language model."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )


def tiny_clip_model(seed: int = 0, image_size: int = 32, projection_dim: int = 32):
    """A seeded tiny `CLIPModel` (text and vision towers) whose text side reads `tiny_clip_tokenizer` ids."""
    from transformers import CLIPConfig, CLIPModel

    _seed(seed)
    vision = _vision_config(image_size, patch_size=8, projection_dim=projection_dim)
    config = CLIPConfig(
        text_config=_text_config(projection_dim).to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=projection_dim,
    )
    return CLIPModel(config).eval()


def tiny_clip_processor(image_size: int = 32):
    """A `CLIPProcessor` (OpenAI CLIP statistics) around `tiny_clip_tokenizer`, sized for `tiny_clip_model`."""
    from transformers import CLIPImageProcessor, CLIPProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tiny_clip_tokenizer())


def tiny_aesthetic_scorer(seed: int = 0):
    """`AestheticScorer` on a tiny random CLIP and a random LAION-layout MLP head (same code path as the real one)."""
    from ..rewards import AestheticMLP, AestheticScorer

    clip = tiny_clip_model(seed)
    _seed(seed + 1)
    return AestheticScorer(
        clip_model=clip, head=AestheticMLP(clip.config.projection_dim), processor=tiny_clip_processor()
    )


def tiny_clip_scorer(seed: int = 0):
    """`CLIPScorer` on a tiny random CLIP."""
    from ..rewards import CLIPScorer

    return CLIPScorer(clip_model=tiny_clip_model(seed), processor=tiny_clip_processor())


def tiny_pickscore_scorer(seed: int = 0):
    """`PickScoreScorer` on a tiny random CLIP."""
    from ..rewards import PickScoreScorer

    return PickScoreScorer(model=tiny_clip_model(seed), processor=tiny_clip_processor())


# --- Tiny editing pipelines (InstructPix2Pix, inpainting, ControlNet, img2img) for `trl_rpo.data.editors`. ---


def _sd_components(seed: int, in_channels: int, sample_size: int = 16, prediction_type: str = "epsilon") -> dict:
    """The components of a tiny SD 1.5 pipeline whose UNet reads `in_channels` latent channels.

    4 channels for text-to-image, img2img and ControlNet; editing models only widen the UNet input: 8 channels for
    InstructPix2Pix (noisy latents + image latents), 9 for inpainting (noisy latents + mask + masked-image latents).
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..diffusion import stable_diffusion_ddim_scheduler

    _seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_HIDDEN,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    scheduler = stable_diffusion_ddim_scheduler(prediction_type)
    return {
        "unet": unet,
        "vae": _vae(),
        "text_encoder": CLIPTextModel(_text_config()),
        "tokenizer": tiny_clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def _sdxl_components(seed: int, in_channels: int, sample_size: int = 16, prediction_type: str = "epsilon") -> dict:
    """The components of a tiny SDXL pipeline whose UNet reads `in_channels` latent channels.

    The UNet uses `addition_embed_type="text_time"` exactly as SDXL does, so the six time ids (original size, crop
    top-left, target size) and the pooled embedding of the second encoder are real inputs of the model.
    """
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    _seed(seed)
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * time_embed_dim + _TEXT_HIDDEN,
        cross_attention_dim=2 * _TEXT_HIDDEN,
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )
    return {
        "unet": unet,
        "vae": _vae(),
        "text_encoder": CLIPTextModel(_text_config()),
        "text_encoder_2": CLIPTextModelWithProjection(_text_config()),
        "tokenizer": tiny_clip_tokenizer(),
        "tokenizer_2": tiny_clip_tokenizer(),
        "scheduler": scheduler,
        "force_zeros_for_empty_prompt": True,
        "add_watermarker": False,
    }


def tiny_instruct_pix2pix_pipeline(seed: int = 0):
    """A seeded tiny `StableDiffusionInstructPix2PixPipeline` (SD 1.5 layout, UNet with 8 input channels)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return _quiet(StableDiffusionInstructPix2PixPipeline(**_sd_components(seed, in_channels=8)))


def tiny_sdxl_instruct_pix2pix_pipeline(seed: int = 0):
    """A seeded tiny `StableDiffusionXLInstructPix2PixPipeline` (SDXL layout, UNet with 8 input channels)."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    components = _sdxl_components(seed, in_channels=8)
    return _quiet(StableDiffusionXLInstructPix2PixPipeline(**components, is_cosxl_edit=False))


def tiny_inpaint_pipeline(seed: int = 0):
    """A seeded tiny `StableDiffusionInpaintPipeline` (SD 1.5 layout, UNet with 9 input channels)."""
    from diffusers import StableDiffusionInpaintPipeline

    return _quiet(StableDiffusionInpaintPipeline(**_sd_components(seed, in_channels=9)))


def tiny_sdxl_inpaint_pipeline(seed: int = 0):
    """A seeded tiny `StableDiffusionXLInpaintPipeline` (SDXL layout, UNet with 9 input channels)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    components = _sdxl_components(seed, in_channels=9)
    return _quiet(StableDiffusionXLInpaintPipeline(**components, image_encoder=None, feature_extractor=None))


def tiny_controlnet_pipeline(seed: int = 0):
    """A seeded tiny `StableDiffusionControlNetImg2ImgPipeline`: the tiny SD 1.5 components plus a `ControlNetModel`.

    The ControlNet is built from the tiny UNet (`ControlNetModel.from_unet`); its conditioning embedding
    downsamples by 2, like the tiny VAE, so control images have the pixel size of the images.
    """
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    components = _sd_components(seed, in_channels=4)
    controlnet = ControlNetModel.from_unet(components["unet"], conditioning_embedding_out_channels=(8, 16))
    return _quiet(StableDiffusionControlNetImg2ImgPipeline(**components, controlnet=controlnet))


def tiny_img2img_pipeline(seed: int = 0):
    """A seeded tiny `StableDiffusionImg2ImgPipeline` (the components of `tiny_sd_pipeline`)."""
    from diffusers import StableDiffusionImg2ImgPipeline

    return _quiet(StableDiffusionImg2ImgPipeline(**_sd_components(seed, in_channels=4)))


_CHAT_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<image>", "<|user|>", "<|assistant|>"]

# A minimal chat template in the shape real VLM templates have: content is a string or a list of parts, image
# parts become the processor's image token, and the generation prompt opens the assistant turn.
_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_chat_tokenizer():
    """A byte-level `PreTrainedTokenizerFast` with chat special tokens, an `<image>` token and a chat template.

    Built in memory (no merges, no files): every string round-trips through encode/decode, so tests can turn any
    reply text into token ids. Pads on the left, as batched generation with decoder-only models needs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(_byte_level_alphabet())}
    for token in _CHAT_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=_CHAT_SPECIAL_TOKENS[3:],
        padding_side="left",
    )
    tokenizer.chat_template = _TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_vision_language_model(seed: int = 0, image_size: int = 32):
    """A seeded tiny LLaVA (`LlavaForConditionalGeneration`: CLIP vision tower + Llama text model) and its processor.

    A real image-text-to-text model (the same classes as `llava-hf/llava-1.5-7b-hf`, about 60k parameters) whose
    `LlavaProcessor` has a chat template, so critics run their real batching and `generate` path offline. Its
    replies are random bytes: tests that need a given reply replace `model.generate`.

    Returns:
        `(model, processor)`.
    """
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    try:  # transformers >= 5 names the PIL backend explicitly; the plain class warns without torchvision
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor as ImageProcessor

    tokenizer = tiny_chat_tokenizer()
    patch_size = 8
    image_processor = ImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=_TINY_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" feature strategy
    )
    _seed(seed)
    vision = _vision_config(image_size, patch_size=patch_size)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    return LlavaForConditionalGeneration(config).eval(), processor
