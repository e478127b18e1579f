"""The audit measured against a run: the arm of RUN trained on the audited data (found by the
data file's content hash), its realized shift per row (arm minus the run's reference, mean and
95% interval over seeds), and per estimator how well the predictions order them.

Only free rows count: a probe's last class is the negative of the others' sum, and a pooled
row repeats its probes' rows, so either would count one observation twice.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from ..errors import InputError
from ..evaluate.aggregate import difference
from ..evaluate.sections import SWEEPS, pick_reference
from ..models.loading import read_manifest
from ..results import Interval

if TYPE_CHECKING:
    from . import AuditResult

# The sections of class masses, and what one observation of them is (as the report has it).
UNITS = {"Probes: probability mass per class": "phrasings", SWEEPS: "questions"}


class RealizedRow(BaseModel):
    row: str
    estimate: Interval
    in_domain: bool
    effect: bool | None  # the interval excludes zero (None: one observation, no interval)


class Check(BaseModel):
    estimator: str
    rows: int  # free rows in both the audit and the run
    spearman: float | None  # rank correlation of predicted and realized shifts
    spearman_out_of_domain: float | None
    effects: int  # rows whose realized interval excludes zero
    auroc: float | None  # |prediction| ranks effect rows above the others
    sign: float | None  # share of effect rows whose predicted sign is the realized one
    seconds: float
    cost: float | None  # seconds over the arm's training seconds

    def cells(self) -> list[str]:
        """The check as the terminal and the docs table show it (COLUMNS)."""
        return [
            self.estimator, str(self.rows), number(self.spearman),
            number(self.spearman_out_of_domain), str(self.effects), number(self.auroc),
            number(self.sign), number(self.cost, 3),
        ]  # fmt: skip


COLUMNS = [
    "estimator",
    "rows",
    "rank corr.",
    "out of domain",
    "effect rows",
    "AUROC",
    "sign",
    "cost",
]


def number(x: float | None, places: int = 2) -> str:
    return "-" if x is None else f"{x:.{places}f}"


class Validation(BaseModel):
    run: str
    arm: str
    reference: str
    training_seconds: float | None  # the arm's training, mean over seeds
    realized: list[RealizedRow]
    checks: list[Check] = []


def _arm_of(run: Path, data_sha256: str) -> str:
    for path in sorted((run / "data").glob("*.jsonl")):
        if hashlib.sha256(path.read_bytes()).hexdigest() == data_sha256:
            return path.stem.rsplit("-", 1)[0]
    raise InputError(f"{run}: no arm of this run trained on the audited data (RUN/data/*.jsonl)")


def realized(run: Path, data_sha256: str) -> Validation:
    """The arm of RUN trained on the data, its reference, the realized rows and the arm's
    training seconds (no checks yet: `validate` adds them)."""
    from .. import results

    arm = _arm_of(run, data_sha256)
    res = results.open(run)
    others = sorted(set(res.arms) - {arm})
    if res.reference in others:
        ref = res.reference
    elif (ref := pick_reference(set(others), None)) is None:
        raise InputError(f"{run}: arm {arm} has no other arm to be compared with")
    # The report's own difference (paired by probe variant), from the stored observations:
    # also where the report compared with no one (a run that left its reference out).
    cells = {(r.section, r.row, r.column): r for r in res.rows if r.section in UNITS}
    rows = []
    for (section, row, column), r in cells.items():
        other = cells.get((section, row, ref))
        if column != arm or other is None:
            continue
        e = difference(r.observations, other.observations, unit=UNITS[section], paired=True)
        rows.append(
            RealizedRow(
                row=row,
                estimate=Interval.of(e),
                in_domain=r.in_domain,
                effect=(e.lo > 0 or e.hi < 0) if e.lo < e.hi else None,
            )  # fmt: skip
        )
    if not rows:
        raise InputError(f"{run}: no probe rows measured for both {arm} and {ref}")
    train = [t.seconds for t in res.timings
             if t.stage.startswith(f"train {arm} seed ") and t.status == "ran"]  # fmt: skip
    if not train:  # trained by an earlier `run` into the directory: its manifest kept the time
        manifests = sorted(Path(run).glob(f"train/{glob.escape(arm)}-seed*-*/manifest.json"))
        train = [m["seconds"] for m in map(read_manifest, (p.parent for p in manifests)) if m]
    return Validation(
        run=str(run), arm=arm, reference=ref, realized=rows,
        training_seconds=sum(train) / len(train) if train else None,
    )  # fmt: skip


def check(
    name: str, pairs: list[tuple[float, RealizedRow]], seconds: float, train: float | None
) -> Check:
    """How well predictions (each with its row's realized shift) order the realized shifts."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    def rho(keep: list[tuple[float, RealizedRow]]) -> float | None:
        x, y = [p for p, _ in keep], [r.estimate.mean for _, r in keep]
        if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
            return None
        return float(spearmanr(x, y).statistic)

    known = [(p, r) for p, r in pairs if r.effect is not None]
    effects = [bool(r.effect) for _, r in known]
    hits = [(p > 0) == (r.estimate.mean > 0) for p, r in known if r.effect]
    return Check(
        estimator=name, rows=len(pairs), spearman=rho(pairs),
        spearman_out_of_domain=rho([(p, r) for p, r in pairs if not r.in_domain]),
        effects=sum(effects),
        auroc=(
            float(roc_auc_score(effects, [abs(p) for p, _ in known]))
            if 0 < sum(effects) < len(effects) else None
        ),
        sign=sum(hits) / len(hits) if hits else None,
        seconds=seconds, cost=seconds / train if train else None,
    )  # fmt: skip


def pairs(result: AuditResult, name: str) -> list[tuple[float, RealizedRow]]:
    """Each free row's prediction and realized shift (a validated result's)."""
    assert result.validation is not None
    by_row = {r.row: r for r in result.validation.realized}
    return [(a.shifts[name], by_row[a.row]) for a in result.rows if a.free and a.row in by_row]


def validate(result: AuditResult, found: Validation) -> Validation:
    """`found` (what `realized` read of the run) with a check per estimator of `result`."""
    result = result.model_copy(update={"validation": found})
    checks = [
        check(name, pairs(result, name), result.seconds[name], found.training_seconds)
        for name in result.estimators
    ]
    return found.model_copy(update={"checks": checks})


def pooled(results: list[AuditResult], name: str) -> Check:
    """One check over several validated audits' rows together (costs summed)."""
    done = [r for r in results if r.validation is not None and name in r.estimators]
    train = sum(r.validation.training_seconds or 0 for r in done if r.validation)
    return check(
        name, [p for r in done for p in pairs(r, name)],
        sum(r.seconds[name] for r in done), train or None,
    )  # fmt: skip
