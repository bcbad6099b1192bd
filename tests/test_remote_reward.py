import threading
import time

import numpy as np
import pytest
from PIL import Image

from trl_rpo import RemoteReward
from trl_rpo.rewards.remote import RemoteRewardError, make_reward_server


def mean_red(images, prompts, **kwargs):
    return [float(np.asarray(im)[..., 0].mean()) for im in images]


class Recorder:
    """A scorer that remembers the size of each call (to see the client's batching)."""

    name = "recorder"

    def __init__(self, delay: float = 0.0, fail_first: int = 0):
        self.calls: list[int] = []
        self.delay, self.fail_first = delay, fail_first

    def __call__(self, images, prompts, **kwargs):
        self.calls.append(len(images))
        if len(self.calls) <= self.fail_first:
            raise RuntimeError("model not loaded yet")
        time.sleep(self.delay)
        return [len(p) for p in prompts]


@pytest.fixture
def serve():
    servers = []

    def start(scorer, **kwargs):
        server = make_reward_server(scorer, port=0, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        return f"http://{host}:{port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(n)]


def test_remote_scores_equal_local_scores_and_requests_are_batched(serve):
    recorder = Recorder()
    url = serve(recorder)
    reward = RemoteReward(url, batch_size=2)
    images, prompts = _images(5), ["a", "bb", "ccc", "dddd", "eeeee"]
    assert reward(images, prompts) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert recorder.calls == [2, 2, 1]
    exact = RemoteReward(serve(mean_red))(images, prompts)
    assert exact == pytest.approx(mean_red(images, prompts))  # PNG keeps 8-bit images exact
    assert reward.health() == {"name": "recorder", "status": "ok"}


def test_a_timeout_is_retried_then_reported_with_the_servers_url(serve):
    url = serve(Recorder(delay=1.0))
    reward = RemoteReward(url, timeout=0.2, max_retries=1, retry_backoff=0.01)
    with pytest.raises(RemoteRewardError, match=rf"{url}.*2 attempt"):
        reward(_images(1), ["a"])


def test_server_errors_are_retried_and_can_recover(serve):
    recorder = Recorder(fail_first=2)
    url = serve(recorder)
    assert RemoteReward(url, max_retries=2, retry_backoff=0.01)(_images(1), ["abc"]) == [3.0]
    assert len(recorder.calls) == 3
    failing = serve(Recorder(fail_first=100))
    with pytest.raises(RemoteRewardError, match=rf"{failing}.*model not loaded yet"):
        RemoteReward(failing, max_retries=1, retry_backoff=0.01)(_images(1), ["a"])


def test_a_refused_request_is_not_retried_and_an_unreachable_server_is_named(serve):
    recorder = Recorder()
    url = serve(recorder, max_batch_size=2)
    with pytest.raises(RemoteRewardError, match=rf"{url} refused the request \(400\).*at most 2"):
        RemoteReward(url, batch_size=3, max_retries=3)(_images(3), ["a"] * 3)
    assert recorder.calls == []
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(RemoteRewardError, match=dead):
        RemoteReward(dead, max_retries=0, timeout=2)(_images(1), ["a"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="url"):
        RemoteReward("localhost:8000")
    with pytest.raises(ValueError, match="batch_size"):
        RemoteReward("http://x", batch_size=0)
    with pytest.raises(ValueError, match="timeout"):
        RemoteReward("http://x", timeout=0)
