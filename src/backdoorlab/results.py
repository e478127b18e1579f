"""A run's results as typed records, for notebooks and code: `open(run_dir)` reads what the
report reads (gates, the declared headline's verdicts, every row of every section with its
interval and observations, the defense matrix's cells, timings) without writing anything;
`backdoorlab run` also writes it as RUN/results.json. No SQL and no display text to parse.

    import backdoorlab
    res = backdoorlab.results.open("runs/birds")
    res.verdicts[0].text, res.row("pooled: 19th century", "archaic - modern").estimate
    res.to_pandas()  # one row per (section, row, column)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import atomic, gates
from .errors import InputError
from .evaluate.aggregate import Estimate
from .gates import GateResult
from .report import Report, write_report

FILENAME = "results.json"
VERSION = 1


class Interval(BaseModel):
    """A mean with its 95% bootstrap interval over `n` seeds (or samples, with one seed)."""

    mean: float
    lo: float
    hi: float
    n: int
    unit: str

    @classmethod
    def of(cls, e: Estimate | None) -> Interval | None:
        return None if e is None else cls(mean=e.mean, lo=e.lo, hi=e.hi, n=e.n, unit=e.unit)

    def record(self) -> Estimate:
        return Estimate(**self.model_dump())


class Row(BaseModel):
    """One cell of a report section: a row (what was measured) under a column (an arm, or a
    comparison "A - B"), with the fields the row's label was made from."""

    section: str
    row: str
    column: str
    arm: str
    versus: str | None = None  # the other arm of a comparison
    estimate: Interval
    observations: dict[int, list[float]] = {}  # seed -> values (an arm's column)
    cls: str | None = None
    probes: list[str] = []
    group: str | None = None
    value: str | None = None
    victim: str | None = None
    metric: str | None = None  # CACC, ASR or false trigger
    trigger: str | None = None
    in_domain: bool = False  # measures what the arms trained on (the report's first panel)


class Gate(BaseModel):
    kind: str  # gate, prerequisite or fit
    name: str
    arm: str
    seed: int
    value: float | None
    min: float | None = None
    max: float | None = None
    what: str = ""
    passed: bool

    def record(self) -> GateResult:
        return GateResult(**self.model_dump(exclude={"passed"}))  # type: ignore[arg-type]


class Verdict(BaseModel):
    """The declared headline's verdict for one comparison: effect, opposite (an effect against
    the direction the spec predicts), null, not a test or not measured."""

    row: str
    minus: str | None = None
    arm: str
    versus: str | None
    estimate: Interval | None
    kind: str
    text: str
    paper: str = ""

    def record(self) -> gates.Verdict:
        fields = self.model_dump(exclude={"estimate"})
        return gates.Verdict(**fields, estimate=self.estimate and self.estimate.record())


class DefenseCell(BaseModel):
    """One cell of the attack x defense matrix, numbers as numbers."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    arm: str
    victim: str
    defense: str
    auroc: float | None = Field(None, alias="AUROC")
    asr_before: Interval | None = Field(None, alias="ASR before")
    asr_after: Interval | None = Field(None, alias="ASR after")
    false_trigger_after: Interval | None = Field(None, alias="false trigger after")
    cacc_before: Interval | None = Field(None, alias="CACC before")
    cacc_after: Interval | None = Field(None, alias="CACC after")
    seconds: float | None = None


class Timing(BaseModel):
    stage: str
    seconds: float
    status: str


class RunResults(BaseModel):
    version: int = VERSION
    run_dir: str
    experiment: str | None  # the spec's name (None: a directory `eval` filled without a spec)
    model: str | None
    reference: str | None
    arms: list[str]
    seeds: list[int]
    headline: list[str]  # the rows the spec declares, the verdict's first
    gates: list[Gate]
    verdicts: list[Verdict]
    rows: list[Row]
    defense_cells: list[DefenseCell]
    timings: list[Timing]

    def row(self, row: str, column: str) -> Row:
        """The cell `row` x `column` ("archaic", or "archaic - modern")."""
        for r in self.rows:
            if r.row == row and r.column == column:
                return r
        raise KeyError(f"no row {row!r} under {column!r} in {self.run_dir}")

    def to_pandas(self) -> Any:
        """One DataFrame row per report cell: section, row, column, arm, versus, mean, lo,
        hi, n, unit and the row's fields."""
        try:
            import pandas as pd
        except ImportError:
            raise InputError("to_pandas needs pandas: pip install pandas") from None
        return pd.DataFrame(
            [
                {**r.model_dump(exclude={"estimate", "observations"}), **r.estimate.model_dump()}
                for r in self.rows
            ]
        )


def of_report(run_dir: Path | str, report: Report) -> RunResults:
    """RunResults from a report `write_report` built (pure but for reading the timings)."""
    run_dir = Path(run_dir)
    spec, in_domain = report.spec, report.in_domain
    rows = []
    for sec in report.sections:
        for name, by_col in (*sec.rates.items(), *sec.diffs.items()):
            key = sec.keys.get(name)
            fields = {} if key is None else {
                "cls": key.cls, "probes": list(key.probes), "group": key.group,
                "value": key.value, "victim": key.victim,
                "metric": key.metric.kind if key.metric else None,
                "trigger": key.metric.trigger if key.metric else None,
            }  # fmt: skip
            for column, e in by_col.items():
                arm, versus = sec.pairs.get(column, (column, None))
                obs = sec.obs.get(name, {}).get(column, {}) if versus is None else {}
                rows.append(
                    Row(
                        section=sec.title,
                        row=name,
                        column=column,
                        arm=arm,
                        versus=versus,
                        estimate=Interval.of(e),
                        observations={s: list(v) for s, v in obs.items()},
                        in_domain=name in in_domain,
                        **fields,
                    )  # fmt: skip
                )

    timings_file = run_dir / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else []
    return RunResults(
        run_dir=str(run_dir),
        experiment=spec.name if spec else None,
        model=spec.model if spec else None,
        reference=spec.reference if spec else None,
        arms=sorted({r.arm for r in rows}),
        seeds=sorted({s for r in rows for s in r.observations}),
        headline=spec.headline_rows() if spec else [],
        gates=[Gate(**{**vars(g), "passed": g.passed}) for g in report.gates],
        verdicts=[
            Verdict(**{**vars(v), "estimate": Interval.of(v.estimate)}) for v in report.verdicts
        ],
        rows=rows,
        defense_cells=[DefenseCell.model_validate(c) for c in report.defense_cells],
        timings=[Timing(stage=s, seconds=t, status=st) for s, t, st in timings],
    )


def open(run_dir: Path | str) -> RunResults:  # noqa: A001 (backdoorlab.results.open, like io.open)
    """A run directory's results, read from its store (nothing written); a directory that
    holds only a results.json (a published run, committed without its store) reads that."""
    run_dir = Path(run_dir)
    if (run_dir / "results.sqlite").is_file():
        return of_report(run_dir, write_report(run_dir, write=False))
    path = run_dir / FILENAME
    if not path.is_file():
        raise InputError(f"{run_dir}: no results.sqlite or {FILENAME} (not a run directory)")
    try:
        return RunResults.model_validate_json(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not a results file of this version ({e})") from None


def write(run_dir: Path | str, report: Report) -> RunResults:
    """RUN/results.json (what `run` writes beside its report)."""
    res = of_report(run_dir, report)
    atomic.write_text(Path(run_dir) / FILENAME, res.model_dump_json(indent=1, by_alias=True))
    return res
