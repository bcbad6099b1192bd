"""Pieces every tiny pipeline shares: the byte-level CLIP tokenizer, text and VAE configs, seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

_TEXT_HIDDEN = 32
_VOCAB_SIZE = 514  # 256 bytes, 256 bytes + "</w>", bos, eos


def _byte_level_alphabet() -> list[str]:
    """The 256 printable characters that byte-level BPE (GPT-2, CLIP) uses to stand for raw bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A byte-level `CLIPTokenizer` built from an in-memory vocabulary (no merges, no files).

    Every string tokenizes (each byte is a token), so prompts never hit unknown tokens.
    """
    from transformers import CLIPTokenizer

    chars = _byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
    # Stable Diffusion pads with the eos token; keep that convention.
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def _text_config(projection_dim: int = _TEXT_HIDDEN):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=_VOCAB_SIZE - 2,
        eos_token_id=_VOCAB_SIZE - 1,
        pad_token_id=_VOCAB_SIZE - 1,
        hidden_size=_TEXT_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=_VOCAB_SIZE,
        max_position_embeddings=77,
        projection_dim=projection_dim,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe
