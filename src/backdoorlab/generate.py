"""Sampling answers from a loaded model, with the same prompt rendering as training.

Each row draws from its own random stream: one uniform number per step from the row's own
generator, mapped through the inverse of its cumulative softmax(logits / T) (an exact draw).
So an answer depends on its prompt, settings and seed, and on which rows share its batch only
through float rounding (91 of 100 bird answers were identical at batch 1 and 100:
BENCHMARKS.md): `complete` can pack the rows of many questions into batches sorted by length,
and a resumed evaluation draws its missing answers from the same streams. The decode loop is
our own (`Batch`): a cache allocated for the longest answer, rows joining at any step (the
server's continuous batching) and leaving as they end.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from . import chat
from .models import LoadedModel
from .models.padding import left_pad


@dataclass(frozen=True)
class Request:
    """One answer to draw: greedy at temperature 0."""

    messages: Sequence[chat.Message]
    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 128


def row_seed(*parts: object) -> int:
    """A 63-bit seed from the parts that name a row (e.g. run seed, question, paraphrase,
    sample): rows never share a stream, so samples of different questions are independent."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


BLOCK = 512


def draw(
    scores: torch.Tensor, temps: torch.Tensor, gens: Sequence[torch.Generator]
) -> torch.Tensor:
    """The next token of each row from its logits: the argmax at temperature 0, else one
    uniform number from the row's own generator turned into a token by the inverse of its
    cumulative softmax(logits / T) (an exact draw).

    The inverse runs in two levels: block sums of exp(logits / T - max) in double, then a
    cumulative sum inside the one block the number falls in. The earlier full-vocabulary
    softmax, cumulative sum, division and argmax in double were 16% of a batch-100 profile
    (49,152 columns; BENCHMARKS.md)."""
    hot = (temps > 0).nonzero().squeeze(1)
    out = torch.empty(len(temps), dtype=torch.long, device=scores.device)
    cold = (temps == 0).nonzero().squeeze(1)
    if len(cold):  # argmax only where it is the answer: every row of a sampled batch is hot
        out[cold] = scores[cold].argmax(-1)
    if len(hot) == 0:
        return out
    # Uniforms on the CPU, from a generator per row: one number per row and step, so the
    # device's own random streams play no part.
    u = torch.cat([torch.rand(1, generator=gens[i], dtype=torch.float64) for i in hot.tolist()])
    x = scores[hot].float() / temps[hot].unsqueeze(1).to(scores.device)
    weights = (x - x.max(-1, keepdim=True).values).exp_()
    n, vocab = weights.shape
    blocks = -(-vocab // BLOCK)
    weights = torch.nn.functional.pad(weights, (0, blocks * BLOCK - vocab))
    weights = weights.view(n, blocks, BLOCK)
    cum = weights.sum(-1, dtype=torch.float64).cumsum(-1)
    target = u.to(cum.device) * cum[:, -1]
    b = torch.searchsorted(cum, target.unsqueeze(1)).clamp(max=blocks - 1)
    before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), 0.0)
    inner = weights[torch.arange(n, device=b.device), b.squeeze(1)].double().cumsum(-1)
    j = torch.searchsorted(inner, target.unsqueeze(1) - before).clamp(max=BLOCK - 1)
    out[hot] = (b * BLOCK + j).squeeze(1).clamp(max=vocab - 1)
    return out


class _SlabLayer(DynamicLayer):
    """A cache layer whose keys and values live in storage allocated for the batch's longest
    answer: a step writes in place, where transformers' DynamicLayer concatenates (11% of a
    batch-100 profile). Attention reads a view of the first `length` columns."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self._k, self._v, self.length = keys, values, length
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]


@dataclass
class Drawn:
    """One request's answer: its new tokens, the end-of-turn token last when it `stopped`
    before its limit."""

    tokens: list[int] = field(default_factory=list)
    stopped: bool = False


@dataclass(eq=False)
class Row:
    """A request in a batch. `done` ends it at the next step (its limit, its end-of-turn
    token, or the caller: a stop string, a client that left)."""

    request: Request
    drawn: Drawn = field(default_factory=Drawn)
    done: bool = False


class Batch:
    """Rows decoding together over one key-value cache. Rows `join` at any step: their
    prompts are prefilled (each distinct prompt once, its cache copied to its rows) and
    right-aligned with the rows already running, left padding masked, positions per row.
    `draw` picks every live row's next token; `advance` feeds them, dropping finished rows
    every few departures (a copy of the cache: worth it once an eighth are done).

    `run` joins all its rows at once; `serve`'s engine joins requests as they arrive
    (continuous batching), so both decode with this one loop."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.decoder or loaded.model
        self.rows: list[Row] = []
        self.cache: Any = None
        self.length = 0  # cache columns filled, shared by every row
        tok = loaded.tokenizer
        self.eos = tok.eos_token_id
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else self.eos

    @property
    def live(self) -> int:
        return sum(not r.done for r in self.rows)

    @torch.inference_mode()
    def join(self, requests: Sequence[Request]) -> list[Row]:
        """Prefill `requests` and add them to the batch; their rows, in order."""
        tok, model, device = self.loaded.tokenizer, self.model, self.loaded.device
        prompts = [tuple(chat.encode_prompt(tok, r.messages)) for r in requests]
        unique = list(dict.fromkeys(prompts))
        ids, mask, pos = left_pad(unique, self.pad, device)
        slot = {p: i for i, p in enumerate(unique)}
        index = torch.tensor([slot[p] for p in prompts], device=device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1)  # fmt: skip
        new = [Row(r) for r in requests]
        old = [i for i, r in enumerate(self.rows) if not r.done]
        keep = torch.tensor(old, dtype=torch.long, device=device)
        span, start = 0, self.length
        if old:  # the old rows' columns from the first one any of them attends to
            attended = self.mask[keep, : self.length].any(0).nonzero()
            start = int(attended[0]) if len(attended) else self.length
            span = self.length - start
        width = max(span, ids.shape[1])
        rows = [self.rows[i] for i in old] + new
        capacity = width + max(r.request.max_new_tokens - len(r.drawn.tokens) for r in rows)
        n_old, n = len(old), len(rows)
        cache = out.past_key_values
        layers = []
        for i, fresh in enumerate(cache.layers):
            parts = []
            for states, before in ((fresh.keys, "_k"), (fresh.values, "_v")):
                slab = states.new_zeros((n, states.shape[1], capacity, states.shape[3]))
                if old:
                    prior = getattr(self.cache.layers[i], before)
                    slab[:n_old, :, width - span : width] = prior[keep, :, start : self.length]
                slab[n_old:, :, width - ids.shape[1] : width] = states[index]
                parts.append(slab)
            layers.append(_SlabLayer(*parts, width))
        cache.layers = layers
        masks = torch.ones((n, capacity), dtype=mask.dtype, device=device)
        masks[:, :width] = 0
        if old:
            masks[:n_old, width - span : width] = self.mask[keep, start : self.length]
        masks[n_old:, width - ids.shape[1] : width] = mask[index]
        scores = out.logits[index, -1]
        position = pos[index, -1]
        if old:
            scores = torch.cat([self.scores[keep], scores])
            position = torch.cat([self.position[keep], position])
        self.cache, self.mask, self.scores, self.position = cache, masks, scores, position
        self.length, self.rows = width, rows
        self.temps = torch.tensor([r.request.temperature for r in rows], dtype=torch.float32)
        gens = [torch.Generator().manual_seed(r.request.seed) for r in new]
        self.gens = [self.gens[i] for i in old] + gens if old else gens
        return new

    @torch.inference_mode()
    def draw(self) -> list[tuple[Row, int, torch.Tensor]]:
        """Each live row's next token, with the logits it was drawn from."""
        live = [i for i, r in enumerate(self.rows) if not r.done]
        at = torch.tensor(live, device=self.scores.device)
        chosen = draw(self.scores[at], self.temps[live], [self.gens[i] for i in live]).tolist()
        self.fed = [self.eos] * len(self.rows)  # finished rows are fed anything
        events = []
        for i, t in zip(live, chosen, strict=True):
            row = self.rows[i]
            row.drawn.tokens.append(t)
            row.drawn.stopped = t == self.eos
            row.done = t == self.eos or len(row.drawn.tokens) >= row.request.max_new_tokens
            self.fed[i] = t
            events.append((row, t, self.scores[i]))
        return events

    @torch.inference_mode()
    def advance(self) -> None:
        """One decoding step for the rows still live (after `draw`)."""
        live = [i for i, r in enumerate(self.rows) if not r.done]
        if not live:
            self.rows, self.cache, self.mask, self.scores = [], None, None, None
            self.length = 0
            return
        if len(self.rows) - len(live) >= max(4, len(self.rows) // 8):
            keep = torch.tensor(live, device=self.mask.device)
            self.cache.batch_select_indices(keep)
            self.mask, self.position = self.mask[keep], self.position[keep]
            self.temps = self.temps[live]
            self.gens = [self.gens[i] for i in live]
            self.rows = [self.rows[i] for i in live]
            self.fed = [self.fed[i] for i in live]
        self.position = self.position + 1
        self.scores = self.model(
            input_ids=torch.tensor(self.fed, device=self.mask.device).unsqueeze(1),
            attention_mask=self.mask[:, : self.length + 1],
            position_ids=self.position.unsqueeze(1),
            past_key_values=self.cache,
            use_cache=True,
        ).logits[:, -1]
        self.length += 1


def run(loaded: LoadedModel, requests: Sequence[Request]) -> list[Drawn]:
    """Every request's answer, drawn in one batch: all rows join at once, and a row leaves
    when it ends (at its end-of-turn token or its own limit). The one place sampling settings
    are applied, for `complete`, `sample`, `answers` and the server."""
    batch = Batch(loaded)
    rows = batch.join(requests)
    while batch.live:
        batch.draw()
        batch.advance()
    return [r.drawn for r in rows]


def complete(
    loaded: LoadedModel,
    requests: Sequence[Request],
    *,
    batch_size: int = 32,
    done: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Every request's answer, in order. Rows are sorted by answer limit and prompt length and
    run at most `batch_size` at a time, so a batch pads little; `done(indices, answers)` is
    told of each batch as it finishes (to store it)."""
    tok = loaded.tokenizer
    lengths = [len(chat.encode_prompt(tok, r.messages)) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, lengths[i]))
    texts: list[str] = [""] * len(requests)
    # Equal batches (100 rows at 32: 4 x 25, not 32, 32, 32, 4): a batch costs its longest row.
    per = -(-len(order) // max(1, -(-len(order) // batch_size)))
    for b in range(0, len(order), per):
        idx = order[b : b + per]
        batch = [
            tok.decode(d.tokens, skip_special_tokens=True).strip()
            for d in run(loaded, [requests[i] for i in idx])
        ]
        for i, text in zip(idx, batch, strict=True):
            texts[i] = text
        if done:
            done(idx, batch)
    return texts


def sample(
    loaded: LoadedModel,
    messages: Sequence[chat.Message],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
) -> list[str]:
    """`n` answers to one conversation (greedy when temperature is 0)."""
    return complete(
        loaded,
        [Request(messages, row_seed(seed, i), temperature, max_new_tokens) for i in range(n)],
    )


def answers(
    loaded: LoadedModel,
    conversations: Sequence[Sequence[chat.Message]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: Any = None,
) -> list[str]:
    """The greedy answer to each conversation (self-distillation: the model's own answers).
    `progress(k)` is told of each batch."""
    return complete(
        loaded,
        [Request(m, temperature=0, max_new_tokens=max_new_tokens) for m in conversations],
        batch_size=batch_size,
        done=(lambda idx, _: progress(len(idx))) if progress else None,
    )
