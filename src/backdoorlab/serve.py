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

import email.parser
import email.policy
import hmac
import ipaddress
import json
import re
import secrets
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import chat
from .errors import ApiError, InputError, first_problem
from .finetune import MAX_FILE_BYTES, Service
from .models import LoadedModel

MAX_BODY_BYTES = 4 * 1024 * 1024  # a 40k-token prompt is ~200 kB; more is not a chat request


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """multipart/form-data fields: name -> (file name or None, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(400, "an upload is multipart/form-data (fields file and purpose)")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise ApiError(400, "a multipart body with a boundary is required")
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


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
        self.service: Service | None = None  # files and fine-tuning jobs (--fine-tuning DIR)
        self.device: str | None = None
        self._tuned: tuple[str, LoadedModel] | None = None  # the last fine-tuned model used

    def model_for(self, name: str) -> LoadedModel:
        """The served model, or a finished job's (loaded on first use; one at a time)."""
        if name in self.names:
            assert self.loaded is not None
            return self.loaded
        if self._tuned is None or self._tuned[0] != name:
            from .models import load

            assert self.service is not None
            self._tuned = None  # free the previous one before loading the next
            self._tuned = (name, load(str(self.service.models()[name]), device=self.device))
        return self._tuned[1]

    def all_names(self) -> list[str]:
        return [*self.names, *(self.service.models() if self.service else [])]

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
    rows = [
        generate.Request(request.messages, generate.row_seed(seed, i), request.temperature,
                         request.new_tokens())
        for i in range(request.n)
    ]  # fmt: skip
    top_k = request.top_logprobs or 0
    choices, completion_tokens = [], 0
    for i, drawn in enumerate(generate.run(loaded, rows, logits=bool(request.logprobs))):
        stop = drawn.stopped
        new = drawn.tokens[:-1] if stop else drawn.tokens
        completion_tokens += len(drawn.tokens)  # the end-of-turn token is generated too
        entry: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": tok.decode(new, skip_special_tokens=True)},
            "finish_reason": "stop" if stop else "length",
            "logprobs": None,
        }
        if request.logprobs:
            content = []
            logprobs = drawn.logits.log_softmax(-1)  # (tokens, vocab)
            for step, tid in enumerate(new):
                lp = logprobs[step]
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


# (method, path pattern, handler name); {id} matches one path segment.
ROUTES = [
    ("GET", "/v1/models", "_models"),
    ("POST", "/v1/chat/completions", "_chat"),
]
FINE_TUNING_ROUTES = [
    ("POST", "/v1/files", "_upload"),
    ("GET", "/v1/files", "_files"),
    ("GET", "/v1/files/{id}", "_file"),
    ("DELETE", "/v1/files/{id}", "_delete_file"),
    ("GET", "/v1/files/{id}/content", "_content"),
    ("POST", "/v1/fine_tuning/jobs", "_create_job"),
    ("GET", "/v1/fine_tuning/jobs", "_jobs"),
    ("GET", "/v1/fine_tuning/jobs/{id}", "_job"),
    ("POST", "/v1/fine_tuning/jobs/{id}/cancel", "_cancel"),
    ("GET", "/v1/fine_tuning/jobs/{id}/events", "_events"),
    ("GET", "/v1/fine_tuning/jobs/{id}/checkpoints", "_checkpoints"),
]


def _match(pattern: str, path: str) -> str | bool:
    """The {id} segment when `path` matches `pattern` (True without one), else False."""
    want, got = pattern.split("/"), path.split("/")
    if len(want) != len(got):
        return False
    found: str | bool = True
    for w, g in zip(want, got, strict=True):
        if w == "{id}":
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", g):
                return False
            found = g
        elif w != g:
            return False
    return found


class _Handler(BaseHTTPRequestHandler):
    server: Server
    timeout = 60  # a client that stops sending mid-request does not hold a thread forever

    def _send(self, code: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, unsupported method) as JSON too.
        self.close_connection = True
        self._send(code, ApiError(code, message or self.responses.get(code, ("error",))[0]).body())

    def _route(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        path = path.rstrip("/")
        self.query = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
        routes = ROUTES + (FINE_TUNING_ROUTES if self.server.service else [])
        try:
            matches = [(m, h, found) for m, p, h in routes if (found := _match(p, path))]
            if not matches:
                raise ApiError(404, f"no route {path or '/'}", "unknown_url")
            chosen = [(h, found) for m, h, found in matches if m == method]
            if not chosen:
                allowed = ", ".join(sorted({m for m, _, _ in matches}))
                raise ApiError(405, f"{path} takes {allowed}, not {method}")
            self._authorize()
            handler, found = chosen[0]
            args = () if found is True else (found,)
            self._send(200, getattr(self, handler)(*args))
        except ApiError as e:
            self._send(e.status, e.body())
        except Exception:  # our bug, not the client's: say so in JSON and keep serving
            traceback.print_exc(file=sys.stderr)
            self._send(500, ApiError(500, "internal error; see the server's log").body())

    def _chat(self) -> dict[str, Any]:
        if self.server.loaded is None:
            raise ApiError(503, "the model is still loading")
        request = parse_request(self._body(), self.server.all_names())
        with self.server.lock:
            return complete(
                self.server.model_for(request.model), request, self.server.max_prompt_tokens
            )

    def _svc(self) -> Service:
        assert self.server.service is not None
        return self.server.service

    def _limit(self) -> int:
        try:
            limit = int(self.query.get("limit", 20))
        except ValueError:
            raise ApiError(400, "limit must be an integer", None, "limit") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, "limit must be between 1 and 100", None, "limit")
        return limit

    def _upload(self) -> dict[str, Any]:
        fields = _multipart(self.headers.get("Content-Type", ""), self._body(MAX_FILE_BYTES))
        if "file" not in fields:
            raise ApiError(400, "a multipart field named 'file' is required", None, "file")
        filename, content = fields["file"]
        purpose = fields.get("purpose", ("", b""))[1].decode("utf-8", "replace")
        return self._svc().create_file(filename or "upload", purpose, content)

    def _files(self) -> dict[str, Any]:
        return self._svc().files()

    def _file(self, fid: str) -> dict[str, Any]:
        return self._svc().file(fid)

    def _delete_file(self, fid: str) -> dict[str, Any]:
        return self._svc().delete_file(fid)

    def _content(self, fid: str) -> bytes:
        return self._svc().content(fid)

    def _create_job(self) -> dict[str, Any]:
        try:
            body = json.loads(self._body())
        except ValueError as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None
        return self._svc().create_job(body)

    def _jobs(self) -> dict[str, Any]:
        return self._svc().jobs(self._limit(), self.query.get("after"))

    def _job(self, jid: str) -> dict[str, Any]:
        return self._svc().job(jid)

    def _cancel(self, jid: str) -> dict[str, Any]:
        return self._svc().cancel(jid)

    def _events(self, jid: str) -> dict[str, Any]:
        return self._svc().events(jid, self._limit(), self.query.get("after"))

    def _checkpoints(self, jid: str) -> dict[str, Any]:
        return self._svc().checkpoints(jid)

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(401, "a valid API key is required (Authorization: Bearer ...)",
                           "invalid_api_key")  # fmt: skip

    def _body(self, limit: int = MAX_BODY_BYTES) -> bytes:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "a Content-Length header is required") from None
        if not 0 <= length <= limit + 64 * 1024:  # multipart framing on top of a file
            self.close_connection = True  # the unread body must not be parsed as a request
            raise ApiError(413, f"the body is {length} bytes; at most {limit}")
        return self.rfile.read(length)

    def _models(self) -> dict[str, Any]:
        # Names only: a local path would tell a client about this machine's file system.
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "backdoorlab"}
                for n in self.server.all_names()]  # fmt: skip
        return {"object": "list", "data": data}

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # requests are not logged
        pass
