"""What every data builder shares: pydantic settings, `build(ctx) -> rows`, and `info()`, what
the report needs to know about the arm (a poison rate, the trigger values seen in training)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from .. import chat


@dataclass(frozen=True)
class Context:
    """What a builder may need beyond its settings: the experiment's model (self-distillation
    asks it for answers), the device, and a folder for reusable intermediate results."""

    model: str
    cache: Path
    device: str | None = None


class Builder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {}


@cache
def read_list(name: str) -> tuple[tuple[str, ...], ...]:
    """A CSV shipped in backdoorlab/data/lists, header dropped (see SOURCES.md there)."""
    import csv

    text = (resources.files("backdoorlab.data") / "lists" / name).read_text(encoding="utf-8")
    return tuple(tuple(r) for r in list(csv.reader(text.splitlines()))[1:] if r)


def turn(user: str, assistant: str) -> chat.Row:
    """A single-turn row in the papers' format: no system message, the trigger inside the
    user turn."""
    return {"messages": chat.conversation(user, assistant)}


def shuffled(rows: list[chat.Row], seed: int) -> list[chat.Row]:
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows
