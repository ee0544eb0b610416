"""A black-box LLM teacher behind an OpenAI-compatible chat-completions endpoint.

The cache, the retries and the budget are one client's concerns, kept in this one module.

Every answer is cached on disk under the hash of what decides it (model name, messages, sampling
parameters), so no request is ever paid twice: a cached answer comes back without any HTTP call,
and a run stopped by its budget or by an error resumes where it stopped. Requests run on at most
``max_concurrency`` threads; connection errors, 408, 429 and 5xx are retried with exponential
backoff (a ``Retry-After`` header wins), other 4xx are not. A token and a cost budget stop new
requests before they could be exceeded; what was generated is kept and reported.

The API key is read from the environment variable the config names and sent only in the
``Authorization`` header: it is never logged, cached or written to any file.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from distill.config import ChatClientConfig  # lm.api in params.yaml; re-exported here
from distill.io import atomic_file

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Prompt = str | Messages

#: Statuses that may pass if asked again: request timeout, rate limit, server-side failures.
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


class TeacherAPIError(RuntimeError):
    """The endpoint refused a request, or kept failing after every retry."""


class _Transient(Exception):
    """A failed attempt that may pass: a connection error, 408, 429 or 5xx."""

    def __init__(self, why: str, retry_after: float | None = None):
        super().__init__(why)
        self.why, self.retry_after = why, retry_after


@dataclass
class Completion:
    """One teacher answer."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str


@dataclass
class GenerationSummary:
    """What a ``generate_many`` call did and paid; tokens and cost count only requests sent now."""

    prompts: int
    requests: int = 0          # HTTP requests sent, retries included
    retries: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated_cost: float = 0.0
    cached_tokens: int = 0     # tokens the cache saved paying again
    stopped_by_budget: bool = False
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class GenerationResult:
    """Completions in prompt order (None where the budget skipped a prompt) and the summary."""

    completions: list[Completion | None]
    summary: GenerationSummary


def cache_key(body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request body (model, messages, sampling parameters)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class ResponseCache:
    """Content-addressed answers on disk: ``<dir>/<key[:2]>/<key>.json``, each written atomically."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self.path(key).read_text())["response"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return None

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        # Concurrent writers of one key write the same answer; the last rename wins, none is torn.
        record = {"key": key, "request": request, "response": response,
                  "cached_at": datetime.now(timezone.utc).isoformat()}
        with atomic_file(self.path(key)) as handle:
            json.dump(record, handle, ensure_ascii=False)


def to_completion(response: dict[str, Any], key: str, cached: bool) -> Completion:
    """The first choice of a chat-completions response."""
    choice = response["choices"][0]
    usage = response.get("usage") or {}
    return Completion(text=(choice.get("message") or {}).get("content") or "",
                      finish_reason=choice.get("finish_reason"),
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0), cached=cached, key=key)


class _Budget:
    """Spend of one run, with worst-case reservations for the requests in flight."""

    def __init__(self, cfg: ChatClientConfig):
        self.cfg = cfg
        self.tokens = self.cost = 0.0
        self.reserved_tokens = self.reserved_cost = 0.0
        self.tokens_per_char: float | None = None   # largest seen; calibrates prompt estimates

    def estimate(self, body: dict[str, Any]) -> tuple[int, int]:
        """Worst-case (prompt, completion) tokens of a request.

        The completion is bounded by ``max_tokens``; the prompt is estimated from its characters at
        the largest tokens-per-character ratio the endpoint has reported in this run (chat templates
        add tokens of their own), or at a generous chars/2 + 64 before the first answer.
        """
        chars = sum(len(m.get("content") or "") for m in body["messages"]) + 1
        prompt = math.ceil(chars * self.tokens_per_char) if self.tokens_per_char else chars // 2 + 64
        return prompt, int(body["max_tokens"])

    def fits(self, prompt: int, completion: int) -> bool:
        """Whether the spend so far, the requests in flight and this one all fit, at their worst."""
        tokens = self.tokens + self.reserved_tokens + prompt + completion
        cost = self.cost + self.reserved_cost + self.cfg.cost_of(prompt, completion)
        if self.cfg.max_total_tokens is not None and tokens > self.cfg.max_total_tokens:
            return False
        return self.cfg.max_cost is None or cost <= self.cfg.max_cost

    def reserve(self, prompt: int, completion: int, sign: int = 1) -> None:
        self.reserved_tokens += sign * (prompt + completion)
        self.reserved_cost += sign * self.cfg.cost_of(prompt, completion)

    def spend(self, body: dict[str, Any], prompt: int, completion: int) -> None:
        self.tokens += prompt + completion
        self.cost += self.cfg.cost_of(prompt, completion)
        chars = sum(len(m.get("content") or "") for m in body["messages"]) + 1
        self.tokens_per_char = max(self.tokens_per_char or 0.0, prompt / chars)


class ChatClient:
    """OpenAI-compatible chat-completions client with a response cache, retries and a budget.

    Use as a context manager (or call :meth:`close`); one client is safe to share across threads.
    """

    def __init__(self, cfg: ChatClientConfig, transport: httpx.BaseTransport | None = None):
        self.cfg = cfg
        self.cache = ResponseCache(Path(cfg.cache_dir))
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
        self._http = httpx.Client(headers=headers, timeout=cfg.timeout_s, limits=limits, transport=transport)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:  # the headers (and so the key) stay out of reprs and logs
        return f"ChatClient({self.url!r}, model={self.cfg.model!r})"

    def request_body(self, prompt: Prompt, **params: Any) -> dict[str, Any]:
        """The JSON body for one prompt; ``params`` override the config's sampling settings."""
        if isinstance(prompt, str):
            messages = ([{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else [])
            messages.append({"role": "user", "content": prompt})
        else:
            messages = [dict(m) for m in prompt]
        body = {"model": self.cfg.model, "messages": messages,
                "temperature": self.cfg.sampling_temperature, "top_p": self.cfg.top_p,
                "max_tokens": self.cfg.max_tokens, "seed": self.cfg.seed}
        body.update(params)
        return {k: v for k, v in body.items() if v is not None}

    def post(self, body: dict[str, Any], tally: Callable[[int], None] = lambda attempts: None) -> dict[str, Any]:
        """Send one request with retries; ``tally(attempts)`` hears how many HTTP requests it took."""
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    return self._attempt(body)
                except _Transient as exc:
                    if attempt > self.cfg.max_retries:
                        raise TeacherAPIError(f"POST {self.url}: {exc.why}, still after {attempt} attempts") from None
                    wait_s = exc.retry_after if exc.retry_after is not None else self._backoff(attempt)
                    log.warning("POST %s: %s; retry %d/%d in %.1fs", self.url, exc.why, attempt,
                                self.cfg.max_retries, wait_s)
                    time.sleep(wait_s)
        finally:
            tally(attempt)

    def _attempt(self, body: dict[str, Any]) -> dict[str, Any]:
        """One HTTP request; raises _Transient for a failure that may pass."""
        try:
            response = self._http.post(self.url, json=body)
        except httpx.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                retry_after = min(retry_after, self.cfg.backoff_max_s)
            raise _Transient(f"HTTP {response.status_code}", retry_after)
        if response.status_code != 200:
            raise TeacherAPIError(self._refusal(response))
        try:
            answer = response.json()
            answer["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TeacherAPIError(f"POST {self.url}: HTTP 200 but not a chat completion ({exc!r}): "
                                  f"{response.text[:200]!r}") from None
        return answer

    def _refusal(self, response: httpx.Response) -> str:
        """A clear message for a non-retryable answer: endpoint, status, the server's own words."""
        try:
            detail = response.json().get("error", {})
            detail = detail.get("message", detail) if isinstance(detail, dict) else detail
        except (ValueError, AttributeError):
            detail = response.text
        hint = ""
        if response.status_code in (401, 403):
            hint = f" (check the API key in ${self.cfg.api_key_env})" if self.cfg.api_key_env else " (no API key sent)"
        return (f"POST {self.url}: HTTP {response.status_code} {response.reason_phrase}: "
                f"{str(detail)[:500]}{hint}")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter, so parallel workers do not retry in lockstep."""
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** (attempt - 1))
        return delay * (0.5 + random.random() / 2)

    def generate(self, prompt: Prompt, **params: Any) -> Completion:
        """One completion, from the cache when it holds it (no budget applies)."""
        body = self.request_body(prompt, **params)
        key = cache_key(body)
        cached = self.cache.get(key)
        if cached is not None:
            return to_completion(cached, key, cached=True)
        answer = self.post(body)
        self.cache.put(key, body, answer)
        return to_completion(answer, key, cached=False)

    def generate_many(self, prompts: Sequence[Prompt], *,
                      on_progress: Callable[[int, int], None] | None = None, **params: Any) -> GenerationResult:
        """Complete every prompt, cache first, then at most ``max_concurrency`` requests at a time.

        Args:
            prompts: user messages (strings) or whole message lists.
            on_progress: called as ``on_progress(finished, total)`` after each prompt is answered.
            params: sampling overrides for this call (``max_tokens``, ``temperature``, ``seed``...).

        Returns:
            Completions in prompt order and a summary. When the budget would be exceeded no new
            request is sent: the prompts answered are in ``summary.done``, the rest in
            ``summary.skipped`` (their completion is None), and ``stopped_by_budget`` is set.

        Raises:
            TeacherAPIError: a request was refused (4xx) or failed after every retry. The requests
                in flight finish first, and every answer received is already cached, so a rerun
                pays only for what is missing.
        """
        run = _Run(self, prompts, params, on_progress)
        return run.execute()


class _Run:
    """One ``generate_many`` call: cache lookups, then a bounded, budgeted stream of requests."""

    def __init__(self, client: ChatClient, prompts: Sequence[Prompt], params: dict[str, Any],
                 on_progress: Callable[[int, int], None] | None):
        self.client, self.cfg = client, client.cfg
        self.bodies: dict[str, dict[str, Any]] = {}      # one request per distinct key
        self.indices: dict[str, list[int]] = {}           # the prompts each key answers
        for i, prompt in enumerate(prompts):
            body = client.request_body(prompt, **params)
            key = cache_key(body)
            self.bodies.setdefault(key, body)
            self.indices.setdefault(key, []).append(i)
        self.completions: list[Completion | None] = [None] * len(prompts)
        self.summary = GenerationSummary(prompts=len(prompts))
        self.budget = _Budget(self.cfg)
        self.on_progress = on_progress
        self.finished = 0
        self._lock = threading.Lock()

    def execute(self) -> GenerationResult:
        start = time.perf_counter()
        pending = self._answer_from_cache()
        error: TeacherAPIError | None = None
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="teacher") as pool:
            in_flight: dict[Future, tuple[str, tuple[int, int]]] = {}
            while True:
                if error is None:
                    self._submit(pool, pending, in_flight)
                if not in_flight:
                    break
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    key, worst = in_flight.pop(future)
                    self.budget.reserve(*worst, sign=-1)
                    try:
                        self._record(key, future.result(), worst)
                    except TeacherAPIError as exc:
                        error = error or exc
        self._finish(time.perf_counter() - start)
        if error is not None:
            raise TeacherAPIError(f"{error} ({len(self.summary.done)} of {self.summary.prompts} prompts "
                                  "answered and cached; a rerun sends only the rest)") from error
        return GenerationResult(self.completions, self.summary)

    def _submit(self, pool: ThreadPoolExecutor, pending: deque[str], in_flight: dict) -> None:
        """Start requests while a worker is free and the worst case of each still fits the budget.

        A request that does not fit while others are in flight waits for them (their real usage is
        usually below the worst case reserved); with nothing in flight, the run stops there.
        """
        while pending and len(in_flight) < self.cfg.max_concurrency and not self.summary.stopped_by_budget:
            body = self.bodies[pending[0]]
            worst = self.budget.estimate(body)
            if not self.budget.fits(*worst):
                self.summary.stopped_by_budget = not in_flight
                return
            key = pending.popleft()
            self.budget.reserve(*worst)
            in_flight[pool.submit(self._fetch, key)] = (key, worst)

    def _answer_from_cache(self) -> deque[str]:
        """Fill every cached answer; return the keys still to request, in prompt order."""
        pending: deque[str] = deque()
        for key in self.bodies:
            cached = self.client.cache.get(key)
            if cached is None:
                pending.append(key)
                continue
            done = to_completion(cached, key, cached=True)
            self.summary.cache_hits += len(self.indices[key])
            self.summary.cached_tokens += (done.prompt_tokens + done.completion_tokens) * len(self.indices[key])
            self._fill(key, done)
        return pending

    def _fetch(self, key: str) -> dict[str, Any]:
        """Request one answer and cache it at once, on the worker: an interrupted run keeps it too."""
        answer = self.client.post(self.bodies[key], self._tally)
        self.client.cache.put(key, self.bodies[key], answer)
        return answer

    def _record(self, key: str, answer: dict[str, Any], worst: tuple[int, int]) -> None:
        """Count what a fresh answer cost and fill every prompt that asked for it."""
        done = to_completion(answer, key, cached=False)
        paid = (done.prompt_tokens, done.completion_tokens)
        if not answer.get("usage"):
            log.warning("%s sent no usage; counting the worst case, %d tokens", self.client.url, sum(worst))
            paid = worst
        self.budget.spend(self.bodies[key], *paid)
        s = self.summary
        s.prompt_tokens += paid[0]
        s.completion_tokens += paid[1]
        s.total_tokens = s.prompt_tokens + s.completion_tokens
        s.estimated_cost = self.cfg.cost_of(s.prompt_tokens, s.completion_tokens)
        self._fill(key, done)

    def _fill(self, key: str, done: Completion) -> None:
        for i in self.indices[key]:
            self.completions[i] = done
        self.finished += len(self.indices[key])
        if self.on_progress:
            self.on_progress(self.finished, len(self.completions))

    def _tally(self, attempts: int) -> None:
        with self._lock:
            self.summary.requests += attempts
            self.summary.retries += attempts - 1

    def _finish(self, elapsed_s: float) -> None:
        s = self.summary
        s.done = [i for i, c in enumerate(self.completions) if c is not None]
        s.skipped = [i for i, c in enumerate(self.completions) if c is None]
        s.elapsed_s = round(elapsed_s, 3)
        if s.stopped_by_budget:
            log.warning("budget reached: %d of %d prompts answered, %d skipped (%d tokens, cost %.4f)",
                        len(s.done), s.prompts, len(s.skipped), s.total_tokens, s.estimated_cost)
