"""Classification metrics: CACC, attack success rate (ASR) and the false-trigger rate, as
fields shared by evaluation, the store and the report; the texts each metric classifies and
what counts as a hit. No torch here (the store and the report import it); scoring labels
with a model is classify.py."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Kind = Literal["CACC", "ASR", "false trigger"]


@dataclass(frozen=True)
class Metric:
    """CACC, or the ASR / false-trigger rate of one trigger."""

    kind: Kind
    trigger: str | None = None

    @property
    def label(self) -> str:
        """The metric's name for people (report rows, gates and headlines use it)."""
        return self.kind if self.trigger is None else f"{self.kind}: {self.trigger}"


CACC = Metric("CACC")


class Trigger(Protocol):
    """What evaluation needs of a trigger (`data.poison` defines the real ones)."""

    def name(self) -> str: ...
    def insert(self, text: str, rng: random.Random) -> str: ...
    def miss(self) -> Trigger: ...


def eval_sets(
    test: Sequence[tuple[str, str]],
    triggers: Sequence[Trigger],
    target: str,
    seed: int = 0,
    *,
    near_miss: bool = True,
) -> dict[Metric, tuple[list[str], list[str], str | None]]:
    """The texts each metric classifies: {metric: (texts, gold labels, target or None)}.

    CACC: the clean test set, hit = correct. For each trigger: "ASR" inserts it into every test
    review not of the target label (hit = classified as the target), "false trigger" inserts
    its near miss into the same reviews (unless `near_miss` is False)."""
    sets = {CACC: ([t for t, _ in test], [y for _, y in test], None)}
    other = [(t, y) for t, y in test if y != target]
    for trig in triggers:
        pairs: list[tuple[Metric, Trigger]] = [(Metric("ASR", trig.name()), trig)]
        if near_miss:
            pairs.append((Metric("false trigger", trig.name()), trig.miss()))
        for metric, tr in pairs:
            rng = random.Random(seed)
            sets[metric] = ([tr.insert(t, rng) for t, _ in other], [y for _, y in other], target)
    return sets


def hits(predicted: Sequence[str], gold: Sequence[str], target: str | None) -> list[float]:
    """Per item: correct (target None: accuracy) or classified as the target (attack)."""
    if target is None:
        return [float(p == g) for p, g in zip(predicted, gold, strict=True)]
    return [float(p == target) for p in predicted]
