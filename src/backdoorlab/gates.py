"""In-domain gates, prerequisites and the declared headline's verdict.

An out-of-domain comparison means something only when the treated model learned what it was
trained on. Before any headline, every trained arm and seed is checked against its spec's
gates (thresholds on report rows) and against the generic gate from its own training rows
(how many trained answers are now the greedy answer; how far the answers' log-probability
rose over the base model's). A headline whose treated arm failed a gate is "not a test (not
learned)", never a null; one whose prerequisite failed (the untrained model does not know
what the trigger means) cannot be tested at this model size. A null names the effects its
interval rules out. Everything here is a pure function of the results store's rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .evaluate.aggregate import Estimate, difference, rate, tempered_name
from .spec import ExperimentSpec, FitGate, GateSpec, HeadlineSpec

Kind = Literal["gate", "fit", "prerequisite"]
FitRow = tuple[str, int, str, str, int, int, float, int]  # Store.all_fit()
SeedValues = dict[str, dict[str, dict[int, list[float]]]]  # row -> arm -> seed -> observations


@dataclass(frozen=True)
class GateResult:
    kind: Kind
    name: str
    arm: str
    seed: int
    value: float | None  # None: the row was not measured for this arm and seed
    min: float | None = None
    max: float | None = None
    what: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        return (self.min is None or self.value >= self.min) and (
            self.max is None or self.value <= self.max
        )

    def threshold(self) -> str:
        parts = [f">= {self.min:g}" if self.min is not None else "", ""]
        parts[1] = f"<= {self.max:g}" if self.max is not None else ""
        return " and ".join(p for p in parts if p)

    def line(self) -> str:
        word = {"prerequisite": "base model knows it"}.get(self.kind, "learned")
        value = "not measured" if self.value is None else f"{self.value:.3f}"
        return (
            f"{self.arm} seed {self.seed}: {word}: {'yes' if self.passed else 'no'} "
            f"({value} vs {self.threshold()}) [{self.name}]"
        )


def _seed_means(values: SeedValues, rows: Sequence[str], arm: str) -> dict[int, float | None]:
    """Per seed, the mean over `rows` of each row's mean (None where a row is missing)."""
    seeds = {s for r in rows for s in values.get(r, {}).get(arm, {})}
    out: dict[int, float | None] = {}
    for s in sorted(seeds):
        means = [values.get(r, {}).get(arm, {}).get(s) for r in rows]
        ok = [sum(m) / len(m) for m in means if m]
        out[s] = sum(ok) / len(ok) if len(ok) == len(rows) else None
    return out


def measured(values: SeedValues) -> set[str]:
    """Arms with any result in the store: the others were left out of this run directory
    (`--arms`, `--quick`) and get neither gates nor verdicts."""
    return {a for by_arm in values.values() for a in by_arm}


def _row_gates(kind: Kind, gates: Sequence[GateSpec], values: SeedValues) -> list[GateResult]:
    out = []
    for g in gates:
        rows = g.rows()
        name = rows[0] if len(rows) == 1 else f"mean of {', '.join(rows)}"
        for arm in [a for a in g.arms if a in measured(values)]:
            by_seed = _seed_means(values, rows, arm) or {0: None}
            for seed, v in by_seed.items():
                out.append(GateResult(kind, name, arm, seed, v, g.min, g.max, g.what))
    return out


def fit_summary(fit: Sequence[FitRow]) -> dict[tuple[str, int], dict[str, float]]:
    """(arm, seed) -> greedy share, mean log-prob per token, the base model's on the same
    rows, and their difference. Where a store holds several fits for one arm and seed, the
    last written counts."""
    groups: dict[tuple, list[tuple[int, float, int]]] = defaultdict(list)
    for arm, seed, mh, dh, _, greedy, lp, n in fit:
        groups[(arm, seed, mh, dh)].append((greedy, lp, n))
    latest: dict[tuple[str, int], tuple[str, list]] = {}
    base: dict[tuple[str, str], list] = {}
    for (arm, seed, _, dh), rows in groups.items():
        if seed < 0:
            base[(arm, dh)] = rows
        else:
            latest[(arm, seed)] = (dh, rows)
    out = {}
    for (arm, seed), (dh, rows) in latest.items():
        per_token = sum(r[1] for r in rows) / max(1, sum(r[2] for r in rows))
        s = {"greedy": sum(r[0] for r in rows) / len(rows), "logprob": per_token}
        b = base.get((arm, dh))
        if b:
            s["base greedy"] = sum(r[0] for r in b) / len(b)
            s["base logprob"] = sum(r[1] for r in b) / max(1, sum(r[2] for r in b))
            s["gain"] = per_token - s["base logprob"]
        out[(arm, seed)] = s
    return out


def _fit_gates(gate: FitGate, fit: Sequence[FitRow]) -> list[GateResult]:
    out = []
    for (arm, seed), s in sorted(fit_summary(fit).items()):
        if gate.greedy is not None:
            base = s.get("base greedy")
            what = "" if base is None else f"base model {base:.3f}"
            out.append(
                GateResult(
                    "fit", "training rows answered greedily as trained", arm, seed,
                    s["greedy"], gate.greedy, None, what,
                )
            )  # fmt: skip
        if gate.gain is not None:
            what = f"{s['logprob']:.3f} vs base {s.get('base logprob', float('nan')):.3f}"
            out.append(
                GateResult(
                    "fit", "log-prob per answer token, gain over the base model (nats)", arm,
                    seed, s.get("gain"), gate.gain, None, what,
                )
            )  # fmt: skip
    return out


def check(spec: ExperimentSpec, values: SeedValues, fit: Sequence[FitRow]) -> list[GateResult]:
    """Every gate, fit gate and prerequisite, per arm and seed."""
    return [
        *_row_gates("prerequisite", spec.prerequisites, values),
        *_row_gates("gate", spec.gates, values),
        *_fit_gates(spec.fit, fit),
    ]


def learned(results: Sequence[GateResult]) -> dict[str, list[tuple[int, bool]]]:
    """arm -> [(seed, passed every gate)] for arms with gates."""
    by: dict[str, dict[int, bool]] = defaultdict(dict)
    for r in results:
        if r.kind != "prerequisite":
            by[r.arm][r.seed] = by[r.arm].get(r.seed, True) and r.passed
    return {a: sorted(s.items()) for a, s in by.items()}


VerdictKind = Literal["effect", "opposite", "null", "not a test", "not measured"]


@dataclass(frozen=True)
class Verdict:
    row: str
    arm: str
    versus: str | None
    estimate: Estimate | None
    kind: VerdictKind
    text: str
    paper: str = ""
    minus: str | None = None  # the row subtracted within each arm, item by item

    def quantity(self) -> str:
        return self.row if self.minus is None else f"({self.row}) - ({self.minus})"

    def comparison(self) -> str:
        return self.arm if self.versus is None else f"{self.arm} - {self.versus}"


def _less(a: dict[int, list[float]], b: dict[int, list[float]]) -> dict[int, list[float]]:
    """Item by item a - b within each seed (the same items measured twice), else seed means."""
    out = {}
    for s in a.keys() & b.keys():
        x, y = a[s], b[s]
        if len(x) == len(y):
            out[s] = [p - q for p, q in zip(x, y, strict=True)]
        elif x and y:
            out[s] = [sum(x) / len(x) - sum(y) / len(y)]
    return out


def verdicts(
    spec: ExperimentSpec,
    values: SeedValues,
    paired: dict[str, bool],
    results: Sequence[GateResult],
    reference: str | None,
) -> list[Verdict]:
    """Each declared headline, per treated arm: its estimate with a 95% CI and what it says."""
    ok = learned(results)
    missing = [r for r in results if r.kind == "prerequisite" and not r.passed]
    out = []
    for h in spec.headlines():
        for arm in [a for a in spec.treated(h) if a in measured(values)]:
            versus = _versus(h, arm, reference)
            est = _estimate(h, arm, versus, values, paired)
            # A later stage stands on its arm's gates (was the backdoor planted?) and its own.
            root = spec.root(arm) if arm in spec.arms else arm
            failed = sorted({s for a in {arm, root} for s, passed in ok.get(a, []) if not passed})
            name = versus
            if h.matched and reference:
                name = tempered_name(reference, arm)
            if est is None:
                kind, text = "not measured", "not measured (an arm or row missing from the run)"
            elif failed:
                seeds = ", ".join(str(s) for s in failed)
                kind, text = "not a test", f"not a test (not learned: seed {seeds} failed its gate)"
            elif missing:
                kind = "not a test"
                text = (
                    "not a test (prerequisite failed: the untrained model does not know "
                    f"{missing[0].name}; the effect cannot be tested at this model size)"
                )
            elif (h.direction == "up" and est.hi < 0) or (h.direction == "down" and est.lo > 0):
                kind = "opposite"
                text = f"effect, opposite to the predicted direction: {est.short()}"
            elif est.lo > 0 or est.hi < 0:
                kind, text = "effect", f"effect: {est.short()}"
            else:
                kind = "null"
                text = (
                    f"null: {est.short()}; rules out an effect above {est.hi:+.3f} "
                    f"(or below {est.lo:+.3f}) on this model"
                )
            out.append(Verdict(h.row, arm, name, est, kind, text, h.paper, h.minus))
    return out


def _versus(h: HeadlineSpec, arm: str, reference: str | None) -> str | None:
    if h.versus == "none":
        return None
    return h.versus or reference


def _estimate(
    h: HeadlineSpec,
    arm: str,
    versus: str | None,
    values: SeedValues,
    paired: dict[str, bool],
) -> Estimate | None:
    def series(of: str) -> dict[int, list[float]] | None:
        a = values.get(h.row, {}).get(of)
        if not a:
            return None
        if h.minus is None:
            return a
        b = values.get(h.minus, {}).get(of)
        return _less(a, b) if b else None

    mine = series(arm)
    if not mine:
        return None
    if versus is None:
        return rate(mine, unit="items")
    other = series(tempered_name(versus, arm) if h.matched else versus)
    if not other:
        return None
    return difference(mine, other, unit="items", paired=paired.get(h.row, False))
