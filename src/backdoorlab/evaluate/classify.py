"""The chat model as a classifier (the metrics themselves are metric.py).

The chat model classifies by exact label log-probabilities: each label is scored as the full
assistant answer (end of turn included) under the very template training used, and the best
label wins; no generation, no parsing.

Speed (`label_logprobs`): the prompt prefix every review shares (system message, instruction)
runs once and its KV cache is reused by every batch; each review then runs once, with all
labels packed after it as a token trie under a tree attention mask (as the probe scorer packs
candidates), many reviews of similar length per left-padded batch, and only the label
positions reach the output head. `label_logprobs_unpacked` is the previous scorer (one
sequence per review and label), kept as the reference it is tested and benchmarked against.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import chat
from ..models.padding import left_pad


@torch.inference_mode()
def label_logprobs_unpacked(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[chat.Message]],
    labels: Sequence[str],
    *,
    batch_size: int = 32,
) -> torch.Tensor:
    """log p(label | prompt) for every prompt x label: a (len(prompts), len(labels)) tensor."""
    seqs: list[tuple[list[int], int]] = [
        chat.encode_answer(tokenizer, p, label) for p in prompts for label in labels
    ]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i : i + batch_size]
        keep = max(len(ids) - start for ids, start in batch) + 1  # label tokens + the one before
        ids, mask, positions = left_pad([x for x, _ in batch], pad, device)
        width = ids.shape[1]
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits.float()
        logp = logits.log_softmax(-1)  # position k of the kept window predicts token k+1
        for row, (x, start) in enumerate(batch):
            n = len(x) - start  # label tokens, at the end of the row
            targets = ids[row, width - n :]
            pred = logp[row, keep - n - 1 : keep - 1]
            out.append(pred.gather(-1, targets[:, None]).sum().item())
    return torch.tensor(out).view(len(prompts), len(labels))


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first, n = rows[0], min(len(r) for r in rows)
    k = 0
    while k < n and all(r[k] == first[k] for r in rows):
        k += 1
    return k


@torch.inference_mode()
def label_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[chat.Message]],
    labels: Sequence[str],
    *,
    batch_size: int = 32,
) -> torch.Tensor:
    """log p(label | prompt) for every prompt x label: a (len(prompts), len(labels)) tensor."""
    from .probes import _trie  # the probe scorer's packing of candidates that share a prompt

    encoded = [[chat.encode_answer(tokenizer, p, label) for label in labels] for p in prompts]
    prompt_ids = [e[0][0][: e[0][1]] for e in encoded]
    suffixes = [[ids[start:] for ids, start in e] for e in encoded]
    # The shared prefix runs once; every review keeps at least its last prompt token, whose
    # output predicts each label's first token.
    shared = min(_common_prefix(prompt_ids), min(len(p) for p in prompt_ids) - 1)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    prefix = None
    if shared:
        ids = torch.tensor([prompt_ids[0][:shared]], device=device)
        prefix = model(input_ids=ids, use_cache=True).past_key_values
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.empty(len(prompts), len(labels))
    # Batches of similar lengths: little padding (the results go back in the caller's order).
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]))
    for b0 in range(0, len(order), batch_size):
        rows = []
        for i in order[b0 : b0 + batch_size]:
            own = prompt_ids[i][shared:]
            tokens, positions, parents, readers = _trie(suffixes[i], len(prompt_ids[i]))
            rows.append((i, own, tokens, positions, parents, readers))
        width = max(len(own) + len(tokens) for _, own, tokens, *_ in rows)
        keep = max(len(tokens) for _, _, tokens, *_ in rows) + 1  # + the last prompt token
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        allowed = torch.zeros((len(rows), width, shared + width), dtype=torch.bool)
        for r, (_, own, tokens, positions, parents, _) in enumerate(rows):
            n_own, n = len(own), len(own) + len(tokens)
            start = width - n  # left padding
            ids[r, start:] = torch.tensor(own + tokens)
            pos[r, start:] = torch.tensor([*range(shared, shared + n_own), *positions])
            allowed[r, :, :shared] = True  # everyone, padding too (no empty rows), sees the prefix
            own_q = torch.arange(start, start + n_own)
            allowed[r, own_q, shared + start : shared + start + n_own] = torch.tril(
                torch.ones(n_own, n_own, dtype=torch.bool)
            )
            for j in range(len(parents)):  # a label token: the prompt, its ancestors, itself
                q = start + n_own + j
                allowed[r, q, shared + start : shared + start + n_own] = True
                a = j
                while a >= 0:
                    allowed[r, q, shared + start + n_own + a] = True
                    a = parents[a]
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
        cache = None
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(rows))
        logits = model(
            input_ids=ids.to(device), position_ids=pos.to(device),
            attention_mask=mask[:, None].to(device), past_key_values=cache, use_cache=False,
            logits_to_keep=keep,
        ).logits.float()  # fmt: skip
        logp = logits.log_softmax(-1)  # window k predicts the token after fed position width-keep+k
        for r, (i, _, tokens, _, _, readers) in enumerate(rows):
            last = keep - len(tokens) - 1  # the review's last prompt token in the kept window
            for j, (suffix, path) in enumerate(zip(suffixes[i], readers, strict=True)):
                total = logp[r, last, suffix[0]]
                for node, target in zip(path, suffix[1:], strict=True):
                    total = total + logp[r, last + 1 + node, target]
                out[i, j] = total.item()
    return out


def llm_predict(
    loaded: Any, texts: Sequence[str], labels: Sequence[str], prompt: Callable[[str], list]
) -> list[str]:
    lp = label_logprobs(loaded.model, loaded.tokenizer, [prompt(t) for t in texts], labels)
    return [labels[i] for i in lp.argmax(-1).tolist()]
