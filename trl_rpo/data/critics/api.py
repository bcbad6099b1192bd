"""`OpenAICompatibleCritic`: a VLM behind an OpenAI-compatible chat-completions endpoint."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ..protocols import TextModel
from ..schema import Critique, EditInstruction, InvalidCritiqueError
from .prompts import (
    _RETRY_FEEDBACK,
    CRITIC_PROMPT,
    CRITIQUE_ONLY_PROMPT,
    INSTRUCTIONS_PROMPT,
    CriticStats,
    _check_inputs,
    _fill,
    _parse_critique_text,
    _snippet,
    parse_critique,
    parse_instructions,
)

logger = logging.getLogger("trl_rpo.data.critics")


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

    Requests go through the official `openai` client (`pip install 'trl-rpo[openai]'`). Each image is one
    `POST {base_url}/chat/completions` whose user message holds the image inline as a base64 PNG
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
        http_client: a client of the `openai` package's HTTP library (`httpx2.Client` for openai 3) for proxies,
            certificates, or a mock transport in tests.
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
        http_client: Any = None,
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
        self.http_client = http_client
        self._openai: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        has_key = "set" if self._api_key else "none"
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key=<{has_key}>)"

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _redact(self, message: str) -> str:
        """`message` with the API key blanked out, for anything that may end up in a log or a traceback."""
        return message.replace(self._api_key, "***") if self._api_key else message

    def _client(self) -> Any:
        """The `openai.OpenAI` client, made on first use and shared by the worker threads (it is thread-safe).

        Its own retries are off (`max_retries=0`): `_complete` retries with this critic's `backoff`, honours
        `Retry-After` and counts each retry in `stats.request_retries`.
        """
        with self._lock:
            if self._openai is None:
                try:
                    from openai import OpenAI
                except ImportError as error:
                    raise ImportError(
                        "OpenAICompatibleCritic needs the `openai` client: pip install 'trl-rpo[openai]'"
                    ) from error
                # The client insists on credentials: without a key it gets a placeholder, and `_post` omits the
                # Authorization header (local servers need none). api_key=None would make it read OPENAI_API_KEY
                # itself, bypassing `api_key_env`.
                self._openai = OpenAI(
                    base_url=self.base_url, api_key=self._api_key or "unused", timeout=self.timeout, max_retries=0,
                    http_client=self.http_client,
                )  # fmt: skip
        return self._openai

    def _post(self, body: dict[str, Any]) -> Any:
        """One chat-completions request; raises `_TransientRequestError` or `CriticRequestError` on failure."""
        import openai

        url = f"{self.base_url}/chat/completions"
        fields = {"model", "messages", "temperature", "max_tokens"}
        try:
            raw = self._client().chat.completions.with_raw_response.create(
                **{k: v for k, v in body.items() if k in fields},
                extra_body={k: v for k, v in body.items() if k not in fields} or None,
                extra_headers=None if self._api_key else {"Authorization": openai.Omit()},
            )
        except openai.APITimeoutError:
            raise _TransientRequestError(f"no response from {url} within {self.timeout} s") from None
        except openai.APIConnectionError as error:
            cause = type(error.__cause__ or error).__name__
            raise _TransientRequestError(self._redact(f"could not connect to {url}: {cause}")) from None
        except openai.APIStatusError as error:
            status = error.status_code
            if status == 429 or status >= 500:
                retry_after = error.response.headers.get("Retry-After")
                try:
                    delay = float(retry_after) if retry_after is not None else None
                except ValueError:
                    delay = None
                raise _TransientRequestError(f"{url} answered HTTP {status}", retry_after=delay) from None
            detail = self._redact(error.response.text[:500])
            raise CriticRequestError(
                f"{url} refused the request with HTTP {status}: {detail!r} "
                "(check base_url, model and the API key; retrying would not help)"
            ) from None
        # The raw JSON, not the typed object: servers differ (content as a list of parts, missing fields).
        response = raw.http_response
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
