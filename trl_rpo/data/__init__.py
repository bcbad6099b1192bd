"""Preference datasets: formats, validation and loading; the RPO builder with its critics, editors, verifiers.

Names load lazily (`trl_rpo._lazy`), so importing one data module does not import every backend.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["PipelineGenerator", "RichPreferenceConfig", "RichPreferenceDataBuilder"], ".builder"),
    **dict.fromkeys(
        ["CRITIC_PROMPT", "CriticRequestError", "OpenAICompatibleCritic", "TransformersCritic", "parse_critique"],
        ".critics",
    ),
    **dict.fromkeys(
        ["ControlNetEditor", "EditorRouter", "Img2ImgEditor", "InpaintEditor", "InstructPix2PixEditor"], ".editors"
    ),
    **dict.fromkeys(
        [
            "InvalidRowError",
            "detect_format",
            "load_image",
            "load_preference_dataset",
            "load_prompt_dataset",
            "pickapic_to_preference",
            "prepare_preference_dataset",
            "prepare_prompt_dataset",
        ],
        ".formats",
    ),
    **dict.fromkeys(["FluxKontextEditor", "QwenImageEditEditor"], ".instruction_editors"),
    **dict.fromkeys(["difference_mask", "dilate_mask", "union_masks"], ".masks"),
    **dict.fromkeys(["Img2ImgRefiner"], ".refiners"),
    **dict.fromkeys(["REWARD_PAIR_FEATURES", "build_reward_pairs"], ".reward_pairs"),
    **dict.fromkeys(["Critique", "EditInstruction", "InvalidCritiqueError"], ".schema"),
    **dict.fromkeys(["ChangeGuard", "CriticRecheckVerifier", "RewardMarginVerifier", "Verdict"], ".verifiers"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .builder import PipelineGenerator, RichPreferenceConfig, RichPreferenceDataBuilder
    from .critics import CRITIC_PROMPT, CriticRequestError, OpenAICompatibleCritic, TransformersCritic, parse_critique
    from .editors import ControlNetEditor, EditorRouter, Img2ImgEditor, InpaintEditor, InstructPix2PixEditor
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
    from .instruction_editors import FluxKontextEditor, QwenImageEditEditor
    from .masks import difference_mask, dilate_mask, union_masks
    from .refiners import Img2ImgRefiner
    from .reward_pairs import REWARD_PAIR_FEATURES, build_reward_pairs
    from .schema import Critique, EditInstruction, InvalidCritiqueError
    from .verifiers import ChangeGuard, CriticRecheckVerifier, RewardMarginVerifier, Verdict

__all__ = [
    "CRITIC_PROMPT",
    "REWARD_PAIR_FEATURES",
    "build_reward_pairs",
    "ControlNetEditor",
    "CriticRequestError",
    "EditorRouter",
    "Img2ImgEditor",
    "FluxKontextEditor",
    "QwenImageEditEditor",
    "Img2ImgRefiner",
    "difference_mask",
    "dilate_mask",
    "union_masks",
    "InpaintEditor",
    "InstructPix2PixEditor",
    "OpenAICompatibleCritic",
    "TransformersCritic",
    "parse_critique",
    "ChangeGuard",
    "CriticRecheckVerifier",
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
    "PipelineGenerator",
    "RewardMarginVerifier",
    "RichPreferenceConfig",
    "RichPreferenceDataBuilder",
    "Verdict",
]
