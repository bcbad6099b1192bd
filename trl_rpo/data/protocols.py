"""The stage protocols of the RPO data pipeline: what a generator, critic, editor, refiner or verifier must be.

They are structural (`typing.Protocol`): any callable of the right shape fits, whether a class of this package,
the shapes world's `Critic` / `Editor` / `ShapesGenerator` (which implement them like any user code would, without
importing anything from here), or a plain function. `RichPreferenceDataBuilder` calls the stages through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from .schema import Critique, EditInstruction

__all__ = ["Critic", "Editor", "Generator", "Refiner", "TextModel", "Verifier"]


@runtime_checkable
class Generator(Protocol):
    """`generator(prompts, seeds) -> images`: one image per prompt, image `i` from seed `seeds[i]`."""

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]: ...


@runtime_checkable
class Critic(Protocol):
    """`critic(images, prompts) -> critiques`: a `Critique` (or its dict) per image; None when it failed.

    A critique without instructions means the image needs no edit.
    """

    def __call__(
        self, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> Sequence[Critique | dict[str, Any] | None]: ...


@runtime_checkable
class Editor(Protocol):
    """`editor(images, instructions, prompts) -> images`: the edited image per input, or None where it failed.

    `instructions[i]` are image i's edits (`EditInstruction`s, dicts or strings). Optional per-call state, read
    by the builder after each call: `last_methods` (the editor used per image, recorded as `edit_method`) and
    `last_masks` (the edited region per image, a mode "L" mask or None; see `trl_rpo.data.editors.edit_masks`).
    """

    def __call__(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[Sequence[EditInstruction | dict[str, Any] | str]],
        prompts: Sequence[str],
    ) -> list[Image.Image | None]: ...


@runtime_checkable
class Refiner(Protocol):
    """`refiner(edited, prompts, masks) -> images`: each edit brought back to the model's manifold, or None."""

    def __call__(
        self, images: Sequence[Image.Image], prompts: Sequence[str], masks: Sequence[Image.Image | None]
    ) -> list[Image.Image | None]: ...


@runtime_checkable
class Verifier(Protocol):
    """`verifier(originals, edited, prompts) -> keep flags`, one bool per pair (a `.verify` method may add scores)."""

    def __call__(
        self, originals: Sequence[Image.Image], edited: Sequence[Image.Image], prompts: Sequence[str]
    ) -> list[bool]: ...


class TextModel(Protocol):
    """`model(text) -> text`: a text-only model, e.g. the second stage of a two-stage critic."""

    def __call__(self, text: str) -> str: ...
