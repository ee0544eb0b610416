"""The black-box teacher client against a real OpenAI-compatible server serving the packaged teacher.

One server per module (SmolLM2-135M-Instruct, converted once from the packaged GGUF); a recording
ASGI layer in front of it counts requests, measures how many are in flight and injects failures.
Completions are kept to a few tokens: generation costs ~50 ms/token here, far more on a busy box.
Set DISTILL_LM_CACHE to a folder to reuse the converted teacher across runs.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import httpx
import pytest
import torch
from starlette.responses import JSONResponse

from distill.lm.client import (
    ChatClient,
    ChatClientConfig,
    TeacherAPIError,
    cache_key,
    parse_retry_after,
)

MODEL = "smollm2-135m-instruct"
SECRET = f"sk-test-{uuid.uuid4().hex}"
KEY_ENV = "DISTILL_TEST_TEACHER_KEY"


class Recorder:
    """ASGI layer in front of the server: counts chat requests, tracks concurrency, injects failures."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.posts = self.in_flight = self.max_in_flight = 0
        self.failures: deque[tuple[int, dict[str, str]]] = deque()

    def fail_next(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.failures.append((status, headers or {}))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            return await self.app(scope, receive, send)
        with self.lock:
            self.posts += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            failure = self.failures.popleft() if self.failures else None
        try:
            if failure:
                status, headers = failure
                body = {"error": {"message": f"injected {status}", "type": "server_error"}}
                await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            with self.lock:
                self.in_flight -= 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, recorder, wrapped app): the packaged teacher behind the API, guarded by SECRET."""
    from distill.lm.server import create_app, load_for_serving, running_server
    from distill.lm.teacher import packaged_teacher_folder

    # One intra-op thread: on a shared 2-core box two threads spin against each other (measured 20x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = Path(os.environ.get("DISTILL_LM_CACHE") or tmp_path_factory.mktemp("lm"))
        lm = load_for_serving(packaged_teacher_folder(cache))
        recorder = Recorder(create_app(lm, MODEL, api_key=SECRET, max_tokens_limit=64))
        with running_server(recorder) as url:
            yield url, recorder
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def server(served, monkeypatch):
    url, recorder = served
    recorder.reset()
    monkeypatch.setenv(KEY_ENV, SECRET)
    return url, recorder


def client_config(url: str, cache_dir: Path, **overrides) -> ChatClientConfig:
    values = dict(base_url=url, model=MODEL, api_key_env=KEY_ENV, cache_dir=str(cache_dir), max_tokens=2,
                  backoff_initial_s=0.05, max_concurrency=1)
    values.update(overrides)
    return ChatClientConfig(**values)


# --- the real server ---------------------------------------------------------------------------

def test_server_lists_the_model_and_answers_with_usage(server):
    url, _ = server
    auth = {"Authorization": f"Bearer {SECRET}"}
    assert httpx.get(f"{url}/models", headers=auth).json()["data"][0]["id"] == MODEL
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 2,
            "temperature": 0}
    answer = httpx.post(f"{url}/chat/completions", json=body, headers=auth, timeout=120).json()
    assert answer["choices"][0]["message"]["content"] and answer["choices"][0]["finish_reason"] == "length"
    usage = answer["usage"]
    assert usage["completion_tokens"] == 2 and usage["prompt_tokens"] > 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_cache_answers_the_second_call_without_any_request(server, tmp_path, caplog):
    url, recorder = server
    caplog.set_level(logging.DEBUG)
    prompts = ["Say yes.", "Say no.", "Say yes."]  # a repeated prompt is paid once, even the first time
    with ChatClient(client_config(url, tmp_path / "cache")) as client:
        first = client.generate_many(prompts)
        assert SECRET not in repr(client)
    assert recorder.posts == first.summary.requests == 2
    assert first.summary.cache_hits == 0 and first.summary.total_tokens > 0
    assert first.completions[0].text == first.completions[2].text

    with ChatClient(client_config(url, tmp_path / "cache")) as client:  # a new client: the cache is on disk
        start = time.perf_counter()
        again = client.generate_many(prompts)
        hit_s = time.perf_counter() - start
    assert recorder.posts == 2 and again.summary.requests == 0
    assert again.summary.cache_hits == 3 and again.summary.total_tokens == 0
    assert again.summary.cached_tokens == first.summary.total_tokens + first.completions[0].prompt_tokens \
        + first.completions[0].completion_tokens
    assert [c.text for c in again.completions] == [c.text for c in first.completions]
    assert all(c.cached for c in again.completions) and hit_s < 1.0

    with ChatClient(client_config(url, tmp_path / "cache", max_tokens=4)) as client:
        longer = client.generate("Say yes.")  # another sampling parameter is another answer
    assert recorder.posts == 3 and not longer.cached
    assert longer.text.startswith(first.completions[0].text)  # greedy: the same tokens, then more

    files = list((tmp_path / "cache").rglob("*"))
    assert sum(f.is_file() for f in files) == 3
    assert all(SECRET.encode() not in f.read_bytes() for f in files if f.is_file())
    assert SECRET not in caplog.text


def test_budget_stops_cleanly_keeps_what_was_generated_and_resumes(server, tmp_path):
    url, recorder = server
    prompts = [f"Say the number {n}." for n in range(3)]
    cfg = client_config(url, tmp_path / "cache", max_total_tokens=100)
    with ChatClient(cfg) as client:
        result = client.generate_many(prompts)
    s = result.summary
    assert s.stopped_by_budget and 1 <= len(s.done) < len(prompts)
    assert sorted(s.done + s.skipped) == list(range(len(prompts)))
    assert all(result.completions[i] is not None for i in s.done)
    assert all(result.completions[i] is None for i in s.skipped)
    assert s.total_tokens <= 100 and recorder.posts == s.requests == len(s.done)

    with ChatClient(cfg.model_copy(update={"max_total_tokens": None})) as client:
        rest = client.generate_many(prompts)
    assert not rest.summary.stopped_by_budget and rest.summary.done == list(range(len(prompts)))
    assert rest.summary.cache_hits == len(s.done) and rest.summary.requests == len(s.skipped)
    assert [rest.completions[i].text for i in s.done] == [result.completions[i].text for i in s.done]


def test_retries_503_and_honours_retry_after_on_429(server, tmp_path):
    url, recorder = server
    recorder.fail_next(429, {"Retry-After": "1"})
    recorder.fail_next(503)
    start = time.perf_counter()
    with ChatClient(client_config(url, tmp_path / "cache")) as client:
        result = client.generate_many(["Say hello."])
    assert time.perf_counter() - start >= 1.0  # waited as the server asked
    assert recorder.posts == result.summary.requests == 3 and result.summary.retries == 2
    assert result.completions[0].text

    recorder.reset()
    for _ in range(3):
        recorder.fail_next(502)
    with ChatClient(client_config(url, tmp_path / "other", max_retries=2)) as client, \
            pytest.raises(TeacherAPIError, match=r"chat/completions: HTTP 502, still after 3 attempts"):
        client.generate_many(["Say hello."])
    assert recorder.posts == 3


def test_a_4xx_is_not_retried_and_names_the_endpoint_and_status(server, tmp_path, monkeypatch):
    url, recorder = server
    with ChatClient(client_config(url, tmp_path / "cache", model="no-such-model")) as client, \
            pytest.raises(TeacherAPIError) as refused:
        client.generate_many(["Say hello."])
    message = str(refused.value)
    assert f"{url}/chat/completions" in message and "HTTP 404" in message and "no-such-model" in message
    assert recorder.posts == 1

    monkeypatch.setenv(KEY_ENV, "sk-wrong")
    with ChatClient(client_config(url, tmp_path / "cache")) as client, \
            pytest.raises(TeacherAPIError, match=f"HTTP 401 .*check the API key in \\${KEY_ENV}") as denied:
        client.generate("Say hello.")
    assert "sk-wrong" not in str(denied.value) and recorder.posts == 2
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_connection_errors_are_retried_until_the_server_is_up(served, server, tmp_path):
    from distill.lm.server import running_server

    _, app = served  # the same app (the recorder in front), served a second time on a late port
    port = free_port()
    up, stop = threading.Event(), threading.Event()

    def start_late() -> None:
        time.sleep(0.8)
        with running_server(app, port=port):
            up.set()
            stop.wait(60)

    late = threading.Thread(target=start_late, daemon=True)
    late.start()
    try:
        cfg = client_config(f"http://127.0.0.1:{port}/v1", tmp_path / "cache", backoff_initial_s=0.2,
                            max_retries=8)
        with ChatClient(cfg) as client:
            result = client.generate_many(["Say hello."])
        assert up.is_set() and result.summary.retries >= 1 and result.completions[0].text
    finally:
        stop.set()
        late.join(10)

    dead = client_config(f"http://127.0.0.1:{free_port()}/v1", tmp_path / "dead", max_retries=1)
    with ChatClient(dead) as client, pytest.raises(TeacherAPIError, match="ConnectError.*after 2 attempts"):
        client.generate("Say hello.")


def test_never_more_requests_in_flight_than_the_limit(server, tmp_path):
    url, recorder = server
    prompts = [f"Say the letter {c}." for c in "abc"]
    with ChatClient(client_config(url, tmp_path / "cache", max_concurrency=2, max_tokens=1)) as client:
        result = client.generate_many(prompts)
    assert result.summary.done == [0, 1, 2]
    assert recorder.posts == 3 and recorder.max_in_flight == 2  # the limit, and reached: requests overlap


# --- without a server --------------------------------------------------------------------------

def fake_teacher(usage: tuple[int, int] | None, fail_on: set[str] = frozenset()):
    """A MockTransport answering each prompt with its own text and a fixed usage; 400 for ``fail_on``."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompt = body["messages"][-1]["content"]
        seen.append(prompt)
        if prompt in fail_on:
            return httpx.Response(400, json={"error": {"message": f"cannot answer {prompt!r}"}})
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": prompt.upper()},
                               "finish_reason": "stop"}]}
        if usage:
            answer["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handle), seen


def test_cost_budget_is_never_exceeded_with_parallel_requests(tmp_path):
    transport, seen = fake_teacher((40, 10))
    cfg = ChatClientConfig(model="m", cache_dir=str(tmp_path), max_tokens=10, max_concurrency=3, max_cost=0.5,
                           price_prompt_per_1k=1.0, price_completion_per_1k=2.0, api_key_env=None)
    progress = []
    with ChatClient(cfg, transport=transport) as client:
        result = client.generate_many([f"p{i}" for i in range(40)], on_progress=lambda d, t: progress.append(d))
    s = result.summary  # each answer costs 0.04 + 0.02 = 0.06
    assert s.stopped_by_budget and s.estimated_cost <= 0.5 and len(s.done) == len(seen) >= 5
    assert s.done == list(range(len(s.done)))  # in prompt order, no gaps
    assert [result.completions[i].text for i in s.done] == [f"P{i}" for i in s.done]
    assert progress == list(range(1, len(s.done) + 1))


def test_an_answer_without_usage_is_charged_its_worst_case(tmp_path):
    transport, seen = fake_teacher(None)
    cfg = ChatClientConfig(model="m", cache_dir=str(tmp_path), max_tokens=20, max_total_tokens=200,
                           api_key_env=None)
    with ChatClient(cfg, transport=transport) as client:
        result = client.generate_many([f"p{i}" for i in range(10)])
    s = result.summary  # worst case of "p0": 3 // 2 + 64 prompt + 20 completion = 85 tokens
    assert s.stopped_by_budget and s.done == [0, 1] and s.total_tokens == 170 and len(seen) == 2


def test_an_error_keeps_the_answers_already_received(tmp_path):
    transport, seen = fake_teacher((5, 5), fail_on={"p2"})
    cfg = ChatClientConfig(model="m", cache_dir=str(tmp_path), api_key_env=None, max_concurrency=1)
    with ChatClient(cfg, transport=transport) as client, pytest.raises(TeacherAPIError, match="HTTP 400"):
        client.generate_many(["p0", "p1", "p2", "p3"])
    assert seen == ["p0", "p1", "p2"]
    transport, seen = fake_teacher((5, 5))
    with ChatClient(cfg, transport=transport) as client:
        result = client.generate_many(["p0", "p1", "p2", "p3"])
    assert seen == ["p2", "p3"] and result.summary.cache_hits == 2


def test_cache_key_is_canonical_and_covers_model_messages_and_parameters():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "max_tokens": 5}
    assert cache_key(body) == cache_key(dict(reversed(body.items())))
    for change in ({"model": "n"}, {"temperature": 0.7}, {"max_tokens": 6},
                   {"messages": [{"role": "user", "content": "hi!"}]}):
        assert cache_key({**body, **change}) != cache_key(body)


def test_retry_after_and_config_checks():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: go now
    with pytest.raises(ValueError, match="max_cost needs price"):
        ChatClientConfig(model="m", max_cost=1.0)
    with pytest.raises(ValueError, match="max_concurrency"):
        ChatClientConfig(model="m", max_concurrency=0)


def test_lm_serve_command_is_registered():
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["lm-serve", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "packaged" in result.output
