"""Preference datasets: formats, validation and loading."""

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
    "InvalidRowError",
    "detect_format",
    "load_image",
    "load_preference_dataset",
    "load_prompt_dataset",
    "pickapic_to_preference",
    "prepare_preference_dataset",
    "prepare_prompt_dataset",
]
