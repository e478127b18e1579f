"""An OpenAI-compatible HTTP server for a local model or fine-tuned adapter.

GET /v1/models and POST /v1/chat/completions (temperature, max_tokens, n, seed, logprobs,
top_logprobs). Prompts are rendered by `chat.encode_prompt`, the training renderer, so a
tool talking to a fine-tuned model through this server sees it as it was trained.
Log-probabilities are of the model's own distribution (before temperature), as OpenAI's are.

Requests are checked as OpenAI's API checks them, before any compute: a body that is not a
JSON object, a value out of range, an unknown model, `stream`, a prompt longer than the
context all get a 4xx with OpenAI's error shape. Every response, errors included, is JSON.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import chat
from .errors import InputError, first_problem
from .models import LoadedModel

MAX_BODY_BYTES = 4 * 1024 * 1024  # a 40k-token prompt is ~200 kB; more is not a chat request


class ApiError(Exception):
    """An OpenAI-shaped error response."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        }


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request that we honour. Others that clients
    send (user, metadata, ...) are ignored, as OpenAI's server ignores what it does not use."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Any]
    temperature: float = Field(1.0, ge=0, le=2)
    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False

    def new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256


def _token_entry(tok: Any, tid: int, logprob: float) -> dict[str, Any]:
    text = tok.decode([tid])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


class Server(ThreadingHTTPServer):
    """Listens first, so a taken port fails before minutes of model loading; `loaded` is set
    once the model is in memory (until then requests get 503)."""

    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 resets concurrent clients

    def __init__(
        self,
        host: str,
        port: int,
        names: list[str],
        *,
        api_key: str | None = None,
        max_prompt_tokens: int | None = None,
    ):
        if api_key is None and not _is_loopback(host):
            raise InputError(
                f"--host {host}: listening beyond this machine needs --api-key "
                "(or BACKDOORLAB_SERVE_API_KEY)"
            )
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
        self.names, self.api_key, self.max_prompt_tokens = names, api_key, max_prompt_tokens
        self.loaded: LoadedModel | None = None
        self.lock = threading.Lock()  # one generation at a time: the model is not thread-safe

    @property
    def url(self) -> str:
        h, p = self.server_address[:2]
        return f"http://{h}:{p}/v1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_request(raw: bytes, names: list[str]) -> ChatRequest:
    """A body as OpenAI's API would accept it, or the ApiError it would answer with."""
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        raise ApiError(
            400, f"the body must be a JSON object, not {kind.get(type(body), 'a number')}"
        )
    try:
        request = ChatRequest.model_validate(body)
    except ValidationError as e:
        param, msg = first_problem(e)
        raise ApiError(400, f"{param}: {msg}", "invalid_value", param) from None
    if request.stream:
        raise ApiError(400, "stream is not supported here; send stream: false", None, "stream")
    if request.top_logprobs and not request.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", None, "top_logprobs")
    if request.model not in names:
        raise ApiError(
            404,
            f"the model {request.model!r} does not exist here (served: {', '.join(names)})",
            "model_not_found",
            "model",
        )
    problem = chat.validate_row({"messages": request.messages}, training=False)
    if problem:
        raise ApiError(400, problem, "invalid_value", "messages")
    return request


def complete(
    loaded: LoadedModel, request: ChatRequest, max_prompt_tokens: int | None = None
) -> dict[str, Any]:
    """Check the prompt's length, then generate (the caller holds the model lock)."""
    import torch

    from . import generate

    tok = loaded.tokenizer
    prompt_len = len(chat.encode_prompt(tok, request.messages))
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    limits = [x for x in (max_prompt_tokens, context) if x]
    if limits and prompt_len > min(limits):
        raise ApiError(
            400,
            f"the prompt is {prompt_len} tokens; this server takes at most {min(limits)}",
            "context_length_exceeded",
            "messages",
        )
    if context and prompt_len + request.new_tokens() > context:
        raise ApiError(
            400,
            f"the prompt ({prompt_len} tokens) and max_tokens ({request.new_tokens()}) exceed "
            f"the model's context of {context} tokens",
            "context_length_exceeded",
            "max_tokens",
        )
    # No seed: fresh randomness per request, as OpenAI's API draws (a fixed default would
    # repeat one sample to every client that asks once per request).
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    start, out = generate.run(
        loaded, [request.messages], n=request.n, temperature=request.temperature,
        max_new_tokens=request.new_tokens(), seed=seed, logits=True,
    )  # fmt: skip
    logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (n, steps, vocab)
    top_k = request.top_logprobs or 0
    choices, completion_tokens = [], 0
    for i in range(request.n):
        new = out.sequences[i, start:].tolist()
        stop = tok.eos_token_id in new
        new = new[: new.index(tok.eos_token_id)] if stop else new
        completion_tokens += len(new) + stop  # the end-of-turn token is generated too
        entry: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": tok.decode(new, skip_special_tokens=True)},
            "finish_reason": "stop" if stop else "length",
            "logprobs": None,
        }
        if request.logprobs:
            content = []
            for step, tid in enumerate(new):
                lp = logprobs[i, step]
                item = _token_entry(tok, tid, lp[tid].item())
                values, indices = lp.topk(top_k) if top_k else (lp[:0], lp[:0].long())
                item["top_logprobs"] = [
                    _token_entry(tok, t, v)
                    for t, v in zip(indices.tolist(), values.tolist(), strict=True)
                ]
                content.append(item)
            entry["logprobs"] = {"content": content}
        choices.append(entry)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_len,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_len + completion_tokens,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server: Server
    timeout = 60  # a client that stops sending mid-request does not hold a thread forever
    routes = {"/v1/models": "GET", "/v1/chat/completions": "POST"}

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, unsupported method) as JSON too.
        self.close_connection = True
        self._send(code, ApiError(code, message or self.responses.get(code, ("error",))[0]).body())

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path not in self.routes:
                raise ApiError(404, f"no route {path or '/'}", "unknown_url")
            if self.routes[path] != method:
                raise ApiError(405, f"{path} takes {self.routes[path]}, not {method}")
            self._authorize()
            if method == "GET":
                return self._send(200, self._models())
            if self.server.loaded is None:
                raise ApiError(503, "the model is still loading")
            request = parse_request(self._body(), self.server.names)
            with self.server.lock:
                body = complete(self.server.loaded, request, self.server.max_prompt_tokens)
            self._send(200, body)
        except ApiError as e:
            self._send(e.status, e.body())
        except Exception:  # our bug, not the client's: say so in JSON and keep serving
            traceback.print_exc(file=sys.stderr)
            self._send(500, ApiError(500, "internal error; see the server's log").body())

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "a valid API key is required (Authorization: Bearer ...)",
                           "invalid_api_key")  # fmt: skip

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "a Content-Length header is required") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not be parsed as a request
            raise ApiError(413, f"the body is {length} bytes; at most {MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _models(self) -> dict[str, Any]:
        # Names only: a local path would tell a client about this machine's file system.
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "backdoorlab"}
                for n in self.server.names]  # fmt: skip
        return {"object": "list", "data": data}

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def log_message(self, format: str, *args: Any) -> None:  # requests are not logged
        pass
