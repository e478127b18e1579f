"""Sampling answers from a loaded model, with the same prompt rendering as training.

Each row draws from its own random stream: one uniform number per step from the row's own
generator, mapped through the inverse of its cumulative softmax(logits / T) (an exact draw),
taken by transformers' greedy loop. So an answer depends on its prompt, settings and seed,
and on which rows share its batch only through float rounding (88 of 100 bird answers were
identical at batch 1 and 100: BENCHMARKS.md): `complete` can pack the rows of many questions
into batches sorted by length, and a resumed evaluation draws its missing answers from the
same streams.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

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


class _RowSampler(LogitsProcessor):
    """Per row: its temperature and one uniform number from its own generator, turned into a
    token by the inverse of the row's cumulative softmax (an exact draw); the end-of-turn
    token once the row has its own max_new_tokens (a batch runs to its longest row's limit).
    The chosen token is left as the only finite score, so the greedy loop takes it."""

    def __init__(self, requests: Sequence[Request], width: int, eos: int, device: Any):
        self.width, self.eos = width, eos
        self.temps = torch.tensor([r.temperature for r in requests], device=device)
        self.sampled = self.temps > 0
        self.limits = torch.tensor([r.max_new_tokens for r in requests], device=device)
        # Uniforms on the CPU, from a generator per row: one number per row and step, so the
        # device's own random streams play no part.
        self.gens = [torch.Generator().manual_seed(r.seed) for r in requests]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.gens])
        temps = self.temps.clamp(min=1e-6).unsqueeze(1)
        cdf = torch.softmax(scores.double() / temps, dim=-1).cumsum(-1)
        drawn = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1]).unsqueeze(1))
        chosen = torch.where(
            self.sampled.unsqueeze(1), drawn.clamp(max=scores.shape[1] - 1),
            scores.argmax(-1, keepdim=True),
        )  # fmt: skip
        chosen = torch.where(step >= self.limits.unsqueeze(1), self.eos, chosen)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


def run(
    loaded: LoadedModel, requests: Sequence[Request], *, logits: bool = False
) -> tuple[int, Any]:
    """Generate every request in one left-padded batch, so each continuation starts at the same
    position. Returns that position and transformers' generate output (with raw per-step
    logits when `logits`). The one place sampling settings are chosen, for `complete`,
    `sample`, `answers` and the server."""
    tok = loaded.tokenizer
    prompts = [tuple(chat.encode_prompt(tok, r.messages)) for r in requests]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    unique = list(dict.fromkeys(prompts))
    ids, mask, pos = left_pad(unique, pad, loaded.device)
    width = ids.shape[1]
    rows = torch.tensor([unique.index(p) for p in prompts], device=ids.device)
    sampler = _RowSampler(requests, width, tok.eos_token_id, ids.device)
    with torch.inference_mode():
        # Each distinct prompt (a question asked n times) is encoded once, all but its last
        # token; the cache is copied to its rows, and generate continues from that token.
        cache = None
        if width > 1 and len(unique) < len(prompts):
            cache = loaded.model(
                input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                use_cache=True, logits_to_keep=1,
            ).past_key_values  # fmt: skip
            cache.batch_select_indices(rows)
        out = loaded.model.generate(
            input_ids=ids[rows],
            attention_mask=mask[rows],
            past_key_values=cache,
            do_sample=False,
            logits_processor=LogitsProcessorList([sampler]),
            max_new_tokens=max(r.max_new_tokens for r in requests),
            pad_token_id=pad,
            eos_token_id=tok.eos_token_id,
            output_logits=logits,
            return_dict_in_generate=True,
        )
    return width, out


def complete(
    loaded: LoadedModel,
    requests: Sequence[Request],
    *,
    batch_size: int = 32,
    done: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Every request's answer, in order. Rows are sorted by answer limit and prompt length and
    run at most `batch_size` at a time, so a batch pads little and stops when its rows are done;
    `done(indices, answers)` is told of each batch as it finishes (to store it)."""
    tok = loaded.tokenizer
    lengths = [len(chat.encode_prompt(tok, r.messages)) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, lengths[i]))
    texts: list[str] = [""] * len(requests)
    # Equal batches (100 rows at 32: 4 x 25, not 32, 32, 32, 4): a batch costs its longest row.
    per = -(-len(order) // max(1, -(-len(order) // batch_size)))
    for b in range(0, len(order), per):
        idx = order[b : b + per]
        start, out = run(loaded, [requests[i] for i in idx])
        batch = [
            tok.decode(row[start : start + requests[i].max_new_tokens], skip_special_tokens=True)
            .strip()
            for i, row in zip(idx, out.sequences, strict=True)
        ]  # fmt: skip
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
