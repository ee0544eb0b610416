"""Serve a causal-LM folder behind a small OpenAI-compatible API (``/v1/chat/completions``, ``/v1/models``).

It makes any local teacher (the packaged SmolLM2 by default) look like a black-box API teacher,
so the API client is tested against real HTTP and a real model, and a local teacher can be shared
by several labelling processes. One model, one generation at a time (requests queue on a lock):
a teaching aid and a test double, not a production inference server. It binds 127.0.0.1 unless
told otherwise; an optional bearer key guards it when it must listen more widely.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from distill.lm.teacher import CausalLM

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        """The message text; OpenAI's list-of-parts form keeps only its text parts."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(BaseModel):
    """The part of the chat-completions request this server honours; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stream: Literal[False] = False


class APIError(Exception):
    """An OpenAI-style error answer."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


def chat_complete(lm: CausalLM, request: ChatRequest, max_new_tokens: int) -> dict[str, Any]:
    """Generate one answer: chat template, then greedy (temperature 0) or seeded sampling."""
    import torch

    tokenizer, model = lm.tokenizer, lm.model
    messages = [{"role": m.role, "content": m.text()} for m in request.messages]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt").to(model.device)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and prompt_tokens + max_new_tokens > limit:
        raise APIError(400, f"prompt ({prompt_tokens} tokens) + max_tokens ({max_new_tokens}) exceeds the "
                            f"model's context length ({limit})", code="context_length_exceeded")
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    sample = request.temperature > 0
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample,
                               "pad_token_id": tokenizer.pad_token_id}
    if sample:
        options.update(temperature=request.temperature, top_p=request.top_p, top_k=0)
        if request.seed is not None:
            torch.manual_seed(request.seed)  # the caller holds the generation lock, so this is ours alone
    if stops:
        options.update(stop_strings=stops, tokenizer=tokenizer)
    with torch.inference_mode():
        output = model.generate(**inputs, **options)
    new = output[0, prompt_tokens:]
    text = tokenizer.decode(new, skip_special_tokens=True)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    finish = "stop" if len(new) and int(new[-1]) in eos else "length"
    for stop in stops:  # OpenAI leaves the stop sequence out of the text
        if stop in text:
            text, finish = text[:text.index(stop)], "stop"
    return {"text": text, "finish_reason": finish, "prompt_tokens": prompt_tokens,
            "completion_tokens": int(len(new))}


def create_app(lm: CausalLM, model_name: str, *, api_key: str | None = None, default_max_tokens: int = 256,
               max_tokens_limit: int = 2048) -> FastAPI:
    """A FastAPI app serving ``lm`` as ``model_name``; with ``api_key``, requests must carry it as a bearer."""
    app = FastAPI(title="distill teacher", docs_url=None, redoc_url=None, openapi_url=None)
    generation_lock = threading.Lock()
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse({"error": {"message": exc.message, "type": exc.kind, "param": None, "code": exc.code}},
                            status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return await _api_error(_, APIError(400, f"invalid request: {where}"))

    def _authorize(request: Request) -> None:
        if api_key is None:
            return
        sent = request.headers.get("authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key (send Authorization: Bearer <key>)",
                           kind="authentication_error", code="invalid_api_key")

    @app.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        _authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "distill"}]}

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatRequest, request: Request) -> dict[str, Any]:
        # A plain def: FastAPI runs it on its thread pool, so generation never blocks the event loop.
        _authorize(request)
        if body.model != model_name:
            raise APIError(404, f"model {body.model!r} is not served here; this server has {model_name!r}",
                           code="model_not_found")
        max_new = body.max_tokens or body.max_completion_tokens or default_max_tokens
        if max_new > max_tokens_limit:
            raise APIError(400, f"max_tokens {max_new} is above this server's limit of {max_tokens_limit}")
        with generation_lock:
            answer = chat_complete(lm, body, max_new)
        usage = {"prompt_tokens": answer["prompt_tokens"], "completion_tokens": answer["completion_tokens"],
                 "total_tokens": answer["prompt_tokens"] + answer["completion_tokens"]}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer["text"]},
                             "finish_reason": answer["finish_reason"], "logprobs": None}]}

    return app


def load_for_serving(folder) -> CausalLM:
    """Load a causal-LM folder on the best device (CUDA when present)."""
    from distill.lm.teacher import load_causal_lm
    from distill.models import pick_device

    lm = load_causal_lm(folder)
    lm.model.to(pick_device())
    return lm


@contextlib.contextmanager
def running_server(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` with uvicorn on a background thread; yield its base URL (``http://host:port/v1``)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))
    thread = threading.Thread(target=server.run, name="lm-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the LM server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(lm: CausalLM, model_name: str, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None) -> None:
    """Serve until interrupted (the ``distill lm-serve`` command)."""
    import uvicorn

    if host not in LOOPBACK and api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    uvicorn.run(create_app(lm, model_name, api_key=api_key), host=host, port=port, log_level="info")
