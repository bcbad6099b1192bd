"""Rewards out of process: a scorer served over HTTP, and the client that calls it like any reward function.

A reward model with a heavy or conflicting environment (another torch, a VLM server) runs in its own process:

    trl-rpo serve-reward --reward aesthetic --port 8000          # in the reward's environment
    reward = RemoteReward("http://127.0.0.1:8000")              # in the trainer's
    DiffusionGRPOTrainer(model, reward_funcs=reward, ...)

The protocol is small JSON over HTTP: `POST /score` with `{"images": [base64 PNG, ...], "prompts": [...]}`
answers `{"scores": [float, ...]}` (one per image); `GET /health` answers `{"name": ..., "status": "ok"}`.
PNG keeps the 8-bit images exact, so a remote score equals the local one.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from .base import images_to_tensor, reward_name

__all__ = ["RemoteReward", "RemoteRewardError", "decode_image", "encode_image", "make_reward_server", "serve_reward"]

logger = logging.getLogger(__name__)


class RemoteRewardError(RuntimeError):
    """A reward server could not be reached, or answered with an error or a malformed reply."""


def encode_image(image: Image.Image) -> str:
    """A PIL image as base64 PNG text (lossless for 8-bit images)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(text: str) -> Image.Image:
    """The PIL image :func:`encode_image` wrote."""
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def _to_pil(images: Sequence[Image.Image] | Any) -> list[Image.Image]:
    if isinstance(images, (list, tuple)) and all(isinstance(im, Image.Image) for im in images):
        return list(images)
    from ..pipelines import tensor_to_pil

    return tensor_to_pil(images_to_tensor(images))


class RemoteReward:
    """A reward function whose scores come from a server (`trl-rpo serve-reward`, or any server of the protocol).

    Calling it follows the reward convention, `reward(images, prompts, **kwargs) -> list[float]`. Images go in
    requests of at most `batch_size` over one `requests.Session` (connections are reused); a request that times
    out, fails to connect or gets a 5xx answer is retried `max_retries` times with exponential backoff (urllib3's
    `Retry`, factor `retry_backoff`). A 4xx answer (a request the server rejects) is not retried. Every error
    names the server's URL.

    Args:
        url: the server's base URL, e.g. `"http://127.0.0.1:8000"` (`/score` is appended).
        name: the name the reward is logged under (`rewards/<name>/mean`); default `"remote"`.
        batch_size: images per request.
        timeout: seconds to wait for one request.
        max_retries: retries after the first failed attempt of a request.
        retry_backoff: urllib3's `backoff_factor`: the waits between retries grow as `retry_backoff * 2**k`.
    """

    differentiable = False

    def __init__(
        self,
        url: str,
        name: str | None = None,
        batch_size: int = 16,
        timeout: float = 60.0,
        max_retries: int = 3,
        retry_backoff: float = 0.5,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteReward url must start with http:// or https://, got {url!r}")
        if batch_size < 1:
            raise ValueError(f"RemoteReward batch_size must be >= 1, got {batch_size}")
        if timeout <= 0:
            raise ValueError(f"RemoteReward timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"RemoteReward max_retries must be >= 0, got {max_retries}")
        self.url = url.rstrip("/")
        self.name = name or "remote"
        self.batch_size, self.timeout = batch_size, timeout
        self.max_retries, self.retry_backoff = max_retries, retry_backoff

    def __repr__(self) -> str:
        return f"RemoteReward({self.url!r}, name={self.name!r})"

    def __call__(self, images, prompts: Sequence[str] | None = None, **kwargs: Any) -> list[float]:
        pil = _to_pil(images)
        prompts = list(prompts) if prompts is not None else [""] * len(pil)
        if len(prompts) != len(pil):
            raise ValueError(f"RemoteReward got {len(pil)} images but {len(prompts)} prompts")
        scores: list[float] = []
        for start in range(0, len(pil), self.batch_size):
            batch, batch_prompts = pil[start : start + self.batch_size], prompts[start : start + self.batch_size]
            payload = {"images": [encode_image(im) for im in batch], "prompts": batch_prompts}
            scores.extend(self._score(payload, len(batch)))
        return scores

    def health(self) -> dict[str, Any]:
        """The server's `GET /health` answer (its scorer's name), or a `RemoteRewardError` naming the server."""
        return self._request("GET", "/health")

    def _score(self, payload: dict, expected: int) -> list[float]:
        reply = self._request("POST", "/score", json=payload)
        scores = reply.get("scores") if isinstance(reply, dict) else None
        if not isinstance(scores, list) or len(scores) != expected:
            got = f"{len(scores)} scores" if isinstance(scores, list) else f"{str(reply)[:200]!r}"
            raise RemoteRewardError(f"reward server {self.url} answered {got} for {expected} images")
        bad = [s for s in scores if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s)]
        if bad:
            raise RemoteRewardError(f"reward server {self.url} answered a non-finite or non-numeric score {bad[0]!r}")
        return [float(s) for s in scores]

    @property
    def session(self):
        """The `requests.Session` with urllib3's retry policy, made on first use (so the reward pickles)."""
        if getattr(self, "_session", None) is None:
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            retry = Retry(total=self.max_retries, connect=self.max_retries, read=self.max_retries,
                          status=self.max_retries, backoff_factor=self.retry_backoff,
                          status_forcelist=(500, 502, 503, 504), allowed_methods=frozenset({"GET", "POST"}),
                          raise_on_status=False)  # fmt: skip
            session = requests.Session()
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            self._session = session
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_session"}

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        attempts = self.max_retries + 1
        try:
            response = self.session.request(method, f"{self.url}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as err:  # connection refused, timeouts: retried, then given up
            reason = err.args[0] if err.args else err
            reason = getattr(reason, "reason", reason)
            raise RemoteRewardError(
                f"reward server {self.url} failed after {attempts} attempt(s) (timeout {self.timeout} s): "
                f"{type(reason).__name__}: {reason}"
            ) from err
        if response.status_code >= 500:  # still failing after the retries
            raise RemoteRewardError(
                f"reward server {self.url} failed after {attempts} attempt(s) (timeout {self.timeout} s): "
                f"HTTP {response.status_code}: {_error_detail(response)}"
            )
        if response.status_code >= 400:  # the server refused this request: retrying would not help
            raise RemoteRewardError(
                f"reward server {self.url} refused the request ({response.status_code}): {_error_detail(response)}"
            )
        try:
            return response.json()
        except ValueError as err:
            raise RemoteRewardError(f"reward server {self.url} answered something that is not JSON: {err}") from err


def _error_detail(response) -> str:
    try:
        body = response.json()
        return str(body.get("error", body))
    except Exception:  # noqa: BLE001 - any unreadable body: fall back to the status text
        return str(response.reason)


def make_reward_server(
    scorer: Callable[..., Sequence[float]],
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch_size: int = 256,
    name: str | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that scores images with `scorer`; `port=0` picks a free port.

    Run it with `server.serve_forever()` (in a thread for tests: `server.server_address` gives the port) and stop
    it with `server.shutdown()`. Calls to the scorer are serialised with a lock (scorers are rarely thread-safe).
    """
    lock = threading.Lock()
    scorer_name = name or reward_name(scorer)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/health":
                self._reply(200, {"name": scorer_name, "status": "ok"})
            else:
                self._reply(404, {"error": f"unknown path {self.path!r}; use POST /score or GET /health"})

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") != "/score":
                self._reply(404, {"error": f"unknown path {self.path!r}; use POST /score"})
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length).decode())
                encoded, prompts = payload["images"], payload.get("prompts")
                if not isinstance(encoded, list) or not encoded:
                    raise ValueError("'images' must be a non-empty list of base64 PNG strings")
                if len(encoded) > max_batch_size:
                    raise ValueError(
                        f"{len(encoded)} images in one request; this server takes at most {max_batch_size}"
                    )
                prompts = list(prompts) if prompts is not None else [""] * len(encoded)
                if len(prompts) != len(encoded):
                    raise ValueError(f"{len(encoded)} images but {len(prompts)} prompts")
                images = [decode_image(text) for text in encoded]
            except (ValueError, KeyError, TypeError, OSError) as err:
                self._reply(400, {"error": f"bad request: {err}"})
                return
            try:
                with lock:
                    scores = [float(s) for s in scorer(images, prompts)]
            except Exception as err:  # noqa: BLE001 - reported to the client, which names this server
                logger.exception("scorer %s failed", scorer_name)
                self._reply(500, {"error": f"scorer {scorer_name!r} failed: {type(err).__name__}: {err}"})
                return
            self._reply(200, {"scores": scores})

        def log_message(self, format, *args):  # noqa: A002 - http.server's signature
            logger.debug("reward server: " + format, *args)

    return _RewardServer((host, port), Handler)


class _RewardServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):  # the client gave up (its timeout): nothing to report
            logger.debug("reward server: client %s disconnected before the reply", client_address)
            return
        super().handle_error(request, client_address)


def serve_reward(scorer: Callable[..., Sequence[float]], host: str = "127.0.0.1", port: int = 8000,
                 max_batch_size: int = 256) -> None:  # fmt: skip
    """Serve `scorer` until interrupted (what `trl-rpo serve-reward` runs)."""
    server = make_reward_server(scorer, host, port, max_batch_size)
    address = f"http://{server.server_address[0]}:{server.server_address[1]}"
    print(f"serving reward {reward_name(scorer)!r} at {address} (POST /score, GET /health)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
