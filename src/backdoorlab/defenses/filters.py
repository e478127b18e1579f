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

import numpy as np
import torch

from .inspect import inserted_spans, overlaps
from .scan import perplexity_scores


def onion_suspicion(model, tokenizer, text: str) -> tuple[list[str], np.ndarray]:
    """Words of `text` and, per word, perplexity(text) - perplexity(text without it)."""
    ws = text.split()
    if len(ws) < 2:
        return ws, np.zeros(len(ws))
    variants = [text] + [" ".join(ws[:i] + ws[i + 1 :]) for i in range(len(ws))]
    ppl = np.exp(perplexity_scores(model, tokenizer, variants, batch_size=32))
    return ws, ppl[0] - ppl[1:]


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
