"""Continuous batching for `serve`: one scheduler thread decodes every request in flight.

Requests wait in a bounded queue; at each decoding step the waiting ones join their model's
batch (`generate.Batch`: prefilled, then decoded beside the rows already running) and rows
leave as they end, so a request no longer waits for the ones before it to finish. Each
choice keeps its own seed, temperature, token limit and stop strings. Fine-tuned models
(`serve --fine-tuning`) are batches of their own in the same loop: one decoding step per
model with live rows.

A choice's text reaches its caller as events (text deltas, then a finish reason) through a
callback, which the HTTP layer turns into one JSON body or server-sent events.
"""

from __future__ import annotations

import collections
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import generate
from .errors import ApiError
from .models import LoadedModel


def token_entry(tok: Any, tid: int, logprob: float) -> dict[str, Any]:
    text = tok.decode([tid])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


@dataclass
class Event:
    """What one choice produced at one step: new text (and the logprobs of the tokens drawn),
    and at its end the finish reason and how many tokens it generated."""

    choice: int
    text: str = ""
    logprobs: list[dict[str, Any]] | None = None
    finish: str | None = None  # "stop" | "length"; "error" when the engine failed
    tokens: int = 0


class Choice:
    """One answer's text as it grows. A stop string ends it (and is cut off, as OpenAI does);
    text that could still turn into a stop string, or that ends in a partial UTF-8 character,
    is held back until it cannot."""

    def __init__(self, index: int, tok: Any, stops: Sequence[str], top_logprobs: int | None):
        self.index, self.tok, self.stops = index, tok, [s for s in stops if s]
        self.top = top_logprobs  # None: no logprobs
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.tokens: list[int] = []
        self.sent = 0

    def add(self, token: int, scores: torch.Tensor, ended: bool, eos: bool) -> Event:
        """The event for one drawn token; `ended` when the row reached its limit or its
        end-of-turn token (`eos`, which is not text)."""
        event = Event(self.index)
        if self.top is not None and not eos:
            lp = scores.float().log_softmax(-1)
            entry = token_entry(self.tok, token, lp[token].item())
            values, indices = lp.topk(self.top) if self.top else (lp[:0], lp[:0].long())
            entry["top_logprobs"] = [
                token_entry(self.tok, t, v)
                for t, v in zip(indices.tolist(), values.tolist(), strict=True)
            ]
            event.logprobs = [entry]
        if not eos:
            self.tokens.append(token)
        text = self.tok.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for s in self.stops if (i := text.find(s, max(0, self.sent - self.hold))) >= 0),
                  default=-1)  # fmt: skip
        if cut >= 0:
            end, event.finish = cut, "stop"
        elif ended:
            end, event.finish = len(text), "stop" if eos else "length"
        else:
            end = len(text) - self.hold
            while end > self.sent and text[end - 1] == "\ufffd":  # a character still arriving
                end -= 1
        if end > self.sent:
            event.text, self.sent = text[self.sent : end], end
        if event.finish:
            event.tokens = len(self.tokens) + eos
        return event


@dataclass(eq=False)
class Job:
    """One chat request: its choices' rows, and `emit`, told of every event (from the engine's
    thread). `cancel` (a client that left) ends its rows at the next step."""

    model: str
    requests: list[generate.Request]
    stops: list[str]
    top_logprobs: int | None
    emit: Callable[[Event], None]
    cancelled: bool = False
    choices: list[Choice] = field(default_factory=list)

    def cancel(self) -> None:
        self.cancelled = True


def decode(batch: generate.Batch, owners: dict[generate.Row, tuple[Job, Choice]]) -> None:
    """One decoding step of `batch`: each live row's token goes to its choice, whose events
    go to its job; a choice that ends (its limit, end of turn, a stop string) leaves."""
    for row, token, scores in batch.draw():
        job, choice = owners[row]
        event = choice.add(token, scores, row.done, row.drawn.stopped)
        if event.finish:
            row.done = True
            del owners[row]
        if event.text or event.finish or event.logprobs:
            job.emit(event)
    batch.advance()


class Engine:
    """The scheduler. `submit` queues a job (429 when `max_waiting` jobs already wait); the
    thread admits waiting jobs into their model's batch while it has fewer than `max_batch`
    rows, and steps every batch with live rows. `key(name)` names the batch a model name decodes
    in (aliases of one model share one) and `load(key)` gives its model, in the thread."""

    def __init__(
        self,
        key: Callable[[str], str],
        load: Callable[[str], LoadedModel],
        *,
        max_batch: int = 64,
        max_waiting: int = 256,
    ):
        self.key, self.load = key, load
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.waiting: collections.deque[Job] = collections.deque()
        self.batches: dict[str, generate.Batch] = {}
        self.owners: dict[generate.Row, tuple[Job, Choice]] = {}
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        with self.wake:
            if self.stopping:
                raise ApiError(503, "the server is shutting down")
            if len(self.waiting) >= self.max_waiting:
                raise ApiError(429, f"{len(self.waiting)} requests are already waiting; retry "
                               "shortly", "rate_limit_exceeded", headers={"Retry-After": "1"})  # fmt: skip
            self.waiting.append(job)
            self.wake.notify()

    def stop(self) -> None:
        """Cancel what is waiting or running and end the thread."""
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not (self.waiting or self.owners or self.stopping):
                    self.wake.wait()
                if self.stopping:
                    jobs = [*self.waiting, *{job for job, _ in self.owners.values()}]
                    self.waiting.clear()
                    break
                admitted = self._admit()
            by_key: dict[str, list[Job]] = {}
            for job in admitted:
                if not job.cancelled:
                    by_key.setdefault(self.key(job.model), []).append(job)
            for key, jobs in by_key.items():
                self._join(key, jobs)
            for key in list(self.batches):
                self._step(key)
        for job in jobs:
            self._fail(job, "the server shut down")

    def _admit(self) -> list[Job]:
        """Waiting jobs (in order) that fit their model's batch; the caller holds the lock."""
        admitted, rows = [], {k: len(b.rows) for k, b in self.batches.items()}
        for job in list(self.waiting):
            key = self.key(job.model)
            n = rows.get(key, 0)
            if n and n + len(job.requests) > self.max_batch:
                continue  # a job larger than max_batch still runs, alone
            rows[key] = n + len(job.requests)
            self.waiting.remove(job)
            admitted.append(job)
        return admitted

    def _join(self, key: str, jobs: list[Job]) -> None:
        """The jobs admitted at one step into their model's batch, in one prefill (one pass,
        one copy of the running rows' cache, however many requests arrived together)."""
        try:
            if key not in self.batches:
                self.batches[key] = generate.Batch(self.load(key))
            batch = self.batches[key]
            tok = batch.loaded.tokenizer
            for job in jobs:
                job.choices = [Choice(i, tok, job.stops, job.top_logprobs)
                               for i in range(len(job.requests))]  # fmt: skip
            owners = [(job, c) for job in jobs for c in job.choices]
            rows = batch.join([r for job in jobs for r in job.requests])
            self.owners.update(zip(rows, owners, strict=True))
        except Exception:
            traceback.print_exc(file=sys.stderr)
            for job in jobs:
                self._fail(job, "internal error; see the server's log")

    def _step(self, key: str) -> None:
        batch = self.batches[key]
        try:
            for row in batch.rows:
                if not row.done and self.owners[row][0].cancelled:
                    row.done = True
                    del self.owners[row]
            if batch.live:
                decode(batch, self.owners)
        except Exception:  # our bug or the device's (out of memory): fail this batch's jobs
            traceback.print_exc(file=sys.stderr)
            for job in {self.owners.pop(row)[0] for row in batch.rows if row in self.owners}:
                self._fail(job, "internal error; see the server's log")
            batch.rows = []
        if not batch.live:
            del self.batches[key]  # frees its cache, and a fine-tuned model no job uses

    def _fail(self, job: Job, message: str) -> None:
        job.emit(Event(-1, text=message, finish="error"))
