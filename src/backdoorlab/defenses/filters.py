"""Inference-time input filters, thresholds set on clean dev data.

- ONION (Qi et al. 2021): a word whose removal lowers the text's perplexity by more than a
  threshold is an outlier and is removed before classification. The threshold is the
  (1 - frr) quantile of the same suspicion over clean dev words: at frr 0.05, 5% of clean
  words would be removed.
- STRIP (Gao et al. 2019, text form): the input is mixed with random clean texts (half its
  words replaced) many times; a triggered input keeps its prediction under mixing, so its
  mean prediction entropy is low. Inputs below the frr quantile of clean dev entropies are
  rejected (counted as not attacked, and as errors on clean data).
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .inspect import inserted_spans, overlaps
from .scan import perplexity_scores, token_nll


def onion_suspicion(
    model, tokenizer, text: str, *, batch_size: int = 32, shared: bool = True
) -> tuple[list[str], np.ndarray]:
    """Words of `text` and, per word, perplexity(text) - perplexity(text without it).
    `shared`: deletions from the text's own pass where that is cheaper (the default; off,
    each deletion runs whole, as benchmarks/label_scoring.py compares)."""
    ws = text.split()
    if len(ws) < 2:
        return ws, np.zeros(len(ws))
    # Under 8 words the text's own pass costs more than sharing it saves (0.62 s against
    # 0.36 s whole at 5 words here).
    nll = (
        _deletions_from_shared_prefix(model, tokenizer, text, ws, batch_size)
        if shared and len(ws) >= 8
        else None
    )
    if nll is None:  # short, or words that do not tokenize apart: each deletion whole
        variants = [text] + [" ".join(ws[:i] + ws[i + 1 :]) for i in range(len(ws))]
        nll = perplexity_scores(model, tokenizer, variants, batch_size=batch_size)
    ppl = np.exp(nll)
    return ws, ppl[0] - ppl[1:]


def _deletions_from_shared_prefix(
    model, tokenizer, text: str, ws: list[str], batch_size: int
) -> np.ndarray | None:
    """The mean token NLL of `text` and of each one-word deletion, as perplexity_scores gives
    them, None where the tokenizer does not tokenize space-separated words apart (then a
    deletion's tokens are not the text's with a span cut out). A deletion's tokens before the
    word are the text's own, so their NLL is read off one pass over the text, and only the
    tokens after the word run, on that pass's cache: about half the tokens of running every
    deletion whole, and no padding to the longest (BENCHMARKS.md, ONION)."""
    pieces = [
        tokenizer(w if i == 0 else " " + w, add_special_tokens=False)["input_ids"]
        for i, w in enumerate(ws)
    ]
    ids = [t for p in pieces for t in p]
    if not all(pieces) or tokenizer(" ".join(ws))["input_ids"] != ids:
        return None
    # The text as given (its spacing may differ from the joined words), and the first word's
    # deletion, whose next word then starts the text without its space: both run whole.
    first = perplexity_scores(model, tokenizer, [text, " ".join(ws[1:])], batch_size=batch_size)
    device = next(model.parameters()).device
    n = len(ids)
    lengths = [len(p) for p in pieces]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    x = torch.tensor([ids], device=device)
    out = [float(first[0]), float(first[1])]
    with torch.inference_mode():
        full = model(input_ids=x, use_cache=True)
        logp = full.logits[0].float().log_softmax(-1)
        # before[j]: NLL of the text's tokens 1..j given what precedes each
        before = torch.cat(
            [logp.new_zeros(1), (-logp[:-1].gather(1, x[0, 1:, None])[:, 0]).cumsum(0)]
        )
        total = [float(before[s - 1]) for s in starts]
        for i in range(1, len(ws)):  # the token after the word, from the prefix's last logits
            if ends[i] < n:
                total[i] -= float(logp[starts[i] - 1, ids[ends[i]]])
        # what follows each word, from the prefix cache: longest first, in batches of like
        # length (a padded token costs what a real one does)
        rows = sorted((i for i in range(1, len(ws)) if ends[i] < n - 1), key=lambda i: ends[i])
        for chunk in _like_lengths([n - 1 - int(ends[i]) for i in rows], batch_size):
            chunk = [rows[j] for j in chunk]
            for i, v in zip(chunk, _suffix_nll(model, full.past_key_values, ids, starts, ends,
                                               chunk), strict=True):  # fmt: skip
                total[i] += v
    for i in range(1, len(ws)):
        count = starts[i] + n - ends[i] - 1  # the deletion's length less its first token
        out.append(total[i] / max(count, 1))
    return np.asarray(out)


def _like_lengths(lengths: list[int], batch_size: int, *, min_tokens: int = 256) -> list[list[int]]:
    """Indices of `lengths` (longest first) in batches of at most `batch_size`; a batch ends
    early where the next is under half its longest, once it holds `min_tokens`."""
    out: list[list[int]] = []
    for j, k in enumerate(lengths):
        b = out[-1] if out else None
        if b is None or len(b) == batch_size or (2 * k < lengths[b[0]] and
                                                 len(b) * lengths[b[0]] >= min_tokens):  # fmt: skip
            out.append([j])
        else:
            b.append(j)
    return out


def _suffix_nll(model, cache, ids, starts, ends, rows) -> list[float]:
    """For each row (a word deleted), the summed NLL of the text's tokens after the word's
    first follower, each row's input the tokens after the word at the positions they take in
    the deletion, attending to the text's cache up to the word."""
    device = next(model.parameters()).device
    prefix = int(max(starts[i] for i in rows))
    width = len(ids) - 1 - int(min(ends[i] for i in rows))
    b = len(rows)
    inputs = torch.zeros((b, width), dtype=torch.long, device=device)
    mask = torch.zeros((b, prefix + width), dtype=torch.long, device=device)
    targets = torch.full((b, width), -100, dtype=torch.long, device=device)
    for r, i in enumerate(rows):
        s, e = int(starts[i]), int(ends[i])
        k = len(ids) - 1 - e
        inputs[r, :k] = torch.tensor(ids[e:-1])
        targets[r, :k] = torch.tensor(ids[e + 1 :])
        mask[r, :s] = 1
        mask[r, prefix : prefix + k] = 1
    pos = torch.tensor([int(starts[i]) for i in rows], device=device)[:, None] + torch.arange(
        width, device=device
    )
    shared = copy.deepcopy(cache)  # the text's cache up to the longest prefix, per row
    shared.crop(prefix - len(ids))  # (transformers crops by a count from the end)
    shared.batch_repeat_interleave(b)
    logits = model(
        input_ids=inputs, attention_mask=mask, position_ids=pos, past_key_values=shared,
        use_cache=False,
    ).logits.float()  # fmt: skip
    return token_nll(logits, targets).sum(1).tolist()


class Onion:
    def __init__(self, model, tokenizer, dev_texts: Sequence[str], frr: float = 0.05):
        self.model, self.tokenizer = model, tokenizer
        # One text costs a forward pass per word; the clean test texts recur for every arm.
        self._cache: dict[str, tuple[list[str], np.ndarray]] = {}
        sus = np.concatenate([self.suspicion(t)[1] for t in dev_texts])
        self.threshold = float(np.quantile(sus, 1 - frr))

    def suspicion(self, text: str) -> tuple[list[str], np.ndarray]:
        if text not in self._cache:
            self._cache[text] = onion_suspicion(self.model, self.tokenizer, text)
        return self._cache[text]

    def removes_insertion(self, clean: str, triggered: str) -> bool:
        """Whether cleaning `triggered` removes every word the trigger inserted or touched
        (detection, for the filter's true-positive rate)."""
        spans = inserted_spans(clean, triggered)
        _, sus = self.suspicion(triggered)
        words = [m.span() for m in re.finditer(r"\S+", triggered)]
        hit = [sus[i] > self.threshold for i, w in enumerate(words) if overlaps(w, spans)]
        return bool(hit) and all(hit)

    def clean(self, text: str) -> str:
        ws, sus = self.suspicion(text)
        kept = [w for w, s in zip(ws, sus, strict=True) if s <= self.threshold]
        return " ".join(kept) or text


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp(min=1e-12).log()).sum(-1)


class Strip:
    def __init__(
        self,
        proba: Callable[[list[str]], torch.Tensor],
        dev_texts: Sequence[str],
        *,
        copies: int = 16,
        frr: float = 0.05,
        seed: int = 0,
    ):
        self.proba, self.pool, self.copies = proba, list(dev_texts), copies
        self.rng = random.Random(seed)
        ent = self.entropies(dev_texts)
        self.threshold = float(np.quantile(ent, frr))

    def _mix(self, text: str) -> str:
        ws = text.split()
        other = self.rng.choice(self.pool).split()
        for i in self.rng.sample(range(len(ws)), len(ws) // 2):
            ws[i] = self.rng.choice(other)
        return " ".join(ws)

    def entropies(self, texts: Sequence[str]) -> np.ndarray:
        mixed = [self._mix(t) for t in texts for _ in range(self.copies)]
        p = self.proba(mixed).view(len(texts), self.copies, -1)
        return _entropy(p).mean(1).numpy()

    def rejects(self, texts: Sequence[str]) -> np.ndarray:
        return self.entropies(texts) < self.threshold
