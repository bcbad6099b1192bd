"""VLM critics: the reply parser, a transformers critic on a tiny LLaVA, an HTTP critic against a loopback server."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from trl_rpo.data.critics import (
    CRITIC_PROMPT,
    CriticRequestError,
    OpenAICompatibleCritic,
    TransformersCritic,
    parse_critique,
    parse_instructions,
)
from trl_rpo.data.schema import Critique, InvalidCritiqueError
from trl_rpo.testing import tiny_chat_tokenizer, tiny_vision_language_model

GOOD = {
    "critique": "The circle is blue but the prompt asks for a red circle.",
    "instructions": [
        {
            "instruction": "recolor the circle to red",
            "kind": "recolor",
            "target": "circle",
            "region": [0.25, 0.25, 0.75, 0.75],
            "params": {"color": "red"},
        }
    ],
}
GOOD_JSON = json.dumps(GOOD)
CRITIQUE_TEXT = "The circle is blue; the prompt asks for red."
INSTRUCTIONS_JSON = json.dumps({"instructions": GOOD["instructions"]})
SECRET = "sk-test-0123456789-very-secret"


def _images(n: int) -> list[Image.Image]:
    colors = ["red", "blue", "green", "yellow", "white", "black", "gray", "orange"]
    return [Image.new("RGB", (40, 30), colors[i % len(colors)]) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# parse_critique
# ----------------------------------------------------------------------------------------------------------------


def test_parse_critique_reads_json_in_a_fenced_block():
    critique = parse_critique(f"```json\n{GOOD_JSON}\n```")
    assert critique == Critique.coerce(GOOD)


def test_parse_critique_finds_the_json_object_inside_prose():
    critique = parse_critique(f"Sure! Here is my analysis: {GOOD_JSON} Let me know if you need more.")
    assert critique.instructions[0].params == {"color": "red"}
    assert critique.instructions[0].region == (0.25, 0.25, 0.75, 0.75)


def test_parse_critique_prefers_the_object_with_a_critique_field():
    critique = parse_critique('The schema was {"note": 1}. My answer: ' + GOOD_JSON)
    assert critique.critique == GOOD["critique"]


def test_parse_critique_accepts_empty_instructions_as_nothing_to_fix():
    critique = parse_critique('{"critique": "The image matches the prompt.", "instructions": []}')
    assert critique.needs_edit is False


def test_parse_critique_rejects_a_reply_without_json_saying_what_was_expected():
    with pytest.raises(InvalidCritiqueError, match="no JSON object found.*critique"):
        parse_critique("The image looks fine to me.")


def test_parse_critique_rejects_truncated_json():
    with pytest.raises(InvalidCritiqueError, match="no JSON object found"):
        parse_critique(GOOD_JSON[:-10])


def test_parse_critique_rejects_an_empty_reply():
    with pytest.raises(InvalidCritiqueError, match="empty"):
        parse_critique("   ")


def test_parse_critique_rejects_an_object_without_a_critique_field():
    with pytest.raises(InvalidCritiqueError, match="'critique' field"):
        parse_critique('{"instructions": []}')


def test_parse_critique_rejects_a_region_outside_the_unit_square_naming_the_field():
    bad = {"critique": "x", "instructions": [{"instruction": "move it", "region": [0, 0, 2, 1]}]}
    with pytest.raises(InvalidCritiqueError, match="region"):
        parse_critique(json.dumps(bad))


def test_parse_critique_rejects_a_region_that_is_not_a_list():
    bad = {"critique": "x", "instructions": [{"instruction": "move it", "region": 5}]}
    with pytest.raises(InvalidCritiqueError, match="region must be 4 numbers"):
        parse_critique(json.dumps(bad))


def test_parse_critique_rejects_unknown_instruction_fields():
    bad = {"critique": "x", "instructions": [{"instruction": "move it", "colour": "red"}]}
    with pytest.raises(InvalidCritiqueError, match="unknown instruction field"):
        parse_critique(json.dumps(bad))


def test_parse_instructions_accepts_an_object_or_a_bare_list():
    from_object = parse_instructions(f"```json\n{INSTRUCTIONS_JSON}\n```")
    from_list = parse_instructions("Instructions: " + json.dumps(GOOD["instructions"]))
    assert from_object == from_list
    assert from_object[0].kind == "recolor"


def test_parse_instructions_rejects_a_reply_without_instructions():
    with pytest.raises(InvalidCritiqueError, match="'instructions' list"):
        parse_instructions("nothing to see")


def test_critic_prompt_names_every_schema_field_and_takes_the_prompt():
    for field in ("critique", "instructions", "instruction", "kind", "target", "region", "params"):
        assert f'"{field}"' in CRITIC_PROMPT
    assert CRITIC_PROMPT.count("{prompt}") == 1


# ----------------------------------------------------------------------------------------------------------------
# TransformersCritic on a tiny random LLaVA
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlm():
    return tiny_vision_language_model(seed=0)


class ScriptedGenerate:
    """Stands in for `model.generate`: answers each row with the next scripted reply, recording what it was asked."""

    def __init__(self, tokenizer, replies):
        self.tokenizer = tokenizer
        self.replies = list(replies)
        self.batches: list[list[str]] = []  # decoded prompts, one list per call
        self.had_pixels: list[bool] = []

    def __call__(self, input_ids, pixel_values=None, **kwargs):
        self.batches.append(self.tokenizer.batch_decode(input_ids, skip_special_tokens=False))
        self.had_pixels.append(pixel_values is not None)
        tok = self.tokenizer
        rows = [tok(self.replies.pop(0), add_special_tokens=False).input_ids + [tok.eos_token_id] for _ in input_ids]
        width = max(len(row) for row in rows)
        new = torch.tensor([row + [tok.pad_token_id] * (width - len(row)) for row in rows])
        return torch.cat([input_ids, new], dim=1)


def _script(monkeypatch, model, tokenizer, replies) -> ScriptedGenerate:
    scripted = ScriptedGenerate(tokenizer, replies)
    monkeypatch.setattr(model, "generate", scripted)
    return scripted


def test_transformers_critic_runs_real_generation_and_counts_garbage_as_failures(vlm):
    model, processor = vlm
    critic = TransformersCritic(model, processor, max_new_tokens=6, batch_size=2, max_retries=1)
    assert critic(_images(3), ["a red circle", "two blue squares", "a green triangle"]) == [None, None, None]
    assert (critic.stats.images, critic.stats.retries, critic.stats.failures) == (3, 3, 3)


def test_transformers_critic_batches_images_and_keeps_their_order(vlm, monkeypatch):
    model, processor = vlm
    replies = [json.dumps({"critique": f"image {i}", "instructions": []}) for i in range(3)]
    scripted = _script(monkeypatch, model, processor.tokenizer, replies)
    critic = TransformersCritic(model, processor, batch_size=2)
    critiques = critic(_images(3), ["prompt 0", "prompt 1", "prompt 2"])
    assert [c.critique for c in critiques] == ["image 0", "image 1", "image 2"]
    assert [len(batch) for batch in scripted.batches] == [2, 1]


def test_transformers_critic_sends_the_image_and_prompt_through_the_chat_template(vlm, monkeypatch):
    model, processor = vlm
    scripted = _script(monkeypatch, model, processor.tokenizer, [GOOD_JSON])
    TransformersCritic(model, processor)(_images(1), ["a red circle"])
    prompt = scripted.batches[0][0]
    assert prompt.count("<image>") > 1  # the processor expanded the image placeholder into patch tokens
    assert '"a red circle"' in prompt and prompt.endswith("<|assistant|>")
    assert scripted.had_pixels == [True]


def test_transformers_critic_retries_a_malformed_reply_with_the_parse_error_in_the_prompt(vlm, monkeypatch):
    model, processor = vlm
    scripted = _script(monkeypatch, model, processor.tokenizer, ["I think it is fine.", GOOD_JSON])
    critic = TransformersCritic(model, processor, max_retries=2)
    (critique,) = critic(_images(1), ["a red circle"])
    assert critique == Critique.coerce(GOOD)
    assert "no JSON object found" in scripted.batches[1][0]
    assert (critic.stats.retries, critic.stats.failures) == (1, 0)


def test_transformers_critic_returns_none_after_max_retries_without_raising(vlm, monkeypatch):
    model, processor = vlm
    scripted = _script(monkeypatch, model, processor.tokenizer, ["nope"] * 3 + [GOOD_JSON])
    critic = TransformersCritic(model, processor, max_retries=2)
    assert critic(_images(1), ["a red circle"]) == [None]
    assert len(scripted.batches) == 3
    assert (critic.stats.retries, critic.stats.failures) == (2, 1)


def test_transformers_critic_retries_only_the_images_that_failed(vlm, monkeypatch):
    model, processor = vlm
    scripted = _script(monkeypatch, model, processor.tokenizer, [GOOD_JSON, "garbage", GOOD_JSON])
    critiques = TransformersCritic(model, processor, batch_size=2)(_images(2), ["p0", "p1"])
    assert all(c is not None for c in critiques)
    assert [len(batch) for batch in scripted.batches] == [2, 1]


def test_transformers_critic_two_stage_turns_the_critique_into_instructions_with_a_callable(vlm, monkeypatch):
    model, processor = vlm
    _script(monkeypatch, model, processor.tokenizer, [CRITIQUE_TEXT])
    asked: list[str] = []

    def text_model(text: str) -> str:
        asked.append(text)
        return INSTRUCTIONS_JSON

    critic = TransformersCritic(model, processor, two_stage=True, instruction_model=text_model)
    (critique,) = critic(_images(1), ["a red circle"])
    assert critique.critique == CRITIQUE_TEXT
    assert critique.instructions[0].params == {"color": "red"}
    assert CRITIQUE_TEXT in asked[0] and "a red circle" in asked[0]


def test_transformers_critic_two_stage_defaults_to_the_vlm_without_an_image(vlm, monkeypatch):
    model, processor = vlm
    scripted = _script(monkeypatch, model, processor.tokenizer, [CRITIQUE_TEXT, INSTRUCTIONS_JSON])
    (critique,) = TransformersCritic(model, processor, two_stage=True)(_images(1), ["a red circle"])
    assert critique.needs_edit
    assert scripted.had_pixels == [True, False]


def test_transformers_critic_two_stage_accepts_a_causal_lm_and_its_tokenizer(vlm, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    model, processor = vlm
    _script(monkeypatch, model, processor.tokenizer, [CRITIQUE_TEXT])
    tokenizer = tiny_chat_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_attention_heads=2,
        num_hidden_layers=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_model = LlamaForCausalLM(config).eval()
    scripted_text = _script(monkeypatch, text_model, tokenizer, [INSTRUCTIONS_JSON])
    critic = TransformersCritic(
        model, processor, two_stage=True, instruction_model=text_model, instruction_tokenizer=tokenizer
    )
    (critique,) = critic(_images(1), ["a red circle"])
    assert critique.instructions[0].kind == "recolor"
    assert CRITIQUE_TEXT in scripted_text.batches[0][0]


def test_transformers_critic_needs_the_processor_of_a_loaded_model(vlm):
    with pytest.raises(ValueError, match="processor="):
        TransformersCritic(vlm[0])


def test_transformers_critic_wants_one_prompt_per_image(vlm):
    with pytest.raises(ValueError, match="one prompt per image"):
        TransformersCritic(*vlm)(_images(2), ["only one"])


# ----------------------------------------------------------------------------------------------------------------
# OpenAICompatibleCritic against a loopback chat-completions server
# ----------------------------------------------------------------------------------------------------------------


class ChatServer:
    """A chat-completions server on 127.0.0.1 that plays scripted actions, one per request, then `default`.

    An action is a reply text, `("status", code)` or `("status", code, headers)`, `("sleep", seconds, text)`, or
    `("echo_auth", code)` (an error whose body repeats the Authorization header, as a careless proxy might).
    """

    def __init__(self, actions=(), default=GOOD_JSON, delay=0.0):
        self.actions = list(actions)
        self.default = default
        self.delay = delay
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    # the Message itself: HTTP header names are case-insensitive (httpx2 sends them lower-case)
                    server.requests.append({"path": self.path, "headers": self.headers, "body": body})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    action = server.actions.pop(0) if server.actions else server.default
                try:
                    time.sleep(server.delay)
                    server.play(self, action)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def play(handler, action):
        if isinstance(action, str):
            payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": action}}]}
            return ChatServer.send(handler, 200, json.dumps(payload))
        if action[0] == "status":
            return ChatServer.send(handler, action[1], '{"error": "scripted"}', *action[2:])
        if action[0] == "sleep":
            time.sleep(action[1])
            return ChatServer.play(handler, action[2])
        if action[0] == "echo_auth":
            auth = handler.headers.get("Authorization")
            return ChatServer.send(handler, action[1], json.dumps({"error": f"bad key {auth}"}))
        raise ValueError(f"unknown action {action!r}")

    @staticmethod
    def send(handler, code, text, headers=None):
        data = text.encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _critic(server: ChatServer, **kwargs) -> OpenAICompatibleCritic:
    options = {"model": "tiny-vlm", "api_key_env": None, "backoff": 0.01, "timeout": 5}
    return OpenAICompatibleCritic(server.url, **{**options, **kwargs})


def test_http_critic_posts_the_image_as_a_png_data_url_with_the_prompt():
    with ChatServer() as server:
        (critique,) = _critic(server)(_images(1), ["a red circle"])
    assert critique == Critique.coerce(GOOD)
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["model"] == "tiny-vlm" and request["body"]["temperature"] == 0.0
    image_part, text_part = request["body"]["messages"][0]["content"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (40, 30)
    assert text_part["type"] == "text" and '"a red circle"' in text_part["text"]


def test_http_critic_retries_malformed_replies_then_accepts_a_good_one():
    with ChatServer(["not json", '{"critique": 3}', GOOD_JSON]) as server:
        critic = _critic(server, max_parse_retries=2)
        (critique,) = critic(_images(1), ["a red circle"])
    assert critique is not None
    assert "could not be used" in server.requests[1]["body"]["messages"][0]["content"][1]["text"]
    assert (critic.stats.retries, critic.stats.failures) == (2, 0)


def test_http_critic_returns_none_and_counts_a_failure_when_replies_stay_malformed():
    with ChatServer(default="still not json") as server:
        critic = _critic(server, max_parse_retries=2)
        assert critic(_images(2), ["p0", "p1"]) == [None, None]
    assert len(server.requests) == 6
    assert critic.stats.failures == 2


def test_http_critic_retries_a_server_error():
    with ChatServer([("status", 500)]) as server:
        critic = _critic(server)
        assert critic(_images(1), ["p"])[0] is not None
    assert critic.stats.request_retries == 1 and len(server.requests) == 2


def test_http_critic_retries_a_rate_limit_honouring_retry_after():
    with ChatServer([("status", 429, {"Retry-After": "0.3"})]) as server:
        critic = _critic(server, backoff=0.001)
        start = time.perf_counter()
        assert critic(_images(1), ["p"])[0] is not None
    assert time.perf_counter() - start >= 0.3
    assert critic.stats.request_retries == 1


def test_http_critic_retries_a_timed_out_request():
    with ChatServer([("sleep", 2.0, GOOD_JSON)]) as server:
        critic = _critic(server, timeout=0.5)
        assert critic(_images(1), ["p"])[0] is not None
    assert critic.stats.request_retries >= 1  # more only if a loaded machine stalls the quick reply past the timeout


def test_http_critic_gives_up_on_an_unreachable_server_with_none():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    critic = OpenAICompatibleCritic(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, max_retries=1, backoff=0.01)
    assert critic(_images(1), ["p"]) == [None]
    assert (critic.stats.request_retries, critic.stats.failures) == (1, 1)


def test_http_critic_raises_on_a_client_error_that_retrying_cannot_fix():
    with ChatServer([("status", 404)]) as server:
        with pytest.raises(CriticRequestError, match="HTTP 404"):
            _critic(server)(_images(1), ["p"])
    assert len(server.requests) == 1


def test_http_critic_keeps_at_most_max_concurrency_requests_in_flight():
    with ChatServer(delay=0.25) as server:
        critic = _critic(server, max_concurrency=3)
        critiques = critic(_images(8), [f"p{i}" for i in range(8)])
    assert all(c is not None for c in critiques)
    assert 1 < server.max_in_flight <= 3  # in parallel, never above the limit
    assert ['"p0"' in r["body"]["messages"][0]["content"][1]["text"] for r in server.requests].count(True) == 1


def test_http_critic_sends_the_key_from_the_named_environment_variable(monkeypatch):
    monkeypatch.setenv("MY_VLM_KEY", SECRET)
    with ChatServer() as server:
        _critic(server, api_key_env="MY_VLM_KEY")(_images(1), ["p"])
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_http_critic_sends_no_authorization_header_without_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with ChatServer() as server:
        _critic(server, api_key_env="OPENAI_API_KEY")(_images(1), ["p"])
    assert "Authorization" not in server.requests[0]["headers"]


def test_http_critic_never_writes_the_key_to_logs_repr_or_exceptions(monkeypatch, caplog):
    monkeypatch.setenv("MY_VLM_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    actions = [("status", 500), ("sleep", 0.5, GOOD_JSON), "bad json", "bad json", "bad json"]
    with ChatServer(actions) as server:
        critic = _critic(server, api_key_env="MY_VLM_KEY", timeout=0.2, max_parse_retries=1)
        critic(_images(2), ["p0", "p1"])
    with ChatServer([("echo_auth", 401)]) as server:
        with pytest.raises(CriticRequestError) as raised:
            _critic(server, api_key_env="MY_VLM_KEY")(_images(1), ["p"])
    assert "bad key Bearer ***" in str(raised.value)  # the server did echo it: the message was redacted
    assert caplog.records and critic.stats.failures >= 1
    assert not [r for r in caplog.records if SECRET in r.getMessage()]
    assert SECRET not in repr(critic)


def test_http_critic_two_stage_asks_for_the_critique_then_the_instructions_without_the_image():
    with ChatServer([CRITIQUE_TEXT, INSTRUCTIONS_JSON]) as server:
        critic = _critic(server, two_stage=True, instruction_model="text-llm")
        (critique,) = critic(_images(1), ["a red circle"])
    assert critique.critique == CRITIQUE_TEXT and critique.instructions[0].kind == "recolor"
    first, second = (r["body"] for r in server.requests)
    assert first["model"] == "tiny-vlm" and first["messages"][0]["content"][0]["type"] == "image_url"
    assert second["model"] == "text-llm"
    assert [part["type"] for part in second["messages"][0]["content"]] == ["text"]
    assert CRITIQUE_TEXT in second["messages"][0]["content"][0]["text"]


def test_http_critic_two_stage_accepts_a_callable_instruction_model():
    with ChatServer([CRITIQUE_TEXT]) as server:
        critic = _critic(server, two_stage=True, instruction_model=lambda text: INSTRUCTIONS_JSON)
        (critique,) = critic(_images(1), ["a red circle"])
    assert critique.instructions[0].params == {"color": "red"}
    assert len(server.requests) == 1


def test_http_critic_goes_through_the_openai_client_with_the_given_http_client():
    import httpx2 as httpx  # the HTTP library of the pinned openai client (openai 3 moved to httpx2)

    seen = []

    def handler(request):
        seen.append((request.url.path, json.loads(request.content)))
        message = {"role": "assistant", "content": [{"type": "text", "text": GOOD_JSON}]}  # content as parts
        return httpx.Response(200, json={"choices": [{"index": 0, "message": message}]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    critic = OpenAICompatibleCritic("http://vlm.invalid/v1", "m", api_key_env=None, extra_body={"top_p": 0.5},
                                    http_client=client)  # fmt: skip
    (critique,) = critic(_images(1), ["p"])
    assert critique == Critique.coerce(GOOD)
    path, body = seen[0]
    assert path == "/v1/chat/completions" and body["model"] == "m" and body["top_p"] == 0.5
    assert critic._client().max_retries == 0  # retries are the critic's own (counted, with its backoff)


def test_the_http_critic_module_imports_no_undeclared_http_library():
    import ast
    from pathlib import Path

    import trl_rpo.data.critics.api as api

    tree = ast.parse(Path(api.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "requests" not in imported and "urllib" not in imported and "openai" in imported
