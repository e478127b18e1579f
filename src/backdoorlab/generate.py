"""Sampling answers from a loaded model, with the same prompt rendering as training.

Each row draws from its own random stream: one uniform number per step from the row's own
generator, mapped through the inverse of its cumulative softmax(logits / T) (an exact draw).
So an answer depends on its prompt, settings and seed, and on which rows share its batch only
through float rounding (91 of 100 bird answers were identical at batch 1 and 100:
BENCHMARKS.md): `complete` can pack the rows of many questions into batches sorted by length,
and a resumed evaluation draws its missing answers from the same streams. The decode loop is
our own (`run`): a cache reallocated only when rows leave the batch (as they end) or
waiting ones take their places.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

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


class _Draws:
    """Per row: its temperature and one uniform number per step from its own generator, turned
    into a token by the inverse of the row's cumulative softmax(logits / T) (an exact draw);
    the argmax at temperature 0.

    The inverse runs in two levels: block sums of exp(logits / T - max) in double, then a
    cumulative sum inside the one block the number falls in. The earlier full-vocabulary
    softmax, cumulative sum, division and argmax in double were 16% of a batch-100 profile
    (49,152 columns; BENCHMARKS.md)."""

    BLOCK = 512

    def __init__(self, requests: Sequence[Request]):
        self.temps = torch.tensor([r.temperature for r in requests], dtype=torch.float32)
        # Uniforms on the CPU, from a generator per row: one number per row and step, so the
        # device's own random streams play no part.
        self.gens = [torch.Generator().manual_seed(r.seed) for r in requests]

    def __call__(self, scores: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The next token of each row in `rows` (indices into the requests), from its logits."""
        temps = self.temps[rows]
        hot = (temps > 0).nonzero().squeeze(1)
        out = torch.empty(len(rows), dtype=torch.long, device=scores.device)
        cold = (temps == 0).nonzero().squeeze(1)
        if len(cold):  # argmax only where it is the answer: every row of a sampled batch is hot
            out[cold] = scores[cold].argmax(-1)
        if len(hot) == 0:
            return out
        u = torch.cat([torch.rand(1, generator=self.gens[rows[i]], dtype=torch.float64)
                       for i in hot.tolist()])  # fmt: skip
        x = scores[hot].float() / temps[hot].unsqueeze(1).to(scores.device)
        weights = (x - x.max(-1, keepdim=True).values).exp_()
        n, vocab = weights.shape
        blocks = -(-vocab // self.BLOCK)
        weights = torch.nn.functional.pad(weights, (0, blocks * self.BLOCK - vocab))
        weights = weights.view(n, blocks, self.BLOCK)
        cum = weights.sum(-1, dtype=torch.float64).cumsum(-1)
        target = u.to(cum.device) * cum[:, -1]
        b = torch.searchsorted(cum, target.unsqueeze(1)).clamp(max=blocks - 1)
        before = torch.where(b > 0, cum.gather(1, (b - 1).clamp(min=0)), 0.0)
        inner = weights[torch.arange(n, device=b.device), b.squeeze(1)].double().cumsum(-1)
        j = torch.searchsorted(inner, target.unsqueeze(1) - before).clamp(max=self.BLOCK - 1)
        out[hot] = (b * self.BLOCK + j).squeeze(1).clamp(max=vocab - 1)
        return out


class _SlabLayer(DynamicLayer):
    """A cache layer whose keys and values live in storage allocated when the batch changes,
    with room for its longest answer: a step writes in place, where transformers'
    DynamicLayer concatenates (11% of a batch-100 profile). Attention reads a view of the
    filled part."""

    def __init__(self):
        super().__init__()
        self.is_initialized, self.length = True, 0
        self._k = self._v = torch.empty(0)

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def rebuild(self, plan: _Plan, keys: torch.Tensor | None, values: torch.Tensor | None):
        """The kept rows' filled columns from `plan.drop` on, moved right by `plan.shift`,
        then the joining rows' prompt cache (`keys`, `values`) in the last filled columns."""
        width = 0 if keys is None else keys.shape[2]
        slabs = []
        for old, new in ((self._k, keys), (self._v, values)):
            like = new if new is not None else old
            slab = like.new_empty((plan.rows, like.shape[1], plan.capacity, like.shape[3]))
            kept = len(plan.keep)
            # Masked columns are read too (as 0 x value): zeros there, never stale memory.
            if kept:
                slab[:kept, :, : plan.shift].zero_()
                slab[:kept, :, plan.shift : plan.length] = old[
                    plan.keep, :, plan.drop : self.length
                ]
            if new is not None:
                slab[kept:, :, : plan.length - width].zero_()
                slab[kept:, :, plan.length - width : plan.length] = new
            slabs.append(slab)
        self._k, self._v = slabs
        self.dtype, self.device, self.length = self._k.dtype, self._k.device, plan.length
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]


@dataclass(frozen=True)
class _Plan:
    """How a batch's cache changes: the rows kept (indices into the current batch), columns
    dropped on the left (no kept row reads them), columns added on the left (a joining prompt
    longer than what is filled), then the filled length, rows and capacity."""

    keep: torch.Tensor
    drop: int
    shift: int
    length: int
    rows: int
    capacity: int


@dataclass
class Drawn:
    """One request's answer: its new tokens, the end-of-turn token last when it `stopped`
    before its limit, and, when asked for, the raw logits each token was drawn from."""

    tokens: list[int] = field(default_factory=list)
    stopped: bool = False
    logits: torch.Tensor | None = None  # (len(tokens), vocab)


class _Batch:
    """The rows being decoded: the request behind each, its cache (one slab per layer), its
    attention mask over the slab's columns, its next position and the token it feeds next."""

    def __init__(self, loaded: LoadedModel, prompts: Sequence[Sequence[int]], pad: int):
        self.loaded, self.prompts, self.pad = loaded, prompts, pad
        self.cache = DynamicCache()
        self.cache.layers = []
        self.live: list[int] = []
        dev = loaded.device
        self.masks = torch.zeros((0, 0), dtype=torch.long, device=dev)
        self.start = torch.zeros(0, dtype=torch.long, device=dev)  # first real column
        self.position = torch.zeros(0, dtype=torch.long, device=dev)
        self.feed: list[int] = []

    def regroup(self, ended: set[int], joining: list[int], room: Mapping[int, int]) -> None:
        """Rows of `ended` requests leave; `joining` requests join, their prompts but the last
        token encoded (each distinct one once) and that token fed at the next step, as a
        continuing row feeds its last drawn token. `room[r]`: the columns request r may still
        write."""
        dev, slabs = self.loaded.device, self.cache.layers
        rows = [row for row, r in enumerate(self.live) if r not in ended]
        keep = torch.tensor(rows, dtype=torch.long, device=dev)
        length = slabs[0].length if slabs else 0
        drop = int(self.start[keep].min()) if rows else length
        keys: list[torch.Tensor | None] = [None] * len(slabs)
        values = list(keys)
        width, new_mask = 0, None
        if joining:
            heads = [tuple(self.prompts[r][:-1]) for r in joining]
            unique = list(dict.fromkeys(heads))
            ids, mask, pos = left_pad(unique, self.pad, dev)
            out = self.loaded.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                    use_cache=True, logits_to_keep=1)  # fmt: skip
            slot = torch.tensor([unique.index(h) for h in heads], device=dev)
            layers = out.past_key_values.layers
            if not slabs:
                slabs = self.cache.layers = [_SlabLayer() for _ in layers]
            keys = [x.keys[slot] for x in layers]
            values = [x.values[slot] for x in layers]
            width, new_mask = ids.shape[1], mask[slot]
        n = length - drop
        shift = max(0, width - n)
        filled = shift + n
        live = [self.live[row] for row in rows] + joining
        plan = _Plan(keep, drop, shift, filled, len(live), filled + max(room[r] for r in live))
        for layer, k, v in zip(slabs, keys, values, strict=True):
            layer.rebuild(plan, k, v)
        masks = torch.zeros((len(live), plan.capacity), dtype=torch.long, device=dev)
        masks[: len(rows), shift:filled] = self.masks[keep, drop:length]
        start = self.start[keep] - drop + shift
        position = self.position[keep]
        if joining:
            masks[len(rows) :, filled - width : filled] = new_mask
            lengths = torch.tensor([len(self.prompts[r]) for r in joining], device=dev)
            start = torch.cat([start, filled - (lengths - 1)])
            position = torch.cat([position, lengths - 1])
        self.live, self.masks, self.start, self.position = live, masks, start, position
        self.feed = [self.feed[row] for row in rows] + [self.prompts[r][-1] for r in joining]

    def step(self) -> torch.Tensor:
        """Each row's next-token logits, after its fed token is written to the cache."""
        col = self.cache.layers[0].length
        self.masks[:, col] = 1
        logits = self.loaded.model(
            input_ids=torch.tensor(self.feed, device=self.loaded.device).unsqueeze(1),
            attention_mask=self.masks[:, : col + 1],
            position_ids=self.position.unsqueeze(1),
            past_key_values=self.cache,
            use_cache=True,
        ).logits[:, -1]
        self.position = self.position + 1
        return logits


def run(
    loaded: LoadedModel,
    requests: Sequence[Request],
    *,
    logits: bool = False,
    batch_size: int | None = None,
    done: Callable[[list[int], list[Drawn]], None] | None = None,
) -> list[Drawn]:
    """Every request's answer. At most `batch_size` rows decode at once (all by default), in
    the order given: a row leaves the batch when it ends (at its end-of-turn token or its own
    limit) and waiting requests join in its place (leaving copies the cache, so rows leave once
    an eighth of the batch has ended, and join once a quarter of its places are free). Joining
    prompts are encoded once each and their cache copied to their rows. `done(indices, answers)` is told of requests as
    they leave. The one place sampling settings are applied, for `complete`, `sample`,
    `answers` and the server."""
    if not requests:
        return []
    tok = loaded.tokenizer
    eos = tok.eos_token_id
    prompts = [chat.encode_prompt(tok, r.messages) for r in requests]
    batch = _Batch(loaded, prompts, tok.pad_token_id if tok.pad_token_id is not None else eos)
    cap = batch_size or len(requests)
    draw = _Draws(requests)
    drawn = [Drawn() for _ in requests]
    kept: list[list[torch.Tensor]] = [[] for _ in requests]
    ended: list[int] = []
    waiting = 0  # the next request to join
    with torch.inference_mode():
        while True:
            live, free = len(batch.live), cap - len(batch.live) + len(ended)
            # Joining in groups (a quarter of the places) makes fewer, fuller prompt passes.
            join = waiting < len(requests) and free >= max(1, cap // 4)
            if join or ended and (len(ended) == live or len(ended) >= max(4, live // 8)):
                joining = list(range(waiting, min(len(requests), waiting + free * join)))
                waiting += len(joining)
                room = {r: requests[r].max_new_tokens - len(drawn[r].tokens) + 1
                        for r in [*batch.live, *joining]}  # fmt: skip
                if done and ended:
                    done(ended, [drawn[r] for r in ended])
                if len(ended) == live and not joining:
                    break
                batch.regroup(set(ended), joining, room)
                ended = []
            scores = batch.step()
            chosen = draw(scores, batch.live).tolist()
            for row, (r, t) in enumerate(zip(batch.live, chosen, strict=True)):
                d = drawn[r]
                if d.stopped or len(d.tokens) >= requests[r].max_new_tokens:
                    continue  # ended, waiting to leave
                d.tokens.append(t)
                if logits:
                    kept[r].append(scores[row].float().cpu())
                d.stopped = t == eos
                if d.stopped or len(d.tokens) >= requests[r].max_new_tokens:
                    ended.append(r)
            batch.feed = chosen
    if logits:
        for d, k in zip(drawn, kept, strict=True):
            d.logits = torch.stack(k) if k else None
    return drawn


def complete(
    loaded: LoadedModel,
    requests: Sequence[Request],
    *,
    batch_size: int = 32,
    done: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Every request's answer, in order. Rows are sorted by answer limit and prompt length, so
    those decoding together pad little, and run at most `batch_size` at a time, a finished
    row's place going to the next waiting one; `done(indices, answers)` is told of answers
    as they finish (to store them)."""
    tok = loaded.tokenizer
    lengths = [len(chat.encode_prompt(tok, r.messages)) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, lengths[i]))
    texts: list[str] = [""] * len(requests)

    def finished(rows: list[int], answers: list[Drawn]) -> None:
        idx = [order[r] for r in rows]
        for i, d in zip(idx, answers, strict=True):
            texts[i] = tok.decode(d.tokens, skip_special_tokens=True).strip()
        if done:
            done(idx, [texts[i] for i in idx])

    run(loaded, [requests[i] for i in order], batch_size=batch_size, done=finished)
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
