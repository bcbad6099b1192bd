"""Vision-language critics: a VLM critiques a generated image and writes executable editing instructions.

RPO (arXiv 2503.11720) builds preference pairs by asking a critic what is wrong with an image and how to fix it;
an editor applies the fix, and the edited image becomes *chosen*, the original *rejected*. A critic follows the
protocol::

    critic(images: list[PIL.Image], prompts: list[str]) -> list[Critique | None]   # one per image

`None` means the critic could not critique that image (its model kept replying with output that does not follow
the schema, or the server kept failing): the pipeline skips the image and counts it, and the run goes on.

Two critics are provided, sharing one prompt template (`CRITIC_PROMPT`) and one parser (`parse_critique`):

- `TransformersCritic` runs any transformers image-text-to-text model (Qwen2.5-VL, LLaVA, Idefics3, SmolVLM, ...)
  in process, with batched greedy generation through the processor's chat template;
- `OpenAICompatibleCritic` calls a VLM served behind an OpenAI-compatible `/chat/completions` endpoint (vLLM, TGI,
  Ollama), with bounded concurrency and retries with exponential backoff.

Both retry malformed replies (telling the model what was wrong), optionally split the work in two stages (the VLM
writes the critique, a text model turns it into instructions), and count what happened in `critic.stats`.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from .schema import Critique, EditInstruction, InvalidCritiqueError

__all__ = [
    "CRITIC_PROMPT",
    "CRITIQUE_ONLY_PROMPT",
    "INSTRUCTIONS_PROMPT",
    "CriticRequestError",
    "CriticStats",
    "OpenAICompatibleCritic",
    "TransformersCritic",
    "parse_critique",
    "parse_instructions",
]

logger = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Accounting
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Transformers
# ----------------------------------------------------------------------------------------------------------------


def _processor_kwargs_supported(processor: Any) -> bool:
    """Whether `apply_chat_template` takes `processor_kwargs` (transformers >= 5) or the kwargs directly (4.x)."""
    try:
        return "processor_kwargs" in inspect.signature(processor.apply_chat_template).parameters
    except (TypeError, ValueError):
        return False


class _TransformersGenerator:
    """Batched greedy generation with a transformers model and its processor or tokenizer's chat template.

    Works for image-text-to-text models with a processor (messages with an image part) and for causal LMs with a
    tokenizer (text-only messages); left padding so every row's new tokens start at the same column.
    """

    def __init__(self, model: Any, processor: Any, max_new_tokens: int, generation_kwargs: dict[str, Any]):
        self.model = model
        self.processor = processor
        self.generation_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, **generation_kwargs}

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def _encode(self, conversations: list[list[dict[str, Any]]]) -> Any:
        call = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
        if _processor_kwargs_supported(self.processor):
            options = {"padding": True, "padding_side": "left"}
            return self.processor.apply_chat_template(conversations, **call, processor_kwargs=options)
        # Tokenizers (and transformers 4.x processors) pad on the tokenizer's side: set it for this call only.
        tokenizer = self.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            return self.processor.apply_chat_template(conversations, **call, padding=True)
        finally:
            tokenizer.padding_side = side

    def __call__(self, conversations: list[list[dict[str, Any]]]) -> list[str]:
        import torch

        tokenizer = self.tokenizer
        if tokenizer.pad_token_id is None:  # many causal LMs ship without one; eos is the usual stand-in
            tokenizer.pad_token = tokenizer.eos_token
        inputs = self._encode(conversations)
        inputs = {k: v.to(self.model.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        kwargs = dict(self.generation_kwargs)
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **kwargs)
        # Decoder-only models return prompt + reply; encoder-decoder models return the reply alone.
        encoder_decoder = getattr(getattr(self.model, "config", None), "is_encoder_decoder", False)
        new_tokens = output if encoder_decoder else output[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _image_message(image: Image.Image, text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def _text_message(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


def _text_only_message(text: str) -> list[dict[str, Any]]:
    """A text-only turn as a plain string, the form every tokenizer chat template (causal LMs) understands."""
    return [{"role": "user", "content": text}]


TextModel = Callable[[str], str]


class TransformersCritic:
    """A critic on any transformers image-text-to-text model (Qwen2.5-VL, LLaVA, Idefics3, SmolVLM, ...).

    Images are critiqued in batches of `batch_size` with greedy generation through the processor's chat template
    (one user turn: the image, then `prompt_template` filled with the generation prompt). A reply that does not
    parse is asked again, up to `max_retries` times, with the parse error appended to the prompt (greedy decoding
    would repeat itself otherwise); after that the image's critique is `None` and `stats.failures` counts it, so a
    stubborn image never stops a dataset build.

    Args:
        model: a model id or local path (loaded with `AutoModelForImageTextToText`, with `model_kwargs`), or a loaded
            model.
        processor: its processor (`AutoProcessor` id, path or object); defaults to `model` when that is an id.
        max_new_tokens: generation budget per reply (the JSON with a detailed critique needs a few hundred tokens).
        batch_size: images per `generate` call.
        max_retries: extra attempts for an image whose reply does not follow the schema.
        two_stage: first ask for the critique text only (`critique_prompt_template`), then have `instruction_model`
            turn it into JSON instructions (`instructions_prompt_template`). Small VLMs often write better
            critiques than JSON; a text model does the formatting.
        instruction_model: stage two's model: `None` (the VLM itself, text only), a callable `text -> text`, a causal
            LM id or path (loaded with `AutoModelForCausalLM` and `AutoTokenizer`), or a loaded causal LM with
            `instruction_tokenizer`.
        instruction_tokenizer: the tokenizer of a loaded `instruction_model`.
        prompt_template: the single-stage prompt, with a `{prompt}` placeholder; defaults to `CRITIC_PROMPT`.
        critique_prompt_template: stage one's prompt (`{prompt}`); defaults to `CRITIQUE_ONLY_PROMPT`.
        instructions_prompt_template: stage two's prompt (`{prompt}`, `{critique}`); defaults to `INSTRUCTIONS_PROMPT`.
        generation_kwargs: extra `generate` arguments (e.g. `{"do_sample": True, "temperature": 0.7}`).
        model_kwargs: `from_pretrained` arguments when models are loaded by id (e.g. `{"torch_dtype": "auto"}`).
    """

    name = "transformers_critic"

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        max_new_tokens: int = 512,
        batch_size: int = 4,
        max_retries: int = 2,
        two_stage: bool = False,
        instruction_model: Any = None,
        instruction_tokenizer: Any = None,
        prompt_template: str = CRITIC_PROMPT,
        critique_prompt_template: str = CRITIQUE_ONLY_PROMPT,
        instructions_prompt_template: str = INSTRUCTIONS_PROMPT,
        generation_kwargs: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        model_kwargs = model_kwargs or {}
        if isinstance(model, (str, os.PathLike)):
            from transformers import AutoModelForImageTextToText

            processor = processor if processor is not None else model
            model = AutoModelForImageTextToText.from_pretrained(model, **model_kwargs).eval()
        if processor is None:
            raise ValueError("a loaded model needs its processor: pass processor= (an AutoProcessor id, path, object)")
        if isinstance(processor, (str, os.PathLike)):
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(processor)
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.two_stage = two_stage
        self.prompt_template = prompt_template
        self.critique_prompt_template = critique_prompt_template
        self.instructions_prompt_template = instructions_prompt_template
        self.stats = CriticStats()
        self._generate = _TransformersGenerator(model, processor, max_new_tokens, generation_kwargs or {})
        self._instruction_model = self._text_generator(
            instruction_model, instruction_tokenizer, max_new_tokens, model_kwargs
        )

    def _text_generator(
        self, instruction_model: Any, tokenizer: Any, max_new_tokens: int, model_kwargs: dict[str, Any]
    ) -> Callable[[list[str]], list[str]]:
        """Stage two as a batched `list[str] -> list[str]`, whatever form `instruction_model` was given in."""
        if instruction_model is None:
            return lambda texts: self._generate([_text_message(t) for t in texts])
        if isinstance(instruction_model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(instruction_model)
            instruction_model = AutoModelForCausalLM.from_pretrained(instruction_model, **model_kwargs).eval()
        if hasattr(instruction_model, "generate"):
            if tokenizer is None:
                raise ValueError("a loaded instruction_model needs its tokenizer: pass instruction_tokenizer=")
            generator = _TransformersGenerator(instruction_model, tokenizer, max_new_tokens, {})
            return lambda texts: generator([_text_only_message(t) for t in texts])
        if callable(instruction_model):
            return lambda texts: [instruction_model(t) for t in texts]
        raise TypeError(
            "instruction_model must be None, a callable text -> text, a causal LM id or path, or a loaded causal LM; "
            f"got {type(instruction_model).__name__}"
        )

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Critique | None]:
        """One `Critique` per image, or `None` where the model never produced a valid one."""
        _check_inputs(images, prompts)
        self.stats.add(calls=1, images=len(images))
        results: list[Critique | None] = []
        for start in range(0, len(images), self.batch_size):
            batch_images = [image.convert("RGB") for image in images[start : start + self.batch_size]]
            batch_prompts = list(prompts[start : start + self.batch_size])
            if self.two_stage:
                results.extend(self._two_stage(batch_images, batch_prompts))
            else:
                template = self.prompt_template
                texts = [_fill(template, prompt=p) for p in batch_prompts]
                results.extend(
                    self._with_retries(
                        texts,
                        lambda ts, idx, ims=batch_images: self._generate(
                            [_image_message(ims[i], t) for i, t in zip(idx, ts)]
                        ),
                        parse_critique,
                    )
                )
        return results

    def _two_stage(self, images: list[Image.Image], prompts: list[str]) -> list[Critique | None]:
        texts = [_fill(self.critique_prompt_template, prompt=p) for p in prompts]
        critiques = self._with_retries(
            texts,
            lambda ts, idx: self._generate([_image_message(images[i], t) for i, t in zip(idx, ts)]),
            _parse_critique_text,
        )
        todo = [i for i, c in enumerate(critiques) if c is not None]
        results: list[Critique | None] = [None] * len(images)
        if not todo:
            return results
        stage_two = [_fill(self.instructions_prompt_template, prompt=prompts[i], critique=critiques[i]) for i in todo]
        instructions = self._with_retries(stage_two, lambda ts, idx: self._instruction_model(ts), parse_instructions)
        for i, found in zip(todo, instructions):
            if found is not None:
                results[i] = Critique(critique=critiques[i], instructions=found)
        return results

    def _with_retries(
        self,
        texts: list[str],
        generate: Callable[[list[str], list[int]], list[str]],
        parse: Callable[[str], Any],
    ) -> list[Any]:
        """Generate for every text, parse, and re-ask the ones that failed with the error appended, in batches.

        `generate(texts, indices)` receives the texts to (re)generate and their positions in the batch.
        """
        results: list[Any] = [None] * len(texts)
        pending = list(range(len(texts)))
        prompts = list(texts)
        for attempt in range(self.max_retries + 1):
            replies = generate([prompts[i] for i in pending], pending)
            failed: list[int] = []
            for i, reply in zip(pending, replies):
                try:
                    results[i] = parse(reply)
                except InvalidCritiqueError as error:
                    failed.append(i)
                    prompts[i] = texts[i] + _fill(_RETRY_FEEDBACK, reason=str(error))
                    logger.debug("critic reply %d (attempt %d) did not parse: %s", i, attempt + 1, error)
            pending = failed
            if not pending:
                break
            if attempt < self.max_retries:
                self.stats.add(retries=len(pending))
        if pending:
            self.stats.add(failures=len(pending))
            logger.warning(
                "%s gave up on %d image(s) after %d attempt(s): the replies did not follow the critique schema",
                self.name,
                len(pending),
                self.max_retries + 1,
            )
        return results


# ----------------------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP API
# ----------------------------------------------------------------------------------------------------------------


class CriticRequestError(RuntimeError):
    """The chat-completions server refused a request in a way retrying cannot fix (e.g. 401, 404 unknown model)."""


class _TransientRequestError(Exception):
    """A request that failed in a way worth retrying (connection error, timeout, 429, 5xx)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _image_data_url(image: Image.Image) -> str:
    """The image as a `data:image/png;base64,...` URL, the form OpenAI-compatible servers accept inline."""
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _message_text(payload: Any) -> str:
    """The text of the first choice of a chat-completions response; content may be a string or a list of parts."""
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise InvalidCritiqueError(
            f"the server's response has no choices[0].message.content; got {_snippet(json.dumps(payload)[:500])}"
        ) from None
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class OpenAICompatibleCritic:
    """A critic on a VLM behind an OpenAI-compatible chat-completions API (vLLM, TGI, Ollama, hosted APIs).

    Each image is one `POST {base_url}/chat/completions` whose user message holds the image inline as a base64 PNG
    data URL and the filled prompt template. Up to `max_concurrency` requests are in flight at once (a thread pool),
    so a server that batches (vLLM, TGI) stays busy without being flooded.

    Failures are handled in two layers:

    - transport: connection errors, timeouts, 429 and 5xx are retried `max_retries` times with exponential backoff
      (`backoff * 2**attempt` seconds, or the server's `Retry-After` when larger); an image still failing after that
      is `None` and counted in `stats.failures`. Other 4xx (bad key, unknown model) raise `CriticRequestError` at once,
      since every image would fail the same way;
    - content: a reply that does not follow the schema is asked again up to `max_parse_retries` times with the parse
      error appended to the prompt, then `None` and counted.

    The API key is read from `api_key` or the environment variable `api_key_env`; it is sent only in the
    Authorization header and never logged, stored in `repr`, or included in an exception message.

    Args:
        base_url: the API root, e.g. `"http://localhost:8000/v1"` (vLLM) or `"http://localhost:11434/v1"` (Ollama).
        model: the served model name, e.g. `"Qwen/Qwen2.5-VL-7B-Instruct"`.
        api_key: the key, if not in the environment (local servers usually need none).
        api_key_env: the environment variable the key is read from when `api_key` is not given.
        max_concurrency: requests in flight at once.
        timeout: seconds to wait for each response.
        max_retries: extra attempts for a request that failed transiently.
        backoff: the first retry's delay in seconds, doubled at each further retry.
        temperature: sampling temperature (0 for reproducible critiques).
        max_tokens: generation budget per reply.
        max_parse_retries: extra attempts for an image whose reply does not follow the schema.
        two_stage: first ask for the critique text only, then turn it into instructions with `instruction_model`.
        instruction_model: stage two's model: `None` (the same served model, text only), another model name on the
            same server, or a callable `text -> text`.
        prompt_template / critique_prompt_template / instructions_prompt_template: as in `TransformersCritic`.
        extra_body: extra fields merged into every request body (e.g. `{"top_p": 1.0}`).
    """

    name = "openai_compatible_critic"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_concurrency: int = 4,
        timeout: float = 60,
        max_retries: int = 3,
        backoff: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        max_parse_retries: int = 2,
        two_stage: bool = False,
        instruction_model: str | TextModel | None = None,
        prompt_template: str = CRITIC_PROMPT,
        critique_prompt_template: str = CRITIQUE_ONLY_PROMPT,
        instructions_prompt_template: str = INSTRUCTIONS_PROMPT,
        extra_body: dict[str, Any] | None = None,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_retries < 0 or max_parse_retries < 0:
            raise ValueError(f"retry counts must be 0 or more, got {max_retries} and {max_parse_retries}")
        if not (instruction_model is None or isinstance(instruction_model, str) or callable(instruction_model)):
            raise TypeError(
                "instruction_model must be None, a model name on the same server or a callable text -> text; "
                f"got {type(instruction_model).__name__}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_parse_retries = max_parse_retries
        self.two_stage = two_stage
        self.instruction_model = instruction_model
        self.prompt_template = prompt_template
        self.critique_prompt_template = critique_prompt_template
        self.instructions_prompt_template = instructions_prompt_template
        self.extra_body = dict(extra_body or {})
        self.stats = CriticStats()
        self._api_key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        self._local = threading.local()

    def __repr__(self) -> str:
        has_key = "set" if self._api_key else "none"
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key=<{has_key}>)"

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _redact(self, message: str) -> str:
        """`message` with the API key blanked out, for anything that may end up in a log or a traceback."""
        return message.replace(self._api_key, "***") if self._api_key else message

    def _session(self) -> Any:
        import requests

        session = getattr(self._local, "session", None)
        if session is None:  # requests sessions are not thread-safe: one per worker thread
            session = self._local.session = requests.Session()
        return session

    def _post(self, body: dict[str, Any]) -> Any:
        """One chat-completions request; raises `_TransientRequestError` or `CriticRequestError` on failure."""
        import requests

        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        try:
            response = self._session().post(url, json=body, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise _TransientRequestError(f"no response from {url} within {self.timeout} s") from None
        except requests.ConnectionError as error:
            raise _TransientRequestError(self._redact(f"could not connect to {url}: {type(error).__name__}")) from None
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = response.headers.get("Retry-After")
            try:
                delay = float(retry_after) if retry_after is not None else None
            except ValueError:
                delay = None
            raise _TransientRequestError(f"{url} answered HTTP {response.status_code}", retry_after=delay)
        if response.status_code >= 400:
            detail = self._redact(response.text[:500])
            raise CriticRequestError(
                f"{url} refused the request with HTTP {response.status_code}: {detail!r} "
                "(check base_url, model and the API key; retrying would not help)"
            )
        try:
            return response.json()
        except ValueError:
            raise InvalidCritiqueError(
                f"the server's response is not JSON: {_snippet(self._redact(response.text))}"
            ) from None

    def _complete(self, content: list[dict[str, Any]], model: str) -> str | None:
        """The reply to one user turn, retrying transient failures with backoff; `None` when they persist."""
        body = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.extra_body,
        }
        for attempt in range(self.max_retries + 1):
            try:
                return _message_text(self._post(body))
            except _TransientRequestError as error:
                if attempt == self.max_retries:
                    logger.warning("%s: giving up after %d attempt(s): %s", self.name, attempt + 1, error)
                    return None
                delay = self.backoff * 2**attempt
                if error.retry_after is not None:
                    delay = max(delay, min(error.retry_after, 60.0))
                logger.info("%s: %s; retrying in %.2f s", self.name, error, delay)
                self.stats.add(request_retries=1)
                time.sleep(delay)
        return None  # unreachable; keeps type checkers content

    # -- critique ----------------------------------------------------------------------------------------------

    def _ask(self, text: str, parse: Callable[[str], Any], image_url: str | None, model: str) -> Any:
        """Ask until the reply parses (at most `max_parse_retries` extra times); `None` when it never does."""
        prompt = text
        for attempt in range(self.max_parse_retries + 1):
            content: list[dict[str, Any]] = []
            if image_url is not None:
                content.append({"type": "image_url", "image_url": {"url": image_url}})
            content.append({"type": "text", "text": prompt})
            try:
                reply = self._complete(content, model)
            except InvalidCritiqueError as error:  # a 2xx that is not a chat completion: treat as a bad reply
                reply, failure = None, error
            else:
                if reply is None:  # transport failed for good: retrying the content would not help
                    return None
                try:
                    return parse(reply)
                except InvalidCritiqueError as error:
                    failure = error
            logger.debug("%s: reply did not parse (attempt %d): %s", self.name, attempt + 1, failure)
            if attempt < self.max_parse_retries:
                self.stats.add(retries=1)
                prompt = text + _fill(_RETRY_FEEDBACK, reason=str(failure))
        return None

    def _instructions(self, text: str) -> list[EditInstruction] | None:
        """Stage two: the instructions for a critique, from `instruction_model` (or the served model)."""
        if callable(self.instruction_model):
            prompt = text
            for attempt in range(self.max_parse_retries + 1):
                try:
                    return parse_instructions(self.instruction_model(prompt))
                except InvalidCritiqueError as error:
                    logger.debug("%s: instructions did not parse (attempt %d): %s", self.name, attempt + 1, error)
                    if attempt < self.max_parse_retries:
                        self.stats.add(retries=1)
                        prompt = text + _fill(_RETRY_FEEDBACK, reason=str(error))
            return None
        return self._ask(text, parse_instructions, None, self.instruction_model or self.model)

    def critique(self, image: Image.Image, prompt: str) -> Critique | None:
        """The critique of one image, or `None` (counted in `stats.failures`) when none could be obtained."""
        image_url = _image_data_url(image)
        if not self.two_stage:
            result = self._ask(_fill(self.prompt_template, prompt=prompt), parse_critique, image_url, self.model)
        else:
            result = None
            text = self._ask(
                _fill(self.critique_prompt_template, prompt=prompt), _parse_critique_text, image_url, self.model
            )
            if text is not None:
                found = self._instructions(_fill(self.instructions_prompt_template, prompt=prompt, critique=text))
                if found is not None:
                    result = Critique(critique=text, instructions=found)
        if result is None:
            self.stats.add(failures=1)
            logger.warning("%s: no valid critique for prompt %r", self.name, prompt[:80])
        return result

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[Critique | None]:
        """One `Critique` per image, in order, or `None` where none could be obtained."""
        _check_inputs(images, prompts)
        self.stats.add(calls=1, images=len(images))
        if not images:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(images))) as pool:
            return list(pool.map(self.critique, images, prompts))
