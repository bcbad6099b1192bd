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
  Ollama) through the `openai` client, with bounded concurrency and retries with exponential backoff.

Both retry malformed replies (telling the model what was wrong), optionally split the work in two stages (the VLM
writes the critique, a text model turns it into instructions), and count what happened in `critic.stats`.
"""

from .api import CriticRequestError, OpenAICompatibleCritic
from .local import TransformersCritic
from .prompts import (
    CRITIC_PROMPT,
    CRITIQUE_ONLY_PROMPT,
    INSTRUCTIONS_PROMPT,
    CriticStats,
    parse_critique,
    parse_instructions,
)

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
