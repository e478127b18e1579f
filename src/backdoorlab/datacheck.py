"""`backdoorlab data check`: what a chat JSONL file holds (rows, roles, extra fields,
duplicates, token lengths), as a record the command line prints."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import chat


@dataclass(frozen=True)
class Lengths:
    """Token counts per row."""

    values: list[int]

    def summary(self) -> str:
        xs = self.values
        p95 = statistics.quantiles(xs, n=20, method="inclusive")[-1] if len(xs) > 1 else xs[0]
        return (
            f"min {min(xs)}  median {statistics.median(xs):g}  p95 {p95:g}  max {max(xs)}  "
            f"total {sum(xs)}"
        )


@dataclass
class DataDescription:
    rows: int
    roles: Counter[str]
    extra: Counter[str]  # fields besides `messages`, by how many rows have them
    duplicates: list[tuple[int, int]]  # (line, the line it repeats)
    lengths: Lengths | None = None  # whole rows, chat template included
    trained: Lengths | None = None  # assistant tokens (training rows)
    max_length: int | None = None
    too_long: list[tuple[int, int]] = field(default_factory=list)  # (line, tokens)


def describe(
    path: Path, *, prompts: bool = False, tokenizer: Any = None, max_length: int | None = None
) -> DataDescription:
    """Validate `path` (errors name the file and line) and describe it; with a tokenizer,
    token lengths too, and for training rows which are longer than `max_length` (default:
    training's)."""
    lines = chat.read_jsonl_lines(path, training=not prompts)
    first_seen: dict[str, int] = {}
    dups: list[tuple[int, int]] = []
    for line, r in lines:
        key = json.dumps(r["messages"], sort_keys=True)
        if key in first_seen:
            dups.append((line, first_seen[key]))
        else:
            first_seen[key] = line
    d = DataDescription(
        rows=len(lines),
        roles=Counter(m["role"] for _, r in lines for m in r["messages"]),
        extra=Counter(k for _, r in lines for k in r if k != "messages"),
        duplicates=dups,
    )
    if tokenizer is None:
        return d
    if prompts:
        d.lengths = Lengths([len(chat.encode_prompt(tokenizer, r["messages"])) for _, r in lines])
        return d
    from .training.config import TrainConfig

    enc = [chat.encode_training(tokenizer, r["messages"]) for _, r in lines]
    d.lengths = Lengths([len(ids) for ids, _ in enc])
    d.trained = Lengths([sum(mask) for _, mask in enc])
    d.max_length = max_length or TrainConfig.model_fields["max_length"].default
    d.too_long = [
        (line, n) for (line, _), n in zip(lines, d.lengths.values, strict=True) if n > d.max_length
    ]
    return d
