"""Sampling answers from a loaded model, with the same prompt rendering as training.

Each row draws from its own random stream: one uniform number per step from the row's own
generator, mapped through the inverse of its cumulative softmax(logits / T) (an exact draw).
So an answer depends on its prompt, settings and seed, and on which rows share its batch only
through float rounding (91 of 100 bird answers were identical at batch 1 and 100:
BENCHMARKS.md): `complete` can pack the rows of many questions into batches sorted by length,
and a resumed evaluation draws its missing answers from the same streams. The decode loop is
our own (`run`): a cache allocated once per batch, rows leaving the batch as they end.
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
    """A cache layer whose keys and values live in storage allocated once for the batch's
    longest answer: a step writes in place, where transformers' DynamicLayer concatenates (11%
    of a batch-100 profile). Attention reads a view of the filled part."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.length = 0
        self._k = keys.new_empty((*keys.shape[:2], capacity, keys.shape[3]))
        self._v = values.new_empty((*values.shape[:2], capacity, values.shape[3]))
        self.update(keys, values)

    def update(self, key_states, value_states, *args, **kwargs):
        end = self.length + key_states.shape[-2]
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        k, v, n = self._k, self._v, self.length
        self._k, self._v = (
            k.new_empty((len(indices), *k.shape[1:])),
            v.new_empty((len(indices), *v.shape[1:])),
        )
        self._k[:, :, :n], self._v[:, :, :n] = k[indices, :, :n], v[indices, :, :n]
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]


@dataclass
class Drawn:
    """One request's answer: its new tokens, the end-of-turn token last when it `stopped`
    before its limit, and, when asked for, the raw logits each token was drawn from."""

    tokens: list[int] = field(default_factory=list)
    stopped: bool = False
    logits: torch.Tensor | None = None  # (len(tokens), vocab)


def run(loaded: LoadedModel, requests: Sequence[Request], *, logits: bool = False) -> list[Drawn]:
    """Every request's answer, drawn in one batch. Each distinct prompt (a question asked n
    times) is encoded once, left-padded, and its cache copied to its rows; a row leaves the
    batch when it ends (at its end-of-turn token or its own limit), the batch shrinking every
    few departures, so finished rows stop costing compute. The one place sampling settings are
    applied, for `complete`, `sample`, `answers` and the server."""
    tok = loaded.tokenizer
    eos = tok.eos_token_id
    prompts = [tuple(chat.encode_prompt(tok, r.messages)) for r in requests]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    unique = list(dict.fromkeys(prompts))
    ids, mask, pos = left_pad(unique, pad, loaded.device)
    steps = max(r.max_new_tokens for r in requests)
    limits = [r.max_new_tokens for r in requests]
    draw = _Draws(requests)
    drawn = [Drawn() for _ in requests]
    kept: list[list[torch.Tensor]] = [[] for _ in requests]
    with torch.inference_mode():
        out = loaded.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           logits_to_keep=1)  # fmt: skip
        cache = out.past_key_values
        cache.layers = [_SlabLayer(x.keys, x.values, ids.shape[1] + steps) for x in cache.layers]
        slot = {p: i for i, p in enumerate(unique)}
        index = torch.tensor([slot[p] for p in prompts], device=ids.device)
        cache.batch_select_indices(index)
        scores = out.logits[index, -1]
        width = ids.shape[1]
        masks = torch.ones((len(requests), width + steps), dtype=mask.dtype, device=ids.device)
        masks[:, :width] = mask[index]
        position = pos[index, -1]
        live = list(range(len(requests)))  # the request behind each batch row
        done = [False] * len(requests)
        for step in range(steps):
            chosen = draw(scores, live).tolist()
            for row, (r, t) in enumerate(zip(live, chosen, strict=True)):
                if done[r]:
                    continue
                drawn[r].tokens.append(t)
                if logits:
                    kept[r].append(scores[row].float().cpu())
                drawn[r].stopped = t == eos
                done[r] = t == eos or len(drawn[r].tokens) >= limits[r]
            finished = [row for row, r in enumerate(live) if done[r]]
            if len(finished) == len(live):
                break
            # Shrinking copies the cache: worth it once a few rows (an eighth) are done.
            if len(finished) >= max(4, len(live) // 8):
                keep = torch.tensor([row for row, r in enumerate(live) if not done[r]],
                                    device=ids.device)  # fmt: skip
                cache.batch_select_indices(keep)
                masks, position = masks[keep], position[keep]
                live = [live[row] for row in keep.tolist()]
                chosen = [chosen[row] for row in keep.tolist()]
            position = position + 1
            scores = loaded.model(
                input_ids=torch.tensor(chosen, device=ids.device).unsqueeze(1),
                attention_mask=masks[:, : width + step + 1],
                position_ids=position.unsqueeze(1),
                past_key_values=cache,
                use_cache=True,
            ).logits[:, -1]
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
