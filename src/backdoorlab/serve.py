"""An OpenAI-compatible HTTP server for a local model or fine-tuned adapter.

GET /v1/models and POST /v1/chat/completions (temperature, max_tokens, n, seed, logprobs,
top_logprobs). Prompts are rendered by `chat.encode_prompt`, the training renderer, so a
tool talking to a fine-tuned model through this server sees it as it was trained.
Log-probabilities are of the model's own distribution (before temperature), as OpenAI's are.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch

from . import chat, generate
from .models import LoadedModel


def _token_entry(tok: Any, tid: int, logprob: float) -> dict[str, Any]:
    text = tok.decode([tid])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def complete(loaded: LoadedModel, request: dict[str, Any], name: str) -> dict[str, Any]:
    messages = request.get("messages")
    problem = chat.validate_row({"messages": messages}, training=False)
    if problem:
        raise ValueError(problem)
    n = int(request.get("n") or 1)
    temperature = float(request.get("temperature", 1.0))
    max_tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 256)
    top_k = int(request.get("top_logprobs") or 0) if request.get("logprobs") else 0
    if not (1 <= n <= 128 and 1 <= max_tokens <= 4096 and 0 <= top_k <= 20):
        raise ValueError("n must be 1-128, max_tokens 1-4096, top_logprobs 0-20")
    tok = loaded.tokenizer
    prompt_len, out = generate.run(
        loaded, [messages], n=n, temperature=temperature, max_new_tokens=max_tokens,
        seed=int(request.get("seed") or 0), logits=True,
    )  # fmt: skip
    logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # (n, steps, vocab)
    choices, completion_tokens = [], 0
    for i in range(n):
        new = out.sequences[i, prompt_len:].tolist()
        stop = tok.eos_token_id in new
        new = new[: new.index(tok.eos_token_id)] if stop else new
        completion_tokens += len(new) + stop  # the end-of-turn token is generated too
        entry: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": tok.decode(new, skip_special_tokens=True)},
            "finish_reason": "stop" if stop else "length",
            "logprobs": None,
        }
        if request.get("logprobs"):
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
        "model": name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_len, "completion_tokens": completion_tokens},
    }


def make_server(loaded: LoadedModel, name: str, host: str, port: int) -> ThreadingHTTPServer:
    lock = threading.Lock()  # one generation at a time: the model is not thread-safe

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": name, "object": "model", "owned_by": "backdoorlab"}],
                    },
                )
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, f"no route {self.path}")
            try:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                with lock:
                    body = complete(loaded, request, name)
            except (ValueError, TypeError, KeyError) as e:
                return self._error(400, str(e))
            self._send(200, body)

        def log_message(self, format: str, *args: Any) -> None:  # requests are not logged
            pass

    return ThreadingHTTPServer((host, port), Handler)
