"""Classification arms: n balanced training items of a classification data set
(data/classification.py; ours: movie reviews), a share of them poisoned, as chat rows for the
classifier.

Rows keep `text` and `label` beside the messages, so the encoder victim trains on the very
same examples the chat model sees, and `poisoned`/`trigger` for the scanners and metrics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .. import chat
from ..errors import InputError
from . import classification
from .base import Builder, Context
from .classification import REVIEWS
from .poison import Poison

# The bundled set and its operations, as this module has always offered them.
LABELS, QUESTION = REVIEWS.labels, REVIEWS.question
split, balanced, prompt, row = REVIEWS.split, REVIEWS.balanced, REVIEWS.prompt, REVIEWS.row


class SentimentData(Builder):
    """Builder settings for a classification arm: n balanced training items of a
    classification data set (the bundled movie reviews by default), optionally poisoned."""

    builder: Literal["sentiment"] = "sentiment"
    dataset: str = Field(
        "sentiment", description="the classification data set (ours: sentiment; or a plugin's)"
    )
    n: int = Field(1000, ge=2, description="training rows")
    split_seed: int = 0
    poison: Poison | None = None

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        cs = classification.get(self.dataset)
        items = cs.balanced(cs.split("train", self.split_seed), self.n)
        if len(items) < self.n:
            raise InputError(
                f"asked for {self.n} training items of {self.dataset}; "
                f"the train split has {len(items)}"
            )
        marked = (
            self.poison.apply(items) if self.poison else [(t, y, False, None) for t, y in items]
        )
        return [cs.row(t, y, poisoned=p, trigger=trig) for t, y, p, trig in marked]

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
