"""Scorers built on `transformers.CLIPModel`: LAION aesthetic predictor, CLIP similarity and PickScore.

Every scorer preprocesses images as tensors (resize, center crop, normalize with the image processor's
statistics), so the same code path serves the reward values and TailorPO-G's reward gradients.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .base import RewardScorer

__all__ = ["AestheticMLP", "CLIPBackbone", "AestheticScorer", "CLIPScorer", "PickScoreScorer", "load_state_dict_file"]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_AESTHETIC_HEAD = "trl-lib/ddpo-aesthetic-predictor"
DEFAULT_AESTHETIC_HEAD_FILE = "aesthetic-model.pth"
DEFAULT_PICKSCORE = "yuvalkirstain/PickScore_v1"
DEFAULT_PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict safely: safetensors, or a torch pickle with `weights_only=True` (no code execution)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"could not load {path!r} as tensors only (weights_only=True): {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, expected a state dict of tensors")
    return state


def _resolve_file(source: str, filename: str, token: str | None = None) -> str:
    """A local file, a file inside a local folder, or a file of a Hub repository (downloaded to the cache)."""
    if os.path.isfile(source):
        return source
    if os.path.isdir(source):
        return os.path.join(source, filename)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(source, filename, token=token)


def _load_clip(model: Any, torch_dtype: torch.dtype | None):
    from transformers import CLIPModel

    if isinstance(model, CLIPModel):
        return model
    if not isinstance(model, str):
        raise TypeError(f"expected a CLIPModel or a model id / path, got {type(model).__name__}")
    return CLIPModel.from_pretrained(model, dtype=torch_dtype or torch.float32)


def _load_processor(processor: Any, source: str | None):
    from transformers import CLIPProcessor

    if processor is None:
        if source is None:
            raise ValueError("pass `processor` (a CLIPProcessor) when the CLIP model is given as an object")
        return CLIPProcessor.from_pretrained(source)
    if isinstance(processor, str):
        return CLIPProcessor.from_pretrained(processor)
    return processor


class _CLIPPreprocess(torch.nn.Module):
    """CLIP's image preprocessing on tensors in [0, 1]: resize the short side, center crop, normalize."""

    def __init__(self, image_processor: Any):
        super().__init__()
        # `size`/`crop_size` are dicts (transformers 4) or SizeDicts with unset fields as None (transformers 5).
        size = {k: v for k, v in dict(image_processor.size).items() if v is not None}
        crop = {k: v for k, v in dict(image_processor.crop_size).items() if v is not None}
        self.short_side = int(size.get("shortest_edge") or min(size.values()))
        self.crop = (int(crop["height"]), int(crop["width"]))
        self.register_buffer("mean", torch.tensor(image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_processor.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        scale = self.short_side / min(h, w)
        new = (max(self.crop[0], round(h * scale)), max(self.crop[1], round(w * scale)))
        if new != (h, w):
            images = F.interpolate(images, size=new, mode="bicubic", align_corners=False, antialias=True)
        top, left = (new[0] - self.crop[0]) // 2, (new[1] - self.crop[1]) // 2
        images = images[..., top : top + self.crop[0], left : left + self.crop[1]]
        return (images - self.mean) / self.std


class CLIPBackbone(torch.nn.Module):
    """Shared CLIP plumbing of the scorers: frozen model, preprocessing, tokenization, normalized embeddings."""

    def __init__(self, model: Any, processor: Any, torch_dtype: torch.dtype | None):
        super().__init__()
        self.clip = _load_clip(model, torch_dtype).eval().requires_grad_(False)
        self.processor = _load_processor(processor, model if isinstance(model, str) else None)
        self.preprocess = _CLIPPreprocess(self.processor.image_processor)

    @property
    def device(self) -> torch.device:
        return self.clip.device

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images.to(self.device, torch.float32)).to(self.clip.dtype)
        return F.normalize(_features(self.clip.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = self.processor.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.processor.tokenizer.model_max_length,
            return_tensors="pt",
        ).to(self.device)
        return F.normalize(_features(self.clip.get_text_features(**tokens)).float(), dim=-1)


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose pooled projection is `pooler_output`; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class AestheticMLP(torch.nn.Module):
    """The LAION improved-aesthetic-predictor head (its state-dict layout: `layers.{0,2,4,6,7}`)."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_dim, 1024),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(128, 64),
            torch.nn.Dropout(0.1),
            torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class AestheticScorer(RewardScorer):
    r"""LAION aesthetic score: MLP head on the L2-normalized CLIP ViT-L/14 image embedding (DDPO's reward).

    $r(x) = \mathrm{MLP}(e / \lVert e \rVert)$, $e$ the CLIP image embedding; roughly 1-10 on real images.

    Args:
        clip_model: CLIP model id / path or a `CLIPModel` (default: `openai/clip-vit-large-patch14`).
        head: the MLP head: a Hub repo id, a local folder or file (`.safetensors`, or a torch file loaded
            with `weights_only=True`), a state dict, or an `AestheticMLP` (default: TRL's DDPO predictor).
        head_filename: file name inside the repo or folder.
        processor: a `CLIPProcessor` or its id; defaults to `clip_model`'s.
    """

    name = "aesthetic"

    def __init__(
        self,
        clip_model: Any = DEFAULT_CLIP,
        head: Any = DEFAULT_AESTHETIC_HEAD,
        head_filename: str = DEFAULT_AESTHETIC_HEAD_FILE,
        processor: Any = None,
        torch_dtype: torch.dtype | None = None,
        token: str | None = None,
    ):
        super().__init__()
        self.backbone = CLIPBackbone(clip_model, processor, torch_dtype)
        dim = self.backbone.clip.config.projection_dim
        if isinstance(head, AestheticMLP):
            self.head = head
        else:
            state = head if isinstance(head, dict) else load_state_dict_file(_resolve_file(head, head_filename, token))
            self.head = AestheticMLP(dim)
            try:
                self.head.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(
                    f"aesthetic head weights do not match the LAION MLP layout for dim {dim}: {err}"
                ) from err
        self.head.eval().requires_grad_(False)

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return self.head(self.backbone.image_embeddings(images)).squeeze(-1)


class CLIPScorer(RewardScorer):
    r"""Text-image alignment: cosine similarity of CLIP image and prompt embeddings, $\cos(e_x, e_c)$ in [-1, 1]."""

    name = "clip_score"

    def __init__(self, clip_model: Any = DEFAULT_CLIP, processor: Any = None, torch_dtype: torch.dtype | None = None):
        super().__init__()
        self.backbone = CLIPBackbone(clip_model, processor, torch_dtype)

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        return (self.backbone.image_embeddings(images) * self.backbone.text_embeddings(prompts)).sum(-1)


class PickScoreScorer(RewardScorer):
    r"""PickScore (Kirstain et al., 2023): $s = \exp(\text{logit\_scale}) \cdot \cos(e_x, e_c)$ of a CLIP model
    fine-tuned on Pick-a-Pic; ~20-23 on real images.

    Args:
        model: PickScore model id / path or a `CLIPModel` (default `yuvalkirstain/PickScore_v1`).
        processor: its processor (default `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, as in the PickScore repo).
    """

    name = "pickscore"

    def __init__(
        self,
        model: Any = DEFAULT_PICKSCORE,
        processor: Any = DEFAULT_PICKSCORE_PROCESSOR,
        torch_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.backbone = CLIPBackbone(model, processor, torch_dtype)

    def score_tensor(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scale = self.backbone.clip.logit_scale.exp().float()
        return scale * (self.backbone.image_embeddings(images) * self.backbone.text_embeddings(prompts)).sum(-1)
