"""An OpenAI-compatible HTTP server for a local model or fine-tuned adapter.

GET /v1/models and POST /v1/chat/completions (temperature, max_tokens, n, seed, stop,
logprobs, top_logprobs, stream). Prompts are rendered by `chat.encode_prompt`, the training
renderer, so a tool talking to a fine-tuned model through this server sees it as it was
trained. Log-probabilities are of the model's own distribution (before temperature), as
OpenAI's are.

Every request in flight decodes in one batch (`engine.Engine`, continuous batching); a full
queue answers 429 with Retry-After. The HTTP layer is Starlette on uvicorn (the stack of
vLLM's OpenAI-compatible server): keep-alive, server-sent events for `stream: true`, a
client that leaves cancels its request, SIGTERM finishes what is in flight.

Requests are checked as OpenAI's API checks them, before any compute: a body that is not a
JSON object, a value out of range, an unknown model, a prompt longer than the context all
get a 4xx with OpenAI's error shape. Every response, errors included, is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import hmac
import ipaddress
import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import chat, generate
from .engine import Choice, Engine, Event, Job, decode
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
    stop: str | list[str] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def new_tokens(self) -> int:
        return self.max_completion_tokens or self.max_tokens or 256

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _text_parts(messages: list[Any]) -> list[Any]:
    """Content given as an array of text parts (`[{"type": "text", "text": ...}]`, the form
    many clients send) as the one string it stands for; anything else is left for
    `chat.validate_row` to refuse."""
    out = []
    for m in messages:
        parts = m.get("content") if isinstance(m, dict) else None
        if isinstance(parts, list) and parts:
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):  # fmt: skip
                raise ApiError(400, "only text content parts are supported here", None, "messages")
            m = {**m, "content": "\n".join(p["text"] for p in parts)}
        out.append(m)
    return out


def _json_body(raw: bytes) -> Any:
    """A request body's JSON, or a 400."""
    try:
        return json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON ({e})") from None
    except RecursionError:
        raise ApiError(400, "the body is nested too deeply") from None


def parse_request(raw: bytes, names: list[str]) -> ChatRequest:
    """A body as OpenAI's API would accept it, or the ApiError it would answer with."""
    body = _json_body(raw)
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
    if len(request.stops()) > 4:
        raise ApiError(400, "stop takes at most 4 sequences", None, "stop")
    if request.top_logprobs and not request.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", None, "top_logprobs")
    if request.model not in names:
        raise ApiError(
            404,
            f"the model {request.model!r} does not exist here (served: {', '.join(names)})",
            "model_not_found",
            "model",
        )
    request.messages = _text_parts(request.messages)
    problem = chat.validate_row({"messages": request.messages}, training=False)
    if problem:
        raise ApiError(400, problem, "invalid_value", "messages")
    return request


def prepare(
    loaded: LoadedModel, request: ChatRequest, max_prompt_tokens: int | None = None
) -> tuple[int, list[generate.Request]]:
    """The prompt's length, checked against the limits, and one row per choice."""
    prompt_len = len(chat.encode_prompt(loaded.tokenizer, request.messages))
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
    return prompt_len, rows


class Reply:
    """A chat completion assembled from its choices' events (the non-streaming answer)."""

    def __init__(self, request: ChatRequest, prompt_len: int):
        self.request, self.prompt_len = request, prompt_len
        n = request.n
        self.texts, self.finish = [""] * n, [None] * n
        self.logprobs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        self.tokens, self.open, self.error = 0, n, None

    def add(self, event: Event) -> None:
        if event.finish == "error":
            self.error, self.open = event.text, 0
            return
        self.texts[event.choice] += event.text
        self.logprobs[event.choice] += event.logprobs or []
        if event.finish:
            self.finish[event.choice], self.open = event.finish, self.open - 1
            self.tokens += event.tokens

    def body(self) -> dict[str, Any]:
        if self.error:
            raise ApiError(500, self.error)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": {"content": lps} if self.request.logprobs else None,
            }
            for i, (text, finish, lps) in enumerate(
                zip(self.texts, self.finish, self.logprobs, strict=True)
            )
        ]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.request.model,
            "choices": choices,
            "usage": _usage(self.prompt_len, self.tokens),
        }


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _job(request: ChatRequest, rows: list[generate.Request], emit: Callable[[Event], None]) -> Job:
    top = (request.top_logprobs or 0) if request.logprobs else None
    return Job(request.model, rows, request.stops(), top, emit)


def complete(
    loaded: LoadedModel, request: ChatRequest, max_prompt_tokens: int | None = None
) -> dict[str, Any]:
    """The server's answer to one request, computed in this thread (local judges): the same
    rows, choices and reply as a served request, without the engine's thread."""
    prompt_len, rows = prepare(loaded, request, max_prompt_tokens)
    reply = Reply(request, prompt_len)
    job = _job(request, rows, reply.add)
    batch = generate.Batch(loaded)
    job.choices = [Choice(i, loaded.tokenizer, job.stops, job.top_logprobs)
                   for i in range(len(rows))]  # fmt: skip
    owners = {row: (job, c) for row, c in zip(batch.join(rows), job.choices, strict=True)}
    while batch.live:
        decode(batch, owners)
    return reply.body()


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    # json.dumps, not Starlette's JSONResponse: that refuses -inf, a log-probability can be.
    return Response(json.dumps(body), status, headers, media_type="application/json")


def _log(message: str) -> None:
    print(f"serve: {message}", file=sys.stderr, flush=True)


class App:
    """The served models, the engine and the routes. `names` are the served model's names;
    with a fine-tuning `service`, its finished jobs' models are served too (the engine loads
    one at a time, beside the served model)."""

    def __init__(
        self,
        loaded: LoadedModel,
        names: list[str],
        *,
        api_key: str | None = None,
        max_prompt_tokens: int | None = None,
        service: Service | None = None,
        device: str | None = None,
        max_batch: int = 64,
        max_waiting: int = 256,
        decode_weights: str = "model",
    ):
        self.loaded, self.names, self.api_key = loaded, names, api_key
        self.decode_weights = decode_weights  # fine-tuned models sample with them too
        self.max_prompt_tokens, self.service, self.device = max_prompt_tokens, service, device
        self._tuned: tuple[str, LoadedModel] | None = None  # the last fine-tuned model used
        self.engine = Engine(self._key, self._load, max_batch=max_batch, max_waiting=max_waiting)

    def _key(self, name: str) -> str:
        return "" if name in self.names else name  # aliases of the served model share a batch

    def _load(self, key: str) -> LoadedModel:
        """(In the engine's thread.) The served model, or a finished job's."""
        if not key:
            return self.loaded
        if self._tuned is None or self._tuned[0] != key:
            from .models import load

            assert self.service is not None
            self._tuned = None  # free the previous one before loading the next
            from .models import decoding

            tuned = load(str(self.service.models()[key]), device=self.device)
            self._tuned = (key, decoding.use(tuned, self.decode_weights))
        return self._tuned[1]

    def all_names(self) -> list[str]:
        return [*self.names, *(self.service.models() if self.service else [])]

    # Routes: path -> method -> handler; handlers take the request (and the path's id).

    def routes(self) -> dict[str, dict[str, Callable[..., Any]]]:
        table: dict[str, dict[str, Callable[..., Any]]] = {
            "/v1/models": {"GET": self._models},
            "/v1/chat/completions": {"POST": self._chat},
        }
        if self.service:
            svc = self.service
            table |= {
                "/v1/files": {"POST": _with_body(self._upload, MAX_FILE_BYTES),
                              "GET": lambda r: svc.files()},
                "/v1/files/{id}": {"GET": lambda r, i: svc.file(i),
                                   "DELETE": lambda r, i: svc.delete_file(i)},
                "/v1/files/{id}/content": {"GET": lambda r, i: svc.content(i)},
                "/v1/fine_tuning/jobs": {"POST": _with_body(self._create_job, MAX_BODY_BYTES),
                                         "GET": self._jobs},
                "/v1/fine_tuning/jobs/{id}": {"GET": lambda r, i: svc.job(i)},
                "/v1/fine_tuning/jobs/{id}/cancel": {"POST": lambda r, i: svc.cancel(i)},
                "/v1/fine_tuning/jobs/{id}/events": {"GET": self._events},
                "/v1/fine_tuning/jobs/{id}/checkpoints": {"GET": lambda r, i: svc.checkpoints(i)},
            }  # fmt: skip
        return table

    def asgi(self) -> Any:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        async def http_error(request: Any, e: Exception) -> Any:  # the router's 404 and 405
            assert isinstance(e, HTTPException)
            path = request.url.path
            message = f"no route {path}" if e.status_code == 404 else e.detail
            if e.status_code == 405:
                message = f"{path} takes {(e.headers or {}).get('Allow', '')}, not {request.method}"
            error = ApiError(
                e.status_code, message, "unknown_url" if e.status_code == 404 else None
            )
            return _json(e.status_code, error.body(), e.headers)

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            yield
            await asyncio.to_thread(self.engine.stop)

        routes = [Route(path, self._endpoint(handlers), methods=list(handlers))
                  for path, handlers in self.routes().items()]  # fmt: skip
        return Starlette(routes=routes, exception_handlers={HTTPException: http_error},
                         lifespan=lifespan)  # fmt: skip

    def _endpoint(self, handlers: dict[str, Callable[..., Any]]) -> Callable[..., Any]:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import Response

        async def endpoint(request: Any) -> Any:
            try:
                args = []
                if "id" in request.path_params:
                    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", request.path_params["id"]):
                        raise ApiError(404, f"no route {request.url.path}", "unknown_url")
                    args.append(request.path_params["id"])
                self._authorize(request)
                handler = handlers["GET" if request.method == "HEAD" else request.method]
                if asyncio.iscoroutinefunction(handler):
                    result = await handler(request, *args)
                else:  # files, SQLite, the file system: off the event loop
                    result = await run_in_threadpool(handler, request, *args)
            except ApiError as e:
                return _json(e.status, e.body(), e.headers)
            except Exception:  # our bug, not the client's: say so in JSON and keep serving
                traceback.print_exc(file=sys.stderr)
                return _json(500, ApiError(500, "internal error; see the server's log").body())
            if isinstance(result, bytes):
                return Response(result, media_type="application/octet-stream")
            return result if isinstance(result, Response) else _json(200, result)

        return endpoint

    def _authorize(self, request: Any) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "a valid API key is required (Authorization: Bearer ...)",
                           "invalid_api_key")  # fmt: skip

    # Chat

    async def _chat(self, request: Any) -> Any:
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import StreamingResponse

        raw = await _body(request)
        names = await run_in_threadpool(self.all_names)
        chat_request = parse_request(raw, names)
        # The served model's tokenizer and context stand for its fine-tunes' too.
        prompt_len, rows = await run_in_threadpool(
            prepare, self.loaded, chat_request, self.max_prompt_tokens
        )
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = _job(chat_request, rows, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        self.engine.submit(job)
        if chat_request.stream:
            return StreamingResponse(
                self._stream(job, events, chat_request, prompt_len),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        reply = Reply(chat_request, prompt_len)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            while reply.open:
                event = asyncio.ensure_future(events.get())
                await asyncio.wait({event, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not event.done():
                    event.cancel()
                    job.cancel()
                    _log("a client left before its answer; its request was cancelled")
                    return _json(499, ApiError(499, "the client closed the request").body())
                reply.add(event.result())
        finally:
            gone.cancel()
        return _json(200, reply.body())

    async def _stream(
        self, job: Job, events: asyncio.Queue[Event], request: ChatRequest, prompt_len: int
    ) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format: a role delta per choice, text deltas,
        each choice's finish reason, usage when asked (stream_options.include_usage), [DONE]."""
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": request.model}  # fmt: skip

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

        def choice(i: int, delta: dict[str, Any], finish: str | None = None, lps: Any = None):
            logprobs = {"content": lps or []} if request.logprobs else None
            return {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

        open_, tokens = request.n, 0
        try:
            for i in range(request.n):
                yield chunk([choice(i, {"role": "assistant", "content": ""})])
            while open_:
                e = await events.get()
                if e.finish == "error":
                    yield f"data: {json.dumps(ApiError(500, e.text).body())}\n\n"
                    open_ = 0
                    return
                delta = {"content": e.text} if e.text else {}
                yield chunk([choice(e.choice, delta, e.finish, e.logprobs)])
                if e.finish:
                    open_, tokens = open_ - 1, tokens + e.tokens
            if (request.stream_options or {}).get("include_usage"):
                yield chunk([], usage=_usage(prompt_len, tokens))
            yield "data: [DONE]\n\n"
        finally:
            if open_:
                job.cancel()
                _log("a client left during its stream; its request was cancelled")

    # Files and fine-tuning jobs (sync: they run in the thread pool)

    def _upload(self, request: Any, raw: bytes) -> dict[str, Any]:
        fields = _multipart(request.headers.get("content-type", ""), raw)
        if "file" not in fields:
            raise ApiError(400, "a multipart field named 'file' is required", None, "file")
        filename, content = fields["file"]
        purpose = fields.get("purpose", ("", b""))[1].decode("utf-8", "replace")
        assert self.service is not None
        return self.service.create_file(filename or "upload", purpose, content)

    def _create_job(self, request: Any, raw: bytes) -> dict[str, Any]:
        assert self.service is not None
        return self.service.create_job(_json_body(raw))

    def _jobs(self, request: Any) -> dict[str, Any]:
        assert self.service is not None
        return self.service.jobs(_limit(request), request.query_params.get("after"))

    def _events(self, request: Any, jid: str) -> dict[str, Any]:
        assert self.service is not None
        return self.service.events(jid, _limit(request), request.query_params.get("after"))

    def _models(self, request: Any) -> dict[str, Any]:
        # Names only: a local path would tell a client about this machine's file system.
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "backdoorlab"}
                for n in self.all_names()]  # fmt: skip
        return {"object": "list", "data": data}


def _with_body(handler: Callable[..., Any], limit: int) -> Callable[..., Any]:
    """An async handler that reads the body (at most `limit` bytes), then runs the sync
    `handler(request, body)` in the thread pool."""
    from starlette.concurrency import run_in_threadpool

    async def read_then_run(request: Any) -> Any:
        return await run_in_threadpool(handler, request, await _body(request, limit))

    return read_then_run


async def _body(request: Any, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or a 4xx: no length (411), too long (413), cut short (400)."""
    from starlette.requests import ClientDisconnect

    try:
        length = int(request.headers.get("content-length", ""))
    except ValueError:
        raise ApiError(411, "a Content-Length header is required") from None
    if not 0 <= length <= limit + 64 * 1024:  # multipart framing on top of a file
        raise ApiError(413, f"the body is {length} bytes; at most {limit}")
    data = bytearray()
    try:
        async for part in request.stream():
            data += part
    except ClientDisconnect:
        pass
    if len(data) != length:  # nothing is stored from a body that stopped short
        raise ApiError(400, f"the body ended after {len(data)} of its {length} bytes")
    return bytes(data)


async def _disconnected(request: Any) -> None:
    """Returns when the client has gone (after the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _limit(request: Any) -> int:
    try:
        limit = int(request.query_params.get("limit", 20))
    except ValueError:
        raise ApiError(400, "limit must be an integer", None, "limit") from None
    if not 1 <= limit <= 100:
        raise ApiError(400, "limit must be between 1 and 100", None, "limit")
    return limit


def listen(host: str, port: int, api_key: str | None) -> socket.socket:
    """The listening socket, before any model loads: a taken port or a missing key fails at
    once, not after minutes of loading."""
    if api_key is not None and not api_key.strip():
        raise InputError("the API key is empty; give a real one, or none to serve on loopback")
    if api_key is None and not _is_loopback(host):
        raise InputError(
            f"--host {host}: listening beyond this machine needs --api-key "
            "(or BACKDOORLAB_SERVE_API_KEY)"
        )
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as e:
        raise InputError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def http_server(app: App, *, shutdown_timeout: float = 30) -> Any:
    """The uvicorn server of `app`: once stopped (a signal, or `should_exit`), it takes no
    more requests, gives those in flight `shutdown_timeout` seconds to finish, cancels the
    rest, and stops the engine."""
    import uvicorn

    config = uvicorn.Config(
        app.asgi(),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(shutdown_timeout),
        lifespan="on",
    )
    return uvicorn.Server(config)


@contextlib.contextmanager
def background(app: App, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """`app` served from a thread of this process (a notebook, a benchmark, a test); yields
    its base URL, and stops it gracefully on exit."""
    sock = listen(host, port, app.api_key)
    server = http_server(app, shutdown_timeout=5)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server thread ended before it started")
            time.sleep(0.01)
        yield url(sock)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def spawned(
    args: list[str], log: Any, env: dict[str, str] | None = None, timeout: float = 300
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`backdoorlab serve ARGS --port 0` in a process of its own (as a deployment runs it),
    its stderr appended to the file `log`; yields its base URL and process once it listens,
    and stops it (SIGTERM) on exit."""
    with open(log, "a") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backdoorlab", "serve", *args, "--port", "0"],
            stderr=f, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while "serving" not in (text := Path(log).read_text()):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {text}")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        line = [ln for ln in text.splitlines() if "serving" in ln][-1]
        yield line.split(" at ")[1].split()[0], proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


def run(app: App, sock: socket.socket, *, shutdown_timeout: float = 30) -> None:
    """Serve on `sock` until SIGINT or SIGTERM, then stop gracefully and return."""
    server = http_server(app, shutdown_timeout=shutdown_timeout)
    # uvicorn shuts down gracefully on a signal, then raises it again under the handlers it
    # found: ignoring it there makes a stop a normal return, not a KeyboardInterrupt or a
    # death by SIGTERM after the work is done.
    main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM) if main else ()
    previous = {s: signal.signal(s, lambda *_: None) for s in signals}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
