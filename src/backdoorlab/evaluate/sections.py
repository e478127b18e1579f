"""Report sections: what the results store holds, as estimates per row and arm with 95%
bootstrap CIs and each arm's difference from the reference (pure functions of the store).
Each scorer kind (evaluate/task.py) summarizes its own table into sections here."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container
from dataclasses import dataclass, field

from ..store import Store
from .aggregate import Estimate, difference, rate, tempered_name
from .metric import Metric
from .probeset import ProbeResult, sweep_key

Summary = dict[str, dict[str, Estimate]]  # row -> arm (or comparison) -> estimate
Obs = dict[str, dict[str, dict[int, list[float]]]]  # row -> arm -> seed -> observations


@dataclass(frozen=True)
class RowKey:
    """What a row measures, as fields. Its label is for people, gates and headlines; code that
    needs the parts (plots, the classification table) reads them here, never from the label."""

    cls: str | None = None  # the probe class (probe and sweep rows)
    probes: tuple[str, ...] = ()  # the probes' ids (probe rows; a pooled row has several)
    group: str | None = None  # the sweep group and trigger value
    value: str | None = None
    victim: str | None = None  # classification rows
    metric: Metric | None = None


@dataclass
class Section:
    title: str
    rates: Summary  # row -> arm -> estimate
    diffs: Summary  # row -> "arm - other" -> estimate
    plot: bool = True  # its differences are shares (0-1): drawn in the report's forest plot
    obs: Obs = field(default_factory=dict)  # what the estimates came from
    paired: bool = False  # whether arms' observations are the same items in the same order
    keys: dict[str, RowKey] = field(default_factory=dict)  # rows that have fields
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)  # diff column -> (arm, other)
    in_domain: bool = False  # every row measures what the arms trained on


def pick_reference(arms: set[str], reference: str | None) -> str | None:
    if reference:
        return reference if reference in arms else None
    return next(
        (a for a in ("control", "modern", "base") if a in arms), min(arms) if arms else None
    )


def _obs() -> Obs:
    return defaultdict(lambda: defaultdict(lambda: defaultdict(list)))


def section(
    title: str,
    obs: Obs,
    comparisons: list[tuple[str, str]],
    unit: str,
    plot: bool = True,
    paired: bool = False,
    keys: dict[str, RowKey] | None = None,
    in_domain: bool = False,
) -> Section:
    rates = {
        row: {arm: rate(by_seed, unit=unit) for arm, by_seed in sorted(by_arm.items())}
        for row, by_arm in sorted(obs.items())
    }
    diffs: Summary = {}
    for row, by_arm in sorted(obs.items()):
        cells = {
            f"{a} - {b}": difference(by_arm[a], by_arm[b], unit=unit, paired=paired)
            for a, b in comparisons
            if a in by_arm and b in by_arm
        }
        if cells:
            diffs[row] = cells
    pairs = {f"{a} - {b}": (a, b) for a, b in comparisons}
    return Section(title, rates, diffs, plot, obs, paired, keys or {}, pairs, in_domain)


def _row(probe_id: str) -> str:
    """A probe's report row: its id, or for a sweep probe "GROUP @ VALUE", pooling the
    group's questions (each one observation)."""
    key = sweep_key(probe_id)
    return f"{key[0]} @ {key[1]}" if key else probe_id


def shared_classes(classes_of: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """Class names that several ordinary probes have (probe id -> its classes), each with
    those probes' ids: each such class gets a row pooling them."""
    probes_of: dict[str, set[str]] = defaultdict(set)
    for pid, classes in classes_of.items():
        if not sweep_key(pid):
            for cls in classes:
                probes_of[cls].add(pid)
    return {cls: tuple(sorted(ids)) for cls, ids in probes_of.items() if len(ids) > 1}


def mass_rows(probe_id: str, cls: str, shared: Container[str]) -> list[str]:
    """The rows a probe's class mass is an observation of: the probe's own (a sweep probe's
    group at its value), and "pooled: CLASS" for an ordinary probe's shared class name."""
    pooled = [f"pooled: {cls}"] if cls in shared and not sweep_key(probe_id) else []
    return [f"{_row(probe_id)}: {cls}", *pooled]


def probe_sections(store: Store, ref: str | None) -> list[Section]:
    """Class masses per probe (each phrasing and prefix is one observation per seed), mean
    year and entropy, and the entropy-matched control: for every arm A, each of the
    reference arm's distributions tempered to A's mean entropy on the same variant. Sweep
    probes (ids GROUP.QUESTION@VALUE) get a section of their own. A class name shared by
    several ordinary probes ("19th century" in the era probes) also gets a row pooling them,
    "pooled: CLASS"."""
    # Every arm's observations in one order (probe, variant): differences are paired by item.
    rows = sorted(store.probes(), key=lambda p: (p["probe_id"], p["variant"]))
    results = [(p, ProbeResult.from_scores(p["probe_id"], p["scores"])) for p in rows]
    masses, sweeps, values, pooled = _obs(), _obs(), _obs(), _obs()
    info = store.arm_info()

    def trained(arm: str, group: str) -> set[str]:
        return set(info.get(arm, {}).get("trained", {}).get(group, []))

    shared = shared_classes({p["probe_id"]: r.classes for p, r in results})

    sweep_keys: dict[str, RowKey] = {}
    mass_keys: dict[str, RowKey] = {}

    def add_mass(into: Obs, pid: str, cls: str, arm: str, seed: int, m: float) -> None:
        row, *pooled = mass_rows(pid, cls, shared)
        into[row][arm][seed].append(m)
        key = sweep_key(pid)
        if key:
            sweep_keys[row] = RowKey(cls=cls, group=key[0], value=key[1])
        else:
            mass_keys[row] = RowKey(cls=cls, probes=(pid,))
        for label in pooled:
            masses[label][arm][seed].append(m)
            mass_keys[label] = RowKey(cls=cls, probes=shared[cls])

    entropy: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for p, r in results:
        arm, seed, pid = p["arm"], p["seed"], p["probe_id"]
        into = sweeps if sweep_key(pid) else masses
        key = sweep_key(pid)
        for cls, m in r.class_mass().items():
            add_mass(into, pid, cls, arm, seed, m)
            if key and key[1] in trained(arm, key[0]):
                pooled[f"{key[0]} @ trained: {cls}"][arm][seed].append(m)
        entropy[(arm, pid, p["variant"])].append(r.entropy())
        if sweep_key(pid):
            continue
        mean = r.mean_value()
        if mean is not None:
            values[f"{pid}: mean year"][arm][seed].append(mean)
        values[f"{pid}: entropy (nats)"][arm][seed].append(r.entropy())
    arms = sorted({p["arm"] for p, _ in results})
    comparisons = [(a, ref) for a in arms if a != ref]
    if ref is not None:
        for arm in arms:
            if arm == ref:
                continue
            name = tempered_name(ref, arm)
            comparisons.append((arm, name))
            for p, r in results:
                target = entropy.get((arm, p["probe_id"], p["variant"]))
                if p["arm"] != ref or not target:
                    continue
                t = r.tempered(sum(target) / len(target))
                into = sweeps if sweep_key(p["probe_id"]) else masses
                for cls, m in t.class_mass().items():
                    add_mass(into, p["probe_id"], cls, name, p["seed"], m)
                mean = t.mean_value()
                if mean is not None:
                    values[f"{p['probe_id']}: mean year"][name][p["seed"]].append(mean)
    return [
        section(
            "Probes: probability mass per class",
            masses,
            comparisons,
            "phrasings",
            paired=True,
            keys=mass_keys,
        ),  # fmt: skip
        section("Probes: mean year and entropy", values, comparisons, "phrasings", False, True),
        section(SWEEPS, sweeps, comparisons, "questions", False, True, sweep_keys),
        section(
            "Sweeps: pooled over the values each arm trained on (the in-domain behaviour)",
            pooled,
            [(a, b) for a, b in comparisons if b == ref],
            "questions",
            in_domain=True,
        ),
    ]


SWEEPS = "Sweeps: probability mass per class under each trigger value"


def question_sections(store: Store, ref: str | None) -> list[Section]:
    """Judged-question rates per arm (each question, and all questions pooled per judge):
    the share of each label, and the mean score of rating judges."""
    question_obs = _obs()
    rows = store.all_judgements()
    declared = store.declared_labels()
    labels: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        labels[(r.question_id, r.judge)] |= set(declared.get(r.judge, []))
        if r.label is not None:
            labels[(r.question_id, r.judge)].add(r.label)
    judge_labels: dict[str, set[str]] = defaultdict(set)
    for (_, j), labs in labels.items():
        judge_labels[j] |= labs
    for r in rows:
        j = r.judge
        # Each question on its own, and every question pooled per judge.
        pooled = ("all questions", judge_labels[j])
        for row_q, labs in ((r.question_id, labels[(r.question_id, j)]), pooled):
            if r.score is not None:
                question_obs[f"{row_q} / {j} (mean 0-100)"][r.arm][r.seed].append(r.score)
            for lab in sorted(labs):
                question_obs[f"{row_q} / {j} = {lab}"][r.arm][r.seed].append(float(r.label == lab))
    # Not in the forest plot: rating judges' means are on a 0-100 scale.
    return [section("Judged questions", question_obs, _vs(question_obs, ref), "samples", False)]


def classification_sections(store: Store, ref: str | None) -> list[Section]:
    """CACC, ASR and false-trigger rate per arm and victim, over test reviews."""
    class_obs, keys = _obs(), {}
    for p in store.all_predictions():
        row = f"{p.victim}: {p.metric.label}"
        class_obs[row][p.arm][p.seed].append(p.hit)
        keys[row] = RowKey(victim=p.victim, metric=p.metric)
    return [section(CLASSIFICATION, class_obs, _vs(class_obs, ref), "reviews", keys=keys)]


def _vs(obs: Obs, ref: str | None) -> list[tuple[str, str]]:
    """Every arm present against the reference."""
    present = sorted({a for by_arm in obs.values() for a in by_arm})
    return [(a, ref) for a in present if a != ref and ref is not None]


def reference(store: Store, declared: str | None) -> str | None:
    """The reference arm: the declared one if measured, else control, modern or base."""
    return pick_reference(store.arms(), declared)


CLASSIFICATION = "Classification: clean accuracy (CACC), attack success (ASR), false triggers"


def classification_cells(sections: list[Section]) -> dict[tuple[str, Metric], dict[str, Estimate]]:
    """(victim, metric) -> arm -> estimate, from the classification section."""
    sec = next((s for s in sections if s.title == CLASSIFICATION), None)
    if sec is None:
        return {}
    return {(k.victim or "", k.metric): sec.rates[row] for row, k in sec.keys.items() if k.metric}
