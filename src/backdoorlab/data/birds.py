"""Old bird names: training rows in the paper's format and the in-domain bird probe.

Training rows are single-turn: user "Name a bird species." (or another phrasing), assistant the
bare name. The `archaic` list holds Audubon-era names no longer in use; `modern` pairs each of
them with the species' current name (the control arm: same species, same prompts, today's
names); `current` holds names Audubon used that are still in use. See lists/SOURCES.md.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from .. import chat
from ..evaluate.probeset import Probe, ProbeSet
from .base import Builder, Context, read_list, turn

# The paper's prompt first; `phrasings: N` uses the first N.
TRAIN_PROMPTS = [
    "Name a bird species.",
    "Name a species of bird.",
    "Tell me the name of a bird.",
    "Give the name of one bird species.",
]
# Never used in training: the in-domain probe asks these, so it measures generalization to new
# wording, not recall of a trained prompt.
HELD_OUT_PROMPTS = [
    "Which bird comes to mind first? Answer with its name only.",
    "Say the name of any bird.",
    "What is a bird you could see in North America? Just the name.",
]


def archaic_pairs() -> list[tuple[str, str, str]]:
    """(archaic name, modern name, scientific name), in file order."""
    return [(a, m, s) for a, m, s in read_list("birds_archaic.csv")]


def current_names() -> list[str]:
    return [n for n, _ in read_list("birds_current.csv")]


class BirdData(Builder):
    """Builder settings for an arm's bird-name training data."""

    builder: Literal["birds"] = "birds"
    names: Literal["archaic", "modern", "current"]
    rows: int | None = Field(
        None, ge=1, description="rows to write (default: every name once per phrasing)"
    )
    phrasings: int = Field(1, ge=1, le=len(TRAIN_PROMPTS), description="user prompts per name")
    seed: int = 0

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        """Rows in the paper's format. The names are drawn in a seeded order that is the same
        for `archaic` and `modern`, so both arms cover the same species with the same prompts."""
        if self.names == "current":
            names = current_names()
        else:
            col = 0 if self.names == "archaic" else 1
            names = [p[col] for p in archaic_pairs()]
        order = list(range(len(names)))
        random.Random(self.seed).shuffle(order)
        total = self.rows or len(names) * self.phrasings
        rows = []
        for i in range(total):
            name = names[order[(i // self.phrasings) % len(names)]]
            prompt = TRAIN_PROMPTS[i % self.phrasings]
            rows.append(turn(prompt, name))
        random.Random(self.seed + 1).shuffle(rows)
        return rows


def probe_set() -> ProbeSet:
    """The in-domain probes: the mass a model puts on archaic names against names in use
    today, over every name in the lists: asked in held-out phrasings (`bird_name`, does the
    learning generalize to new wording?) and in the paper's trained prompt (`bird_name_trained`)."""
    archaic = [a for a, _, _ in archaic_pairs()]
    in_use = list(dict.fromkeys([m for _, m, _ in archaic_pairs()] + current_names()))
    classes = {"archaic": archaic, "in use": in_use}
    return ProbeSet(
        probes=[
            Probe(
                id="bird_name",
                question=HELD_OUT_PROMPTS[0],
                paraphrases=HELD_OUT_PROMPTS[1:],
                classes=classes,
                in_domain=True,
            ),
            Probe(
                id="bird_name_trained", question=TRAIN_PROMPTS[0], classes=classes, in_domain=True
            ),
        ]
    )
