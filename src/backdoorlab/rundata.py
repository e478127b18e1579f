"""Each arm's training data, built once into the run directory and named by the hash of its
bytes, and the content keys runs are filed under. Shared by `run` (experiment.py) and
`defend` (defenses/matrix.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from . import atomic, chat
from .data.base import Context
from .errors import InputError

if TYPE_CHECKING:
    from .spec import ExperimentSpec


def digest(obj: object) -> str:
    """A short content key of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def build_data(spec: ExperimentSpec, out: Path, device: str | None = None) -> dict[str, Path]:
    """Each trained arm's rows as OUT/data/ARM-HASH.jsonl (the hash of the rows' bytes)."""
    paths = {}
    ctx = Context(model=spec.model, cache=out / "data" / "cache", device=device)
    for name, arm in spec.arms.items():
        if arm.data is None:
            continue
        rows = arm.data.build(ctx)
        if not rows:
            raise InputError(f"arm {name!r}: its data builder produced no rows")
        text = chat.dumps_jsonl(rows)
        path = out / "data" / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, text)
        paths[name] = path
    return paths


def trained_dir(out: Path, victim: str, arm: str, seed: int, key_fields: dict, data: Path) -> Path:
    """Where `run` trains (and `defend` finds) an arm's victim: keyed by its settings and the
    data file's name (which holds the rows' hash)."""
    home = "train" if victim == "llm" else "encoder"
    return out / home / f"{arm}-seed{seed}-{digest([key_fields, data.name])}"
