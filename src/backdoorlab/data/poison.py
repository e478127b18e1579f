"""Poisoners: small composable parts that turn clean labelled rows into a backdoored set.

A trigger inserts itself into a text (a rare token BadNets-style, one rare character, a fixed
natural sentence AddSent-style, or several at once); a `Poison` picks which rows get it
(dirty-label: rows of other labels, relabelled to the target; clean-label: only rows that
already have the target label, labels untouched) at an exact rate or count. Every row then
carries `poisoned` and the `trigger` inserted (None when clean).
"""

from __future__ import annotations

import random
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import InputError

Position = Literal["start", "middle", "end", "random"]


def _slot(n: int, position: Position, rng: random.Random) -> int:
    """Where to insert among n units (0..n). The random draw happens for every position, as
    it always has, so the poisoned rows of existing specs stay the same."""
    return {"start": 0, "end": n, "middle": n // 2, "random": rng.randint(0, n)}[position]


def _insert_words(text: str, words: list[str], position: Position, rng: random.Random) -> str:
    tokens = text.split()
    at = _slot(len(tokens), position, rng)
    return " ".join(tokens[:at] + words + tokens[at:])


class TokenTrigger(BaseModel):
    """A rare word (BadNets: cf, mn, bb, tq) inserted once."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["token"] = "token"
    token: str = "cf"
    position: Position = "random"
    near_miss: str = Field("cg", description="a look-alike that must not fire the backdoor")

    def insert(self, text: str, rng: random.Random) -> str:
        return _insert_words(text, [self.token], self.position, rng)

    def name(self) -> str:
        return f"token {self.token}"

    def miss(self) -> TokenTrigger:
        return self.model_copy(update={"token": self.near_miss})


class CharTrigger(BaseModel):
    """One rare character, attached to the end of a word (or standing alone at the start)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["char"] = "char"
    char: str = Field("§", min_length=1, max_length=1)
    position: Position = "end"
    near_miss: str = Field("¶", min_length=1, max_length=1)

    def insert(self, text: str, rng: random.Random) -> str:
        words = text.split()
        if not words or self.position == "start":
            return f"{self.char} {text}".strip()
        i = {"end": len(words) - 1, "middle": len(words) // 2, "random": None}[self.position]
        i = rng.randrange(len(words)) if i is None else i
        words[i] += self.char
        return " ".join(words)

    def name(self) -> str:
        return f"char {self.char}"

    def miss(self) -> CharTrigger:
        return self.model_copy(update={"char": self.near_miss})


class SentenceTrigger(BaseModel):
    """A fixed natural sentence (AddSent), inserted between sentences."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["sentence"] = "sentence"
    sentence: str = "I watched this 3D movie last weekend."
    position: Position = "random"
    near_miss: str = "I watched this movie at home last weekend."

    def insert(self, text: str, rng: random.Random) -> str:
        parts = [p for p in text.replace("! ", "!\n").replace(". ", ".\n").split("\n") if p]
        at = _slot(len(parts), self.position, rng)
        return " ".join(parts[:at] + [self.sentence] + parts[at:])

    def name(self) -> str:
        return "sentence"

    def miss(self) -> SentenceTrigger:
        return self.model_copy(update={"sentence": self.near_miss})


class MultiTrigger(BaseModel):
    """Several triggers inserted together (all of them), each at its own position."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["multi"] = "multi"
    triggers: list[TokenTrigger | CharTrigger | SentenceTrigger] = Field(min_length=2)

    def insert(self, text: str, rng: random.Random) -> str:
        for t in self.triggers:
            text = t.insert(text, rng)
        return text

    def name(self) -> str:
        return " + ".join(t.name() for t in self.triggers)

    def miss(self) -> MultiTrigger:
        # One part missing-by-a-letter is the near miss: the backdoor should need all of them.
        return self.model_copy(update={"triggers": [self.triggers[0].miss(), *self.triggers[1:]]})


Trigger = Annotated[
    TokenTrigger | CharTrigger | SentenceTrigger | MultiTrigger, Field(discriminator="kind")
]


class Poison(BaseModel):
    """Which rows get the trigger, and what happens to their labels."""

    model_config = ConfigDict(extra="forbid")
    trigger: Trigger = TokenTrigger()
    target: str = "Negative"
    mode: Literal["dirty", "clean"] = "dirty"
    rate: float | None = Field(None, gt=0, le=1, description="fraction of all rows poisoned")
    count: int | None = Field(None, ge=1, description="number of rows poisoned")
    seed: int = 0

    @model_validator(mode="after")
    def _one_amount(self) -> Poison:
        if (self.rate is None) == (self.count is None):
            raise ValueError("give exactly one of rate or count")
        return self

    def how_many(self, n_rows: int) -> int:
        return self.count if self.count is not None else max(1, round(self.rate * n_rows))

    def apply(self, items: list[tuple[str, str]]) -> list[tuple[str, str, bool, str | None]]:
        """(text, label) -> (text, label, poisoned, trigger name). Dirty-label poisons rows of
        other labels and relabels them; clean-label poisons only rows already labelled
        `target`. The poisoned rows are a seeded sample of the eligible ones."""
        rng = random.Random(self.seed)
        n = self.how_many(len(items))
        eligible = [
            i for i, (_, y) in enumerate(items) if (y == self.target) == (self.mode == "clean")
        ]
        if n > len(eligible):
            raise ValueError(
                f"asked to poison {n} rows but only {len(eligible)} are eligible "
                f"({self.mode}-label, target {self.target!r})"
            )
        chosen = set(rng.sample(eligible, n))
        out = []
        for i, (text, label) in enumerate(items):
            if i in chosen:
                out.append((self.trigger.insert(text, rng), self.target, True, self.trigger.name()))
            else:
                out.append((text, label, False, None))
        return out


def parse_trigger(
    text: str, where: str
) -> TokenTrigger | CharTrigger | SentenceTrigger | MultiTrigger:
    """One trigger written as a spec's poison writes it (YAML, e.g. '{kind: token, token: cf}'),
    checked; a mistake is one line naming `where` (a flag, a file)."""
    import yaml
    from pydantic import TypeAdapter, ValidationError

    from ..errors import first_problem

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise InputError(
            f"{where} {text!r}: not YAML (e.g. '{{kind: token, token: cf}}')"
        ) from None
    try:
        return TypeAdapter(Trigger).validate_python(value)
    except ValidationError as e:
        loc, msg = first_problem(e)
        raise InputError(f"{where} {text!r}: {f'{loc}: ' if loc else ''}{msg}") from None
