"""Model cards for models trained with trl-rpo (diffusers library, TRL-style tags and citations)."""

from __future__ import annotations

import os
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..citations import DIFFUSION_DPO_CITATION, RPO_CITATION, TAILORPO_CITATION, TRL_CITATION  # noqa: F401  (re-exported)


def _hub_id(name: str | None) -> str | None:
    """A Hub id worth linking (`org/name`), not a local path."""
    if not name or os.path.isabs(name) or os.path.exists(name) or name.count("/") != 1:
        return None
    return name


def build_model_card(
    *,
    base_model: str | None,
    model_name: str,
    hub_model_id: str | None,
    dataset_name: str | None,
    tags: list[str],
    trainer_name: str,
    pipeline_class: str,
    is_lora: bool,
    hyperparameters: dict[str, Any],
    papers: list[dict[str, str]],
    log_history: list[dict[str, Any]],
    denoiser_class: str = "UNet2DConditionModel",
) -> ModelCard:
    """A diffusers-style model card: metadata, how to load, hyperparameters, last metrics and citations.

    Only explicitly chosen hyperparameters are written (never the whole `TrainingArguments`, which can hold a
    Hub token).
    """
    base_id = _hub_id(base_model)
    tags = list(dict.fromkeys(["text-to-image", "diffusers", *(["lora"] if is_lora else []), *tags]))
    data = ModelCardData(
        base_model=base_id,
        datasets=[dataset_name] if _hub_id(dataset_name) else None,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=tags,
        model_name=model_name,
    )
    repo = hub_model_id or model_name
    base_text = (
        f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{base_model or 'a local pipeline'}`"
    )
    data_text = (
        f" on [{dataset_name}](https://huggingface.co/datasets/{dataset_name})"
        if _hub_id(dataset_name)
        else (f" on `{dataset_name}`" if dataset_name else "")
    )
    attribute = "unet" if denoiser_class == "UNet2DConditionModel" else "transformer"
    load = (
        f'pipe.load_lora_weights("{repo}")'
        if is_lora
        else f'pipe.{attribute} = {denoiser_class}.from_pretrained("{repo}", subfolder="{attribute}", '
        "torch_dtype=torch.float16)"
    )
    imports = f"from diffusers import {pipeline_class}" + ("" if is_lora else f", {denoiser_class}")
    kind = (
        "LoRA adapter"
        if is_lora
        else ("fully fine-tuned UNet" if attribute == "unet" else "fully fine-tuned transformer")
    )

    rows = "\n".join(f"| {k} | {v} |" for k, v in hyperparameters.items())
    last = _last_metrics(log_history)
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in last.items()) if last else "| (no logged metrics yet) | |"
    citations = [p["citation"] for p in papers if p.get("citation")] + [TRL_CITATION]
    paper_lines = "\n".join(
        f"- [{p['title']}](https://huggingface.co/papers/{p['id']})" for p in papers if p.get("id")
    )

    content = f"""---
{data.to_yaml()}
---

# {model_name}

A {kind} for {base_text}{data_text}, trained with **{trainer_name}** from
[trl-rpo](https://github.com/trl-rpo/trl-rpo), a TRL-style library for preference optimization of
text-to-image diffusion models.

## Usage

```python
import torch
{imports}

pipe = {pipeline_class}.from_pretrained("{base_id or base_model or "path/to/base/pipeline"}", torch_dtype=torch.float16)
{load}
image = pipe("a photo of an astronaut riding a horse").images[0]
```

## Training procedure

Method papers:
{paper_lines or "- see citations below"}

### Hyperparameters

| parameter | value |
|---|---|
{rows}

### Final training metrics

| metric | value |
|---|---|
{metrics}

## Citations

```bibtex
{chr(10).join(citations)}
```
"""
    return ModelCard(content)


def _last_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    keep = ("loss", "rewards/", "mse/", "eval_loss", "eval_rewards/")
    last: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key.startswith(keep):
                last[key] = float(value)
    return last
