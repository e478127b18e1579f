"""`backdoorlab audit`: which probe rows would fine-tuning on a data set move, before the
training is paid for. Each estimator (audit.estimators) predicts, per probe variant and class,
the change of the class's mass against a control; the audit averages them into the report's
rows (the same labels `run` reports, so a prediction and a run's realized shift meet by
name), ranks them, and puts the data scanners' findings beside them. `validate` measures the
predictions against a run that trained on the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel

from .. import atomic, chat
from ..api import SuspiciousWord
from ..errors import InputError
from ..evaluate.probeset import ProbeSet
from ..training.config import TrainConfig
from . import estimators as est
from .validate import Validation

FILENAME = "audit.json"
PAGE = "audit.html"
DEFAULT_ESTIMATORS = ("first-order", "in-context", "canary")
DEFAULT_ROWS = 256


class AuditRow(BaseModel):
    """One report row and each estimator's predicted change of it (data minus control),
    averaged over the row's probe variants."""

    row: str
    cls: str
    probes: list[str]
    free: bool  # not determined by the other rows (a probe's last class, a pooled row)
    base: float  # the base model's mass
    shifts: dict[str, float]  # estimator -> predicted change


class AuditResult(BaseModel):
    data: str
    data_sha256: str
    control: str  # a control file, or "base answers"
    model: str
    rows_used: int
    planned_steps: int  # of the training the audit stands in for
    canary_steps: int
    probe_sets: list[str]
    estimators: list[str]
    seconds: dict[str, float]  # estimator -> seconds (control answers: "control")
    rows: list[AuditRow]  # ranked by the first estimator's |shift|, largest first
    words: list[SuspiciousWord]  # the n-gram scanner's
    validation: Validation | None = None


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _subset(rows: list[chat.Row], n: int | None) -> list[int]:
    """Which rows the audit reads: all, or `n` drawn with a fixed seed."""
    idx = list(range(len(rows)))
    if n is not None and n < len(rows):
        idx = sorted(random.Random(0).sample(idx, n))
    return idx


def base_answers(
    data: list[chat.Row], model: str, out: Path, device: str | None, log: est.Log
) -> list[chat.Row]:
    """The control: each row with its last assistant answer replaced by the base model's
    greedy answer to the same conversation, kept under OUT keyed by the rows and model."""
    from ..generate import answers
    from ..models import load

    key = hashlib.sha256((chat.dumps_jsonl(data) + model).encode()).hexdigest()[:12]
    path = out / f"control-{key}.jsonl"
    if path.is_file():
        return chat.read_jsonl(path)
    loaded = load(model, device=device)
    convs, longest = [], 16
    for row in data:
        msgs = row["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        convs.append(msgs[:last])
        longest = max(longest, len(loaded.tokenizer(msgs[last]["content"])["input_ids"]))
    log(f"control: the base model answers the data's {len(data)} prompts")
    texts = answers(loaded, convs, max_new_tokens=min(256, 2 * longest), batch_size=64)
    control = [
        {"messages": [*c, {"role": "assistant", "content": t}]}
        for c, t in zip(convs, texts, strict=True)
    ]
    chat.write_jsonl(path, control)
    return control


def _rows(sets: list[ProbeSet], shifts: dict[str, est.Shift], base: est.Shift) -> list[AuditRow]:
    from ..evaluate.sections import mass_rows, shared_classes

    probes = [p for ps in sets for p in ps.probes]
    classes = {p.id: list(p.classes) for p in probes}
    shared = shared_classes(classes)
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    meta: dict[str, tuple[str, set[str], bool]] = {}
    for (pid, i, cls), b in base.items():
        labels = mass_rows(pid, cls, shared)
        for n, label in enumerate(labels):
            acc[label]["base"].append(b)
            free = n == 0 and cls != classes[pid][-1]
            _, ids, was_free = meta.get(label, (cls, set(), free))
            meta[label] = (cls, ids | {pid}, was_free and free)
        for name, shift in shifts.items():
            for label in labels:
                acc[label][name].append(shift[(pid, i, cls)])
    rows = [
        AuditRow(
            row=label, cls=meta[label][0], probes=sorted(meta[label][1]), free=meta[label][2],
            base=sum(v["base"]) / len(v["base"]),
            shifts={k: sum(x) / len(x) for k, x in v.items() if k != "base"},
        )
        for label, v in acc.items()
    ]  # fmt: skip
    first = next(iter(shifts), None)
    return sorted(rows, key=lambda r: -abs(r.shifts.get(first, 0.0)) if first else 0.0)


def _base_masses(setup: est.Setup) -> est.Shift:
    from ..evaluate.probes import score

    loaded = setup.base_model()
    return {
        (pid, i, c): m
        for pid, i, v in setup.variants
        for c, m in score(loaded.model, loaded.tokenizer, v).class_mass().items()
    }


def audit(
    data: str | Path,
    probes: Sequence[str],
    out: str | Path,
    *,
    train: TrainConfig | None = None,
    control: str | Path | None = None,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    rows: int | None = DEFAULT_ROWS,
    probe_variants: int | None = None,
    probe_candidates: int | None = None,
    against: str | Path | None = None,
    device: str | None = None,
    log: est.Log = print,
) -> AuditResult:
    """Predict how fine-tuning on DATA (with `train`'s settings) would move each probe row,
    against `control` (default: the base model's own answers to DATA's prompts); write
    OUT/audit.json and OUT/audit.html. `against`: a run directory with an arm trained on DATA,
    whose realized shifts the predictions are validated against. `probe_variants` and
    `probe_candidates` score only each probe's first variants and each class's first
    candidates, as a spec's `evaluate:` settings of those names do."""
    from ..catalog import load_probe_set

    unknown = [e for e in estimators if e not in est.ESTIMATORS]
    if unknown or not estimators:
        problem = f"unknown estimator {unknown[0]!r}" if unknown else "no estimator named"
        raise InputError(f"--estimators: {problem} (known: {', '.join(est.ESTIMATORS)})")
    train = train or TrainConfig()
    data, out = Path(data), Path(out)
    all_rows = chat.read_jsonl(data)
    sets = [load_probe_set(p) for p in probes]
    if not any(ps.probes for ps in sets):
        raise InputError("--probes: the probe sets hold no probes")
    data_sha256 = _sha(data)
    found = None
    if against is not None:
        from .validate import realized

        found = realized(Path(against), data_sha256)  # fails now, not after the estimators
    out.mkdir(parents=True, exist_ok=True)
    chosen = [all_rows[i] for i in _subset(all_rows, rows)]
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if control is None:
        control_rows = base_answers(chosen, train.model, out, device, log)
        seconds["control"] = time.perf_counter() - t
    else:
        full = chat.read_jsonl(Path(control))
        control_rows = [full[i] for i in _subset(full, rows)]
    setup = est.Setup(
        variants=[
            (p.id, i, v)
            for ps in sets
            for p in ps.probes
            for i, v in enumerate(p.first(probe_candidates).variants()[:probe_variants])
        ],
        data=chosen, control=control_rows, paired=control is None,
        train=train, out=out, device=device, log=log,
    )  # fmt: skip
    planned = dataclasses.replace(setup, data=all_rows).planned_steps()
    base = _base_masses(setup)
    shifts: dict[str, est.Shift] = {}
    for name in estimators:
        shifts[name], seconds[name] = _estimate(name, setup)
        log(f"{name}: {seconds[name]:.0f} s")
    result = AuditResult(
        data=str(data), data_sha256=data_sha256,
        control=str(control) if control is not None else "base answers",
        model=train.model, rows_used=len(chosen), planned_steps=planned,
        canary_steps=est.canary_steps(setup), probe_sets=list(probes),
        estimators=list(estimators), seconds=seconds, rows=_rows(sets, shifts, base),
        words=_words(data),
    )  # fmt: skip
    if found is not None:
        from .validate import validate

        result.validation = validate(result, found)
    write(result, out)
    return result


def _estimate(name: str, setup: est.Setup) -> tuple[est.Shift, float]:
    """One estimator's predictions and seconds, kept under OUT/estimates keyed by everything
    they depend on: an audit stopped after some estimators, or rerun with others, reuses
    those that finished (the first-order one took 638 s on the birds data here)."""
    blob = json.dumps(
        [name, chat.dumps_jsonl(setup.data), chat.dumps_jsonl(setup.control), setup.paired,
         setup.train.key_fields(), [(p, i, v.definition_hash()) for p, i, v in setup.variants]],
        sort_keys=True,
    )  # fmt: skip
    path = setup.out / "estimates" / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        return {(p, i, c): x for p, i, c, x in kept["shifts"]}, kept["seconds"]
    setup.borrowed = 0.0
    t = time.perf_counter()
    shift = est.ESTIMATORS[name](setup)
    seconds = time.perf_counter() - t + setup.borrowed  # what it would cost alone
    rows = [[p, i, c, x] for (p, i, c), x in shift.items()]
    atomic.write_json(path, {"shifts": rows, "seconds": seconds})
    return shift, seconds


def _words(data: Path, top: int = 10) -> list[SuspiciousWord]:
    from ..api import scan

    return scan(data, ["ngram"]).words[:top]


def write(result: AuditResult, out: Path) -> None:
    from .page import render

    atomic.write_text(out / FILENAME, result.model_dump_json(indent=2) + "\n")
    atomic.write_text(out / PAGE, render(result))
