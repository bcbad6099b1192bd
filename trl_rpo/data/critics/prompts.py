"""The critics' shared part: prompt templates, the reply parser, and the accounting (`CriticStats`)."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from ..schema import Critique, EditInstruction, InvalidCritiqueError

logger = logging.getLogger("trl_rpo.data.critics")


_INSTRUCTION_SCHEMA = """\
Each instruction is an object with these fields:
- "instruction": the edit in plain words, e.g. "recolor the circle on the left to red";
- "kind": one of "recolor", "move", "remove", "add", "background", "style";
- "target": the object the edit applies to, e.g. "circle";
- "region": the box [x0, y0, x1, y1] the edit touches, in image coordinates from 0 to 1 \
(x0 < x1, y0 < y1, origin top-left);
- "params": an object of arguments, e.g. {"color": "red"} or {"to": "left"}."""

CRITIC_PROMPT = (
    """\
You are an expert critic of text-to-image generations. The image was generated for the prompt:

"{prompt}"

Examine the image carefully and write a detailed critique of every way it fails the prompt: missing or extra \
objects, wrong counts, colors, shapes, positions, attributes, text, background or style. Then write the editing \
instructions that would make the image match the prompt exactly, one edit per instruction.

"""
    + _INSTRUCTION_SCHEMA
    + """

Reply with a single JSON object and nothing else:
{"critique": "<your detailed critique>", "instructions": [{"instruction": "...", "kind": "...", "target": "...", \
"region": [x0, y0, x1, y1], "params": {}}]}
If the image already matches the prompt, say so in the critique and give an empty list: "instructions": []."""
)
"""The default critic prompt; `{prompt}` is replaced by the generation prompt (no other braces are interpreted)."""

CRITIQUE_ONLY_PROMPT = """\
You are an expert critic of text-to-image generations. The image was generated for the prompt:

"{prompt}"

Examine the image carefully and write a detailed critique of every way it fails the prompt: missing or extra \
objects, wrong counts, colors, shapes, positions (say where in the image), attributes, text, background or style. \
If the image matches the prompt, say so. Reply with the critique only, in plain text."""
"""Stage one of two-stage mode: the VLM writes the critique only (`{prompt}` is replaced)."""

INSTRUCTIONS_PROMPT = (
    """\
An image was generated for the prompt:

"{prompt}"

A critic examined the image and wrote:

"{critique}"

Turn the critique into executable editing instructions that would make the image match the prompt, one edit per \
instruction.

"""
    + _INSTRUCTION_SCHEMA
    + """

Reply with a single JSON object and nothing else:
{"instructions": [{"instruction": "...", "kind": "...", "target": "...", "region": [x0, y0, x1, y1], "params": {}}]}
If the critique finds nothing to fix, reply {"instructions": []}."""
)
"""Stage two of two-stage mode: a text model turns the critique into instructions (`{prompt}`, `{critique}`)."""

_RETRY_FEEDBACK = (
    "\n\nYour previous reply could not be used: {reason}. Reply again with only the JSON object described above."
)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_SNIPPET = 200


def _snippet(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= _SNIPPET else text[:_SNIPPET] + "...")


def _json_values(text: str) -> list[Any]:
    """Every top-level JSON object or array in `text`, fenced blocks first, then in reading order.

    Models wrap their JSON in ```json fences or in prose ("Here is my critique: {...} Hope this helps"); scanning
    for decodable values at each `{` / `[` finds it either way without a brittle regex over nested braces.
    """
    decoder = json.JSONDecoder()
    sources = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    values: list[Any] = []
    for source in sources:
        i = 0
        while i < len(source):
            if source[i] in "{[":
                try:
                    value, end = decoder.raw_decode(source, i)
                except json.JSONDecodeError:
                    i += 1
                    continue
                values.append(value)
                i = end
            else:
                i += 1
    return values


def parse_critique(text: str) -> Critique:
    """The `Critique` in a model's reply: a JSON object `{"critique": str, "instructions": [...]}`.

    The object may be wrapped in prose or in a ```json fence; the first object with a `"critique"` field wins.
    Validation is `Critique.coerce`'s (regions in [0, 1], known fields only, ...).

    Raises:
        InvalidCritiqueError: the reply holds no JSON object, none with a "critique" field, or one that does not
            follow the schema; the message says which, and quotes the start of the reply.
    """
    if not isinstance(text, str):
        raise InvalidCritiqueError(f"expected the model's reply as a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidCritiqueError("the reply is empty; expected a JSON object with 'critique' and 'instructions'")
    objects = [v for v in _json_values(text) if isinstance(v, dict)]
    if not objects:
        raise InvalidCritiqueError(
            f'no JSON object found in the reply; expected {{"critique": ..., "instructions": [...]}}, '
            f"got {_snippet(text)}"
        )
    candidates = [o for o in objects if "critique" in o] or objects
    try:
        return Critique.coerce(candidates[0])
    except InvalidCritiqueError as error:
        raise InvalidCritiqueError(f"{error} (in the reply {_snippet(text)})") from None
    except TypeError as error:  # e.g. a number where the schema wants a list: the dataclass fails before validating
        raise InvalidCritiqueError(
            f"the critique does not follow the schema: {error} (in the reply {_snippet(text)})"
        ) from None


def parse_instructions(text: str) -> list[EditInstruction]:
    """The instructions in a reply to `INSTRUCTIONS_PROMPT`: `{"instructions": [...]}` or a bare JSON list.

    Raises:
        InvalidCritiqueError: no such object or list in the reply, or an instruction that does not follow the schema.
    """
    if not isinstance(text, str):
        raise InvalidCritiqueError(f"expected the model's reply as a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidCritiqueError("the reply is empty; expected a JSON object with an 'instructions' list")
    for value in _json_values(text):
        if isinstance(value, dict) and "instructions" in value:
            value = value["instructions"]
            if value is None:
                return []
            if not isinstance(value, list):
                raise InvalidCritiqueError(
                    f"'instructions' must be a list, got {type(value).__name__} (in the reply {_snippet(text)})"
                )
        if isinstance(value, list):
            try:
                return [EditInstruction.coerce(item) for item in value]
            except InvalidCritiqueError as error:
                raise InvalidCritiqueError(f"{error} (in the reply {_snippet(text)})") from None
            except TypeError as error:
                raise InvalidCritiqueError(
                    f"the instructions do not follow the schema: {error} (in the reply {_snippet(text)})"
                ) from None
    raise InvalidCritiqueError(f"no JSON object with an 'instructions' list found in the reply; got {_snippet(text)}")


def _parse_critique_text(text: str) -> str:
    """Stage one's reply, the critique in plain text; a reply with nothing in it is refused."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidCritiqueError("the critique is empty; expected a plain-text critique of the image")
    return text.strip()


def _fill(template: str, **values: str) -> str:
    """`template` with each `{name}` replaced; other braces (the JSON examples) are left as they are."""
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


@dataclass
class CriticStats:
    """What a critic did, cumulated over its calls (reset with `reset()`).

    Attributes:
        calls: number of `critic(images, prompts)` calls.
        images: number of images critiqued (or attempted).
        retries: model replies that did not follow the schema and were asked again.
        failures: images given up on after `max_retries` (returned as `None`).
        request_retries: HTTP requests repeated after a connection error, timeout, 429 or 5xx (API critics only).
    """

    calls: int = 0
    images: int = 0
    retries: int = 0
    failures: int = 0
    request_retries: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        """Increment counters atomically (critics may count from worker threads)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def reset(self) -> None:
        with self._lock:
            self.calls = self.images = self.retries = self.failures = self.request_retries = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _check_inputs(images: Sequence[Image.Image], prompts: Sequence[str]) -> None:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, one per image, not a single string")
    if len(images) != len(prompts):
        raise ValueError(f"expected one prompt per image, got {len(images)} images and {len(prompts)} prompts")
