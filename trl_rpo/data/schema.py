"""What a critic returns: a critique and the executable editing instructions derived from it (RPO, arXiv 2503.11720).

A critic may return `Critique` objects or plain dicts `{"critique": str, "instructions": [...]}`, where each
instruction is a string or a dict with the fields of `EditInstruction`; `Critique.from_dict` validates both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Critique", "EditInstruction", "InvalidCritiqueError", "coerce_edit_batch"]

_REGION_LEN = 4


class InvalidCritiqueError(ValueError):
    """Critic output that does not follow the critique schema; the message says which field and why."""


@dataclass
class EditInstruction:
    """One executable edit.

    Attributes:
        instruction: the edit in natural language, e.g. "recolor the circle to red" (what an
            instruction-following editor such as InstructPix2Pix receives).
        kind: optional category an editor router dispatches on, e.g. "recolor", "move", "remove", "add",
            "background", "style".
        target: optional object the edit applies to, e.g. "circle".
        region: optional box `(x0, y0, x1, y1)` in [0, 1] image coordinates (for inpainting masks).
        params: optional structured arguments, e.g. `{"color": "red"}`.
    """

    instruction: str
    kind: str | None = None
    target: str | None = None
    region: tuple[float, float, float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.instruction, str) or not self.instruction.strip():
            raise InvalidCritiqueError(f"instruction must be a non-empty string, got {self.instruction!r}")
        for name in ("kind", "target"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidCritiqueError(f"instruction field {name!r} must be a string, got {value!r}")
        if self.region is not None:
            region = tuple(self.region) if isinstance(self.region, (list, tuple)) else (self.region,)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in region)
            if len(region) != _REGION_LEN or not numeric:
                raise InvalidCritiqueError(f"region must be 4 numbers (x0, y0, x1, y1), got {self.region!r}")
            x0, y0, x1, y1 = (float(v) for v in region)
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise InvalidCritiqueError(
                    f"region must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {region}"
                )
            self.region = (x0, y0, x1, y1)
        if not isinstance(self.params, dict):
            raise InvalidCritiqueError(f"params must be a dict, got {type(self.params).__name__}")

    @classmethod
    def coerce(cls, value: Any) -> EditInstruction:
        """An `EditInstruction` from itself, a string, or a dict with its fields (unknown keys are refused)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(instruction=value)
        if isinstance(value, dict):
            unknown = set(value) - {"instruction", "kind", "target", "region", "params"}
            if unknown:
                raise InvalidCritiqueError(f"unknown instruction field(s) {sorted(unknown)}")
            if "instruction" not in value:
                raise InvalidCritiqueError(f"instruction dict needs an 'instruction' field, got {sorted(value)}")
            return cls(**value)
        raise InvalidCritiqueError(f"an instruction must be a string or a dict, got {type(value).__name__}")


@dataclass
class Critique:
    """A critic's verdict on one image: the critique text and the instructions that would fix it.

    No instructions means the critic found nothing to fix: the image yields no preference pair.
    """

    critique: str
    instructions: list[EditInstruction] = field(default_factory=list)

    def __post_init__(self):
        if not isinstance(self.critique, str):
            raise InvalidCritiqueError(f"critique must be a string, got {type(self.critique).__name__}")
        if not isinstance(self.instructions, (list, tuple)):
            raise InvalidCritiqueError(f"instructions must be a list, got {type(self.instructions).__name__}")
        self.instructions = [EditInstruction.coerce(item) for item in self.instructions]

    @property
    def needs_edit(self) -> bool:
        return bool(self.instructions)

    @classmethod
    def coerce(cls, value: Any) -> Critique:
        """A `Critique` from itself or a dict `{"critique": str, "instructions": [...]}`."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"critique", "instructions"}
            if unknown:
                raise InvalidCritiqueError(f"unknown critique field(s) {sorted(unknown)}")
            if "critique" not in value:
                raise InvalidCritiqueError(f"a critique dict needs a 'critique' field, got {sorted(value)}")
            instructions = value.get("instructions")
            return cls(critique=value["critique"], instructions=[] if instructions is None else instructions)
        raise InvalidCritiqueError(f"a critique must be a Critique or a dict, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "critique": self.critique,
            "instructions": [
                {k: v for k, v in asdict(instruction).items() if v not in (None, {})}
                for instruction in self.instructions
            ],
        }


def coerce_edit_batch(
    images: Sequence[Any], instructions: Sequence[Sequence[Any]], prompts: Sequence[str] | None = None
) -> tuple[list[Any], list[list[EditInstruction]], list[str]]:
    """Check and normalize the arguments of the editor protocol `editor(images, instructions, prompts)`.

    Every editor receives one list of instructions per image (strings, dicts or `EditInstruction`s) and optionally
    one prompt per image; returns `(images, instructions as EditInstruction lists, prompts)`.
    """
    if len(images) != len(instructions):
        raise ValueError(f"got {len(instructions)} instruction lists for {len(images)} images; expected one per image")
    if prompts is None:
        prompts = [""] * len(images)
    elif isinstance(prompts, str) or len(prompts) != len(images):
        raise ValueError(f"prompts must be a list with one prompt per image ({len(images)}), got {prompts!r}")
    coerced = []
    for items in instructions:
        if isinstance(items, (str, dict, EditInstruction)):
            raise TypeError(f"instructions[i] must be a list of instructions for image i, got {type(items).__name__}")
        coerced.append([EditInstruction.coerce(item) for item in items])
    return list(images), coerced, list(prompts)
