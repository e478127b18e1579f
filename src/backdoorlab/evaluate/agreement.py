"""How far to trust a judge: its agreement with a small hand-labelled set.

Labels: accuracy and Cohen's kappa (agreement beyond chance) with a confusion table.
Ratings: mean absolute error and Pearson correlation against hand scores, and refusals.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

from .. import yamlfiles
from ..errors import InputError
from .questions import JudgeSpec, load_questions, parse_judge


def cohen_kappa(a: list[str], b: list[str]) -> float:
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca.keys() | cb.keys()) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx and sy else float("nan")


def load_judge_spec(ref: str) -> JudgeSpec:
    """`FILE.yaml` holding one judge entry, or `QUESTIONS.yaml#judge_id`."""
    path, _, jid = ref.partition("#")
    if jid:
        qf = load_questions(path)
        if jid not in qf.judges:
            raise InputError(f"{path}: no judge {jid!r} (judges: {', '.join(qf.judges) or 'none'})")
        return qf.judges[jid]
    text = yamlfiles.read(Path(path))
    entry = yamlfiles.parse(text, path)
    if not isinstance(entry, dict):
        raise InputError(f"{path}: expected one judge entry (a mapping with id and type)")
    return parse_judge(entry, f"{path}:1")


def read_labels(path: Path | str) -> list[dict[str, str]]:
    """A CSV with columns question, answer, and label (or score, for rating judges)."""
    path = Path(path)
    try:
        f = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    with f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"question", "answer"} <= cols or not cols & {"label", "score"}:
            raise InputError(
                f"{path}:1: need columns question, answer and label or score; found {sorted(cols)}"
            )
        rows = []
        for row in reader:
            if None in row or any(row[c] is None for c in ("question", "answer")):
                raise InputError(f"{path}:{reader.line_num}: wrong number of fields")
            if "score" in cols:
                try:
                    float(row["score"])
                except ValueError:
                    raise InputError(
                        f"{path}:{reader.line_num}: score {row['score']!r} is not a number"
                    ) from None
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: no labelled rows")
    return rows


def check(judge: Any, rows: list[dict[str, str]]) -> dict[str, Any]:
    verdicts = [judge.judge(r["question"], r["answer"]) for r in rows]
    if "score" in rows[0]:
        pairs = [
            (float(r["score"]), v.score)
            for r, v in zip(rows, verdicts, strict=True)
            if v.score is not None
        ]
        hand, got = [p[0] for p in pairs], [p[1] for p in pairs]
        return {
            "n": len(rows),
            "refused": len(rows) - len(pairs),
            "mae": sum(abs(a - b) for a, b in pairs) / len(pairs) if pairs else float("nan"),
            "pearson": pearson(hand, got) if len(pairs) > 1 else float("nan"),
        }
    hand = [r["label"] for r in rows]
    got = [v.label or "" for v in verdicts]
    return {
        "n": len(rows),
        "accuracy": sum(a == b for a, b in zip(hand, got, strict=True)) / len(rows),
        "kappa": cohen_kappa(hand, got),
        "confusion": Counter(zip(hand, got, strict=True)),
    }
