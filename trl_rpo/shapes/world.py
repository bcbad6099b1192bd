"""The shapes world: compositional prompts over shape, color, count, position and background.

Grammar of a prompt (one object group per prompt)::

    <count> <color> <shape>[s] <position phrase>, on a <background> background

    count      one | two | three            ("a"/"an" are read as one)
    color      red | orange | yellow | green | blue | purple
    shape      circle | square | triangle | diamond   (plural with "s" when count > 1)
    position   on the left | on the right | at the top | at the bottom | in the center
    background white | black | gray

e.g. "two red circles on the left, on a white background".

Split rule: a scene is held out iff its (shape, color) pair is in `HELD_OUT_PAIRS`, and final iff it is in
`FINAL_PAIRS` (one color per shape each, eight pairs in all). Every shape and every color appears in train, but
those pairs never do, so held-out and final prompts test compositional generalization; the splits are disjoint by
construction. The held-out scenes are split, by a fixed shuffle that no demo seed changes, into "dev" (a third)
and "dev2" (the rest; the demo's "test" split until 2026-12-05, read many times while recipes changed, so it is a
second set for choosing recipes now, not a place to report them). "final" is where results are reported: no
recipe is chosen on it, the base model never saw its pairs, and every look at it is recorded in docs/shapes.md.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BACKGROUNDS",
    "COUNTS",
    "FINAL_PAIRS",
    "HELD_OUT_HALVES",
    "HELD_OUT_PAIRS",
    "PALETTE",
    "POSITIONS",
    "REGION_BOXES",
    "SHAPES",
    "SPLITS",
    "SPLIT_SIZES",
    "Scene",
    "all_scenes",
    "unseen_pair_splits",
    "object_size",
    "parse_prompt",
    "position_of",
    "prompt_text",
    "prompts",
    "region_margin",
    "slot_centers",
    "split_of",
]

# Object colors: pairwise RGB distance >= 100 and far from every background, so nearest-color segmentation is exact.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 20, 20),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 20),
    "green": (20, 160, 40),
    "blue": (20, 60, 220),
    "purple": (150, 40, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COUNTS: tuple[int, ...] = (1, 2, 3)
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("circle", "purple"), ("square", "orange"), ("triangle", "green"), ("diamond", "blue")}
)
# The held-out pairs in two fixed halves (one shape-color pair per shape, no color shared): an online round can roll
# out on one half's dev2 scenes ("dev2_a") and be scored on the other half's dev and dev2 scenes ("dev_b",
# "dev2_b"), whose pairs it never saw, so its dev gain measures transfer to unseen compositions as final does.
HELD_OUT_HALVES: dict[str, frozenset[tuple[str, str]]] = {
    "a": frozenset({("circle", "purple"), ("square", "orange")}),
    "b": frozenset({("triangle", "green"), ("diamond", "blue")}),
}
# The final split's pairs (added 2026-12-05 with a base model retrained without them): a different color per shape
# from `HELD_OUT_PAIRS`, each color at most once, so every color still appears in train with two or more shapes.
FINAL_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("circle", "yellow"), ("square", "purple"), ("triangle", "red"), ("diamond", "orange")}
)

_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_WORD_COUNTS = {**{word: n for n, word in _COUNT_WORDS.items()}, "a": 1, "an": 1}
_POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_PHRASE_POSITIONS = {phrase: position for position, phrase in _POSITION_PHRASES.items()}

# Half-width of the central square (normalized coordinates) that counts as "center".
CENTER_HALF_WIDTH = 0.25

# Descriptive boxes (x0, y0, x1, y1) in [0, 1] for each region, used as `EditInstruction.region` for adds.
REGION_BOXES: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.1, 0.3, 0.9),
    "right": (0.7, 0.1, 1.0, 0.9),
    "top": (0.1, 0.0, 0.9, 0.3),
    "bottom": (0.1, 0.7, 0.9, 1.0),
    "center": (0.25, 0.25, 0.75, 0.75),
}

# Canonical object centers for the "left" region by count; the other regions are mirrors/transposes of it.
_LEFT_SLOTS = {
    1: ((0.17, 0.5),),
    2: ((0.15, 0.32), (0.15, 0.68)),
    3: ((0.13, 0.22), (0.13, 0.5), (0.13, 0.78)),
}
_CENTER_SLOTS = {
    1: ((0.5, 0.5),),
    2: ((0.35, 0.5), (0.65, 0.5)),
    3: ((0.36, 0.36), (0.64, 0.36), (0.5, 0.64)),
}
_OBJECT_SIZES = {1: 0.3, 2: 0.25, 3: 0.22}


@dataclass(frozen=True)
class Scene:
    """The structured attributes of a prompt: `count` objects of one `shape` and `color` at `position`."""

    shape: str
    color: str
    count: int
    position: str
    background: str

    def __post_init__(self):
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, tuple(PALETTE)),
            ("count", self.count, COUNTS),
            ("position", self.position, POSITIONS),
            ("background", self.background, tuple(BACKGROUNDS)),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {list(allowed)}")

    @property
    def noun(self) -> str:
        """The shape noun, plural when the count is more than one ("circles")."""
        return self.shape + ("s" if self.count > 1 else "")


def prompt_text(scene: Scene) -> str:
    """The canonical prompt of a scene, e.g. "two red circles on the left, on a white background"."""
    return (
        f"{_COUNT_WORDS[scene.count]} {scene.color} {scene.noun} {_POSITION_PHRASES[scene.position]}, "
        f"on a {scene.background} background"
    )


def _lookup(kind: str, word: str, table: dict, text: str):
    if word not in table:
        raise ValueError(f"cannot parse {kind} {word!r} in prompt {text!r}; expected one of {sorted(table)}")
    return table[word]


def parse_prompt(text: str) -> Scene:
    """The scene of a prompt (the exact inverse of `prompt_text`; case and extra spaces are ignored).

    Raises:
        ValueError: naming the part of the prompt that does not follow the grammar.
    """
    normalized = " ".join(str(text).lower().split())
    objects, sep, background_part = normalized.rpartition(", on a ")
    if not sep:
        raise ValueError(f"cannot parse prompt {text!r}: missing ', on a <background> background'")
    background_words = background_part.split()
    if len(background_words) != 2 or background_words[1] != "background":
        raise ValueError(f"cannot parse background part {background_part!r} in prompt {text!r}")
    background = _lookup("background", background_words[0], {b: b for b in BACKGROUNDS}, text)
    words = objects.split()
    if len(words) < 4:
        raise ValueError(
            f"cannot parse object part {objects!r} in prompt {text!r}: expected '<count> <color> <shape> <position>'"
        )
    count = _lookup("count", words[0], _WORD_COUNTS, text)
    color = _lookup("color", words[1], {c: c for c in PALETTE}, text)
    noun = words[2]
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    _lookup("shape", shape, {s: s for s in SHAPES}, text)
    if (count > 1) != noun.endswith("s"):
        raise ValueError(
            f"cannot parse shape {noun!r} in prompt {text!r}: its number does not agree with count {count}"
        )
    position = _lookup("position", " ".join(words[3:]), _PHRASE_POSITIONS, text)
    return Scene(shape=shape, color=color, count=count, position=position, background=background)


def split_of(scene: Scene) -> Literal["train", "held_out", "final"]:
    """ "held_out" iff the scene's (shape, color) pair is in `HELD_OUT_PAIRS`, "final" iff in `FINAL_PAIRS`, else
    "train"."""
    pair = (scene.shape, scene.color)
    return "held_out" if pair in HELD_OUT_PAIRS else "final" if pair in FINAL_PAIRS else "train"


SPLITS: tuple[str, ...] = ("train", "held_out", "dev", "dev2", "final", "dev_a", "dev_b", "dev2_a", "dev2_b")
# Sizes of every split, for validating prompt counts without building the scenes. "dev_a" etc.: the scenes of dev
# (dev2) whose pair is in `HELD_OUT_HALVES["a"]` ("b").
SPLIT_SIZES: dict[str, int] = {"train": 720, "held_out": 180, "dev": 60, "dev2": 120, "final": 180, "dev_a": 36,
                               "dev_b": 24, "dev2_a": 54, "dev2_b": 66}  # fmt: skip
_DEV_SHUFFLE_SEED = 20260  # fixed: the dev/dev2 partition of the held-out scenes never moves


def unseen_pair_splits(split: str) -> tuple[str, str]:
    """The dev and dev2 splits whose (shape, color) pairs a model trained on `split` never saw: ("dev_b", "dev2_b")
    for "dev2_a" (and the reverse), ("dev", "dev2") for "train". Other splits share their pairs with dev or dev2
    ("dev2" holds dev's pairs), so there is no such split and a `ValueError` says so."""
    other = {"dev2_a": ("dev_b", "dev2_b"), "dev2_b": ("dev_a", "dev2_a"), "train": ("dev", "dev2")}
    if split not in other:
        raise ValueError(f"no dev split holds only pairs unseen by {split!r}; choose among {list(other)}")
    return other[split]


def all_scenes(split: str | None = None) -> list[Scene]:
    """Every scene of the world in a fixed order, optionally only those of one split.

    Splits: "train" (720 scenes), "held_out" (180) and its disjoint parts "dev" (60) and "dev2" (120), and
    "final" (180); "dev_a" / "dev_b" / "dev2_a" / "dev2_b" are the dev / dev2 scenes of each half of the held-out
    pairs (`HELD_OUT_HALVES`).
    """
    if split == "test":
        raise ValueError('split "test" was renamed "dev2" (a second dev set); results are reported on "final"')
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    scenes = [
        Scene(shape, color, count, position, background)
        for shape, color, count, position, background in itertools.product(
            SHAPES, PALETTE, COUNTS, POSITIONS, BACKGROUNDS
        )
    ]
    if split in ("dev_a", "dev_b", "dev2_a", "dev2_b"):
        part, half = split.split("_")
        return [s for s in all_scenes(part) if (s.shape, s.color) in HELD_OUT_HALVES[half]]
    if split in ("dev", "dev2"):
        held_out = [s for s in scenes if split_of(s) == "held_out"]
        order = list(range(len(held_out)))
        random.Random(_DEV_SHUFFLE_SEED).shuffle(order)
        dev = set(order[: len(held_out) // 3])
        return [s for i, s in enumerate(held_out) if (i in dev) == (split == "dev")]
    return [s for s in scenes if split is None or split_of(s) == split]


def prompts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """`n` prompts of a split, deterministic for a seed.

    Distinct while `n` does not exceed the split's size (`SPLIT_SIZES`: 720 train, 180 held-out = 60 dev + 120
    dev2, 180 final);
    beyond that the split is cycled through in fresh shuffles.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    pool = [prompt_text(s) for s in all_scenes(split)]
    if n and not pool:  # cycling an empty split would never end
        raise ValueError(f"split {split!r} holds no scenes; cannot draw {n} prompts from it")
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def position_of(x: float, y: float) -> str:
    """The region of a point in normalized coordinates (x right, y down).

    The central square `max(|x - .5|, |y - .5|) < CENTER_HALF_WIDTH` is "center"; the rest is split by the
    diagonals into left / right / top / bottom by whichever offset from the middle dominates.
    """
    dx, dy = x - 0.5, y - 0.5
    if max(abs(dx), abs(dy)) < CENTER_HALF_WIDTH:
        return "center"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def region_margin(x: float, y: float, position: str) -> float:
    """How far a point lies inside `position`'s region (normalized units; negative outside it).

    Positive exactly where `position_of(x, y) == position` (up to the boundaries): the distance to the nearest edge
    of the central square for "center"; for a side region, the smaller of how far the point is outside the central
    square and how far its offset toward that side exceeds the other axis' offset (the diagonals).
    """
    dx, dy = x - 0.5, y - 0.5
    outside_center = max(abs(dx), abs(dy)) - CENTER_HALF_WIDTH
    toward = {"left": -dx - abs(dy), "right": dx - abs(dy), "top": -dy - abs(dx), "bottom": dy - abs(dx)}
    if position == "center":
        return -outside_center
    if position not in toward:
        raise ValueError(f"unknown position {position!r}; expected one of {list(POSITIONS)}")
    return min(outside_center, toward[position])


def slot_centers(position: str, count: int) -> tuple[tuple[float, float], ...]:
    """The canonical normalized centers of `count` objects in a region (where the renderer puts them)."""
    if position == "center":
        return _CENTER_SLOTS[count]
    left = _LEFT_SLOTS[count]
    if position == "left":
        return left
    if position == "right":
        return tuple((1.0 - x, y) for x, y in left)
    if position == "top":
        return tuple((y, x) for x, y in left)
    if position == "bottom":
        return tuple((y, 1.0 - x) for x, y in left)
    raise ValueError(f"unknown position {position!r}; expected one of {list(POSITIONS)}")


def object_size(count: int) -> float:
    """The side of an object's bounding box as a fraction of the image side (smaller when there are more)."""
    return _OBJECT_SIZES[count]
