"""The shapes world: a synthetic text-to-image task with exact ground truth, a reward, a critic and an editor.

See docs/shapes.md. Prompts like "two red circles on the left, on a white background" are rendered exactly by
`render`, read back by `analyze`, scored by `alignment_score` (a reward function), criticized by `Critic` and fixed
by `Editor`; `judge_alignment` scores them independently (a CNN trained only on renders, for evaluation only).
"""

from .analysis import COLOR_NAMES, DetectedObject, Observation, analyze, classify_shape
from .critic import Critic, describe
from .editor import Editor
from .evaluate import ATTRIBUTES, alignment_score, check_attributes, soft_alignment_score, soft_attributes
from .generator import ShapesGenerator
from .judge import judge_alignment, strict_accuracy
from .model import CHECKPOINT_DIR, load_pipeline, training_info
from .render import layout, render
from .world import (
    BACKGROUNDS,
    COUNTS,
    HELD_OUT_PAIRS,
    PALETTE,
    POSITIONS,
    REGION_BOXES,
    SHAPES,
    Scene,
    all_scenes,
    object_size,
    parse_prompt,
    position_of,
    prompt_text,
    prompts,
    slot_centers,
    split_of,
)

__all__ = [
    "ShapesGenerator",
    "ATTRIBUTES",
    "BACKGROUNDS",
    "CHECKPOINT_DIR",
    "COLOR_NAMES",
    "COUNTS",
    "HELD_OUT_PAIRS",
    "PALETTE",
    "POSITIONS",
    "REGION_BOXES",
    "SHAPES",
    "Critic",
    "DetectedObject",
    "Editor",
    "Observation",
    "Scene",
    "alignment_score",
    "all_scenes",
    "analyze",
    "check_attributes",
    "classify_shape",
    "describe",
    "judge_alignment",
    "layout",
    "load_pipeline",
    "object_size",
    "parse_prompt",
    "position_of",
    "prompt_text",
    "prompts",
    "render",
    "slot_centers",
    "soft_alignment_score",
    "soft_attributes",
    "split_of",
    "strict_accuracy",
    "training_info",
]
