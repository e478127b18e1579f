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

import random
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from .inspect import inserted_spans, overlaps
from .scan import perplexity_scores, token_nll


def onion_suspicion(
    model, tokenizer, text: str, *, batch_size: int = 32, shared: bool = True,
    pack_tokens: int = 768,
) -> tuple[list[str], np.ndarray]:  # fmt: skip
    """Words of `text` and, per word, perplexity(text) - perplexity(text without it).
    `shared` (the default): every deletion in packed passes of at most `pack_tokens` tokens
    that share the text's own tokens; off, each deletion runs whole, `batch_size` texts a
    pass (as benchmarks/label_scoring.py compares)."""
    ws = text.split()
    if len(ws) < 2:
        return ws, np.zeros(len(ws))
    nll = _deletions_packed(model, tokenizer, text, ws, pack_tokens) if shared else None
    if nll is None:  # words that do not tokenize apart, or asked for: each deletion whole
        variants = [text] + [" ".join(ws[:i] + ws[i + 1 :]) for i in range(len(ws))]
        nll = perplexity_scores(model, tokenizer, variants, batch_size=batch_size)
    ppl = np.exp(nll)
    return ws, ppl[0] - ppl[1:]


class _Segment(NamedTuple):
    """Tokens packed into one pass: what each predicts (-100: nothing), the position of the
    first, and how many of the text's own tokens (packed first) it may attend to."""

    tokens: list[int]
    targets: list[int]
    position: int
    sees: int


def _deletions_packed(
    model, tokenizer, text: str, ws: list[str], pack_tokens: int
) -> np.ndarray | None:
    """The mean token NLL of `text` and of each one-word deletion, as perplexity_scores gives
    them, None where the tokenizer does not tokenize space-separated words apart (then a
    deletion's tokens are not the text's with a span cut out).

    A deletion's tokens before its word are the text's own, so their NLL is read off the
    text's pass; only the tokens after the word run again, at the positions they take in the
    deletion, attending to the text's tokens before the word. The text and those suffixes go
    into one sequence under a block mask: about half the tokens of running every deletion
    whole, in products of hundreds of rows (BENCHMARKS.md, ONION)."""
    pieces = [
        tokenizer(w if i == 0 else " " + w, add_special_tokens=False)["input_ids"]
        for i, w in enumerate(ws)
    ]
    ids = [t for p in pieces for t in p]
    if not all(pieces) or tokenizer(" ".join(ws))["input_ids"] != ids:
        return None
    n = len(ids)
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    starts = [e - len(p) for e, p in zip(ends, pieces, strict=True)]
    # Run on their own: the text as given where its spacing changes its tokens, and the first
    # word's deletion, whose next word then starts the text without its space.
    alone = [tokenizer(t)["input_ids"] for t in (text, " ".join(ws[1:]))]
    fresh = [a for a in alone if a != ids]
    segments = [_Segment(f, f[1:] + [-100], 0, 0) for f in fresh] + [
        _Segment(ids[ends[i] : -1], ids[ends[i] + 1 :], starts[i], starts[i])
        for i in range(1, len(ws))
        if ends[i] < n - 1
    ]
    sums, nll_own, logp_own = _packed_nll(model, _Segment(ids, ids[1:] + [-100], 0, 0), segments,
                                          pack_tokens)  # fmt: skip
    before = np.concatenate([[0.0], np.cumsum(nll_own)])  # before[j]: NLL of tokens 1..j
    summed = iter(sums)  # in the segments' order: the fresh ones, then the suffixes
    out = [before[-1] / (n - 1) if a == ids else next(summed) / max(len(a) - 1, 1) for a in alone]
    for i in range(1, len(ws)):
        s, e = starts[i], ends[i]
        total = before[s - 1]
        if e < n:  # the word's first follower, from the text's logits before the word
            total -= float(logp_own[s - 1, ids[e]])
        if e < n - 1:
            total += next(summed)
        out.append(total / max(s + n - e - 1, 1))  # the deletion's length less its first token
    return np.asarray(out)


@torch.inference_mode()
def _packed_nll(model, own: _Segment, segments: list[_Segment], pack_tokens: int):
    """Each segment's summed NLL, and the NLL and log-probabilities at each of `own`'s
    tokens. `own` leads every pass, since segments attend to its tokens; the segments fill
    passes of up to `pack_tokens` tokens, at least one each."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n = len(own.tokens)
    passes: list[list[_Segment]] = [[]]
    for seg in segments:
        if passes[-1] and n + sum(len(s.tokens) for s in passes[-1] + [seg]) > pack_tokens:
            passes.append([])
        passes[-1].append(seg)
    sums: list[float] = []
    for k, group in enumerate(passes):
        spans, tokens, targets, positions = [], list(own.tokens), list(own.targets), list(range(n))
        for seg in group:
            spans.append((len(tokens), len(seg.tokens)))
            tokens += seg.tokens
            targets += seg.targets
            positions += range(seg.position, seg.position + len(seg.tokens))
        allowed = torch.ones((len(tokens),) * 2, dtype=torch.bool).tril()
        allowed[n:, :n] = False
        for (a, m), seg in zip(spans, group, strict=True):
            allowed[a : a + m, : seg.sees] = True
            allowed[a : a + m, n:a] = False  # not the segments before it
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
        skip = 0 if k == 0 else n  # the text's own logits once
        logits = model(
            input_ids=torch.tensor([tokens], device=device),
            position_ids=torch.tensor([positions], device=device),
            attention_mask=mask[None, None].to(device),
            logits_to_keep=len(tokens) - skip,
        ).logits.float()  # fmt: skip
        nll = token_nll(logits, torch.tensor([targets[skip:]], device=device))[0]
        if k == 0:
            nll_own, logp_own = nll[: n - 1].cpu().numpy(), logits[0, :n].log_softmax(-1)
        sums += [float(nll[a - skip : a - skip + m].sum()) for a, m in spans]
    return sums, nll_own, logp_own


class Onion:
    def __init__(self, model, tokenizer, dev_texts: Sequence[str], frr: float = 0.05):
        self.model, self.tokenizer = model, tokenizer
        # A text of n tokens costs about n^2 / 2 tokens of passes; the clean test texts recur
        # for every arm.
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
