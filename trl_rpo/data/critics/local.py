"""`TransformersCritic`: a transformers vision-language model run in process, batched."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from ..schema import Critique, InvalidCritiqueError
from .prompts import (
    _RETRY_FEEDBACK,
    CRITIC_PROMPT,
    CRITIQUE_ONLY_PROMPT,
    INSTRUCTIONS_PROMPT,
    CriticStats,
    _check_inputs,
    _fill,
    _parse_critique_text,
    parse_critique,
    parse_instructions,
)

logger = logging.getLogger("trl_rpo.data.critics")


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
