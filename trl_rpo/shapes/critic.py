"""A rule-based critic for the shapes world: what is wrong with an image, and the edits that would fix it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from ..data.schema import Critique, EditInstruction
from .analysis import DetectedObject, Observation, analyze
from .world import REGION_BOXES, Scene, object_size, parse_prompt, prompt_text, slot_centers

__all__ = ["Critic", "describe"]

_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}


def _plural(noun: str, count: int) -> str:
    return noun if count == 1 else noun + "s"


def describe(observation: Observation) -> str:
    """A one-sentence description of what an observation contains, e.g. "two red circles on the left"."""
    groups: dict[tuple[str, str, str], int] = {}
    for o in observation.objects:
        key = (o.color, o.shape, o.position)
        groups[key] = groups.get(key, 0) + 1
    if not groups:
        return f"no objects on a {observation.background} background"
    parts = [
        f"{_COUNT_WORDS.get(n, str(n))} {color} {_plural(shape, n)} {_PHRASES[position]}"
        for (color, shape, position), n in groups.items()
    ]
    return f"{', '.join(parts)}, on a {observation.background} background"


def _free_slots(placed: list[DetectedObject], slots: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The slots left after each object already in the region claims the free slot nearest to it."""
    free = list(slots)
    for o in placed:
        if free:
            free.remove(min(free, key=lambda s: math.dist(s, o.centroid)))
    return free


def _merge_repeats(sentences: list[str]) -> list[str]:
    """Each distinct sentence once, in order, saying how many objects it applies to when more than one."""
    counts: dict[str, int] = {}
    for sentence in sentences:
        counts[sentence] = counts.get(sentence, 0) + 1
    return [s if n == 1 else f"{s[:-1]} ({_COUNT_WORDS.get(n, str(n))} of them)." for s, n in counts.items()]


class Critic:
    """Compares each image with its prompt's scene and writes a critique plus executable `EditInstruction`s.

    Rules, with "targets" the objects of the prompt's color and shape:

    - more targets than the count: remove the surplus ("remove"), those outside the region first;
    - fewer: recolor objects of the right shape but a wrong color ("recolor"), then add the rest ("add");
    - any other object (wrong shape, or a wrong color not needed for the count): "remove" (a wrong shape is
      therefore fixed by remove + add);
    - targets outside the named region: "move", with a suggested destination `at` (a free canonical slot);
    - wrong background: "background".

    Instructions come in the order remove, recolor, move, add, background; an image that satisfies the prompt
    gets a critique with no instructions.
    """

    name = "shapes_critic"

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Critique]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
        return [self.critique(image, prompt) for image, prompt in zip(images, prompts)]

    def critique(self, image: Image.Image, prompt: str) -> Critique:
        """The critique of one image against one prompt."""
        scene = parse_prompt(prompt)
        observation = analyze(image)
        problems, instructions = self._plan(observation, scene)
        seen = f"The prompt asks for {prompt_text(scene)}; the image shows {describe(observation)}."
        if not instructions:
            return Critique(critique=f"{seen} The image matches the prompt.", instructions=[])
        return Critique(critique=" ".join([seen, *_merge_repeats(problems)]), instructions=instructions)

    def _plan(self, observation: Observation, scene: Scene) -> tuple[list[str], list[EditInstruction]]:
        width, height = observation.size

        def in_region(o: DetectedObject) -> bool:
            return o.position == scene.position

        targets = [o for o in observation.objects if (o.color, o.shape) == (scene.color, scene.shape)]
        others = [o for o in observation.objects if (o.color, o.shape) != (scene.color, scene.shape)]
        problems: list[str] = []
        removes, recolors, moves, adds, background = [], [], [], [], []

        # Keep targets already in the region first, so the surplus removed is the misplaced one.
        targets.sort(key=lambda o: not in_region(o))
        kept, surplus = targets[: scene.count], targets[scene.count :]
        if surplus:
            problems.append(
                f"There are {len(targets)} {scene.color} {_plural(scene.shape, len(targets))} "
                f"but the prompt asks for {_COUNT_WORDS[scene.count]}."
            )
        for o in surplus:
            removes.append(self._remove(o, width, height))

        deficit = scene.count - len(kept)
        reshapeable = sorted((o for o in others if o.shape == scene.shape), key=lambda o: not in_region(o))
        recolored = reshapeable[:deficit]
        for o in recolored:
            problems.append(f"The {o.name} {_PHRASES[o.position]} should be {scene.color}, not {o.color}.")
            recolors.append(
                EditInstruction(
                    instruction=f"recolor the {o.name} {_PHRASES[o.position]} to {scene.color}",
                    kind="recolor",
                    target=o.name,
                    region=o.box(width, height),
                    params={"color": scene.color, "from": o.color},
                )
            )
        deficit -= len(recolored)
        recolored_ids = {id(o) for o in recolored}
        for o in others:
            if id(o) in recolored_ids:
                continue
            if o.color == scene.color:
                problems.append(f"The {o.name} {_PHRASES[o.position]} should be a {scene.shape}, not a {o.shape}.")
            else:
                problems.append(f"The {o.name} {_PHRASES[o.position]} is not in the prompt.")
            removes.append(self._remove(o, width, height))

        members = kept + recolored
        slots = list(slot_centers(scene.position, scene.count))
        placed = [o for o in members if in_region(o)]
        free = _free_slots(placed, slots)
        for o in members:
            if in_region(o):
                continue
            name = f"{scene.color} {o.shape}"
            problems.append(f"The {name} is {_PHRASES[o.position]} but should be {_PHRASES[scene.position]}.")
            at = free.pop(0)
            moves.append(
                EditInstruction(
                    instruction=f"move the {name} {_PHRASES[o.position]} so it is {_PHRASES[scene.position]}",
                    kind="move",
                    target=name,
                    region=o.box(width, height),
                    params={"to": scene.position, "at": list(at)},
                )
            )
        if deficit > 0:
            problems.append(
                f"{_COUNT_WORDS[deficit].capitalize()} {scene.color} {_plural(scene.shape, deficit)} "
                f"{'is' if deficit == 1 else 'are'} missing {_PHRASES[scene.position]}."
            )
            adds.append(
                EditInstruction(
                    instruction=f"add {_COUNT_WORDS[deficit]} {scene.color} {_plural(scene.shape, deficit)} "
                    f"{_PHRASES[scene.position]}",
                    kind="add",
                    target=f"{scene.color} {scene.shape}",
                    region=REGION_BOXES[scene.position],
                    params={
                        "shape": scene.shape,
                        "color": scene.color,
                        "count": deficit,
                        "to": scene.position,
                        "size": object_size(scene.count),
                        "at": [list(s) for s in free[:deficit]],
                    },
                )
            )
        if observation.background != scene.background:
            problems.append(f"The background is {observation.background} but should be {scene.background}.")
            background.append(
                EditInstruction(
                    instruction=f"change the background to {scene.background}",
                    kind="background",
                    target="background",
                    params={"color": scene.background},
                )
            )
        return problems, [*removes, *recolors, *moves, *adds, *background]

    @staticmethod
    def _remove(o: DetectedObject, width: int, height: int) -> EditInstruction:
        return EditInstruction(
            instruction=f"remove the {o.name} {_PHRASES[o.position]}",
            kind="remove",
            target=o.name,
            region=o.box(width, height),
        )
