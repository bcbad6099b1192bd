"""Preference datasets: formats, validation and loading."""

from .schema import Critique, EditInstruction, InvalidCritiqueError
from .formats import (
    InvalidRowError,
    detect_format,
    load_image,
    load_preference_dataset,
    load_prompt_dataset,
    pickapic_to_preference,
    prepare_preference_dataset,
    prepare_prompt_dataset,
)

__all__ = [
    "Critique",
    "EditInstruction",
    "InvalidCritiqueError",
    "InvalidRowError",
    "detect_format",
    "load_image",
    "load_preference_dataset",
    "load_prompt_dataset",
    "pickapic_to_preference",
    "prepare_preference_dataset",
    "prepare_prompt_dataset",
]
