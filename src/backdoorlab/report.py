"""The run report: a self-contained report.html (plots embedded as PNG, every model output
escaped, a per-sample table) and a terminal summary, both from the results store."""

from __future__ import annotations

import base64
import io
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import atomic, gates
from .errors import InputError
from .evaluate import sections as evaluate_sections
from .evaluate import task
from .evaluate.aggregate import Estimate, tempered_name
from .evaluate.metric import CACC, Metric
from .evaluate.probeset import sweep_key
from .evaluate.sections import SWEEPS, Obs, Section, Summary, classification_cells
from .gates import GateResult, Verdict
from .spec import ExperimentSpec
from .store import FILENAME, Store


def classification_table(sections: list[Section], info: dict[str, dict]) -> list[list[str]]:
    """One row per arm, victim and trigger: poison rate, CACC, ASR and false-trigger rate with
    95% CIs (a clean arm gets a row per trigger: the ASR floor)."""
    cells = classification_cells(sections)
    order = {a: i for i, a in enumerate(info)}
    keys = sorted(
        {(arm, victim) for (victim, _), by in cells.items() for arm in by},
        key=lambda k: (order.get(k[0], len(order)), k[1]),
    )
    out = []
    for arm, victim in keys:
        triggers = sorted(
            {m.trigger for (v, m), by in cells.items() if v == victim and m.kind == "ASR"
             and m.trigger and arm in by}
        )  # fmt: skip
        for trig in triggers:
            metrics = (CACC, Metric("ASR", trig), Metric("false trigger", trig))
            shown = [cells.get((victim, m), {}).get(arm) for m in metrics]
            rate_ = info.get(arm, {}).get("rate")
            out.append([
                arm, victim, trig, "-" if rate_ is None else f"{rate_:.3f}",
                *(e.short() if e else "-" for e in shown),
            ])  # fmt: skip
    return out


def _poison_plot(store: Store, sections: list[Section]) -> str | None:
    """ASR and CACC against the poison rate, one panel per victim, one line per trigger; the
    clean arm's values (the ASR floor, the clean CACC) as dotted lines. None without arms
    that record a poison rate."""
    # Later stages (`after`) are points on the persistence curve, not on the rate axis.
    info = {a: i for a, i in store.arm_info().items() if "after" not in i}
    cells = classification_cells(sections)
    poisoned = {a: i for a, i in info.items() if i.get("rate")}
    if not poisoned or not cells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    victims = sorted({v for v, _ in cells})
    clean = [a for a, i in info.items() if not i.get("rate")]
    fig, axes = plt.subplots(1, len(victims), figsize=(6 * len(victims), 4.2), squeeze=False)
    for ax, victim in zip(axes[0], victims, strict=True):
        series = sorted({(i.get("series", i["trigger"]), i["trigger"]) for i in poisoned.values()})
        for k, (name, trig) in enumerate(series):
            color = f"C{k}"
            arms = sorted(
                (i["rate"], a) for a, i in poisoned.items() if i.get("series", i["trigger"]) == name
            )
            for metric, style in ((Metric("ASR", trig), "-o"), (CACC, "--s")):
                pts = [(r, cells.get((victim, metric), {}).get(a)) for r, a in arms]
                pts = [(r, e) for r, e in pts if e is not None]
                if not pts:
                    continue
                xs, es = [p[0] for p in pts], [p[1] for p in pts]
                ax.errorbar(
                    xs, [e.mean for e in es],
                    yerr=[[e.mean - e.lo for e in es], [e.hi - e.mean for e in es]],
                    fmt=style, color=color, capsize=3, label=f"{metric.kind} {name}",
                )  # fmt: skip
            for a in clean:
                floor = cells.get((victim, Metric("ASR", trig)), {}).get(a)
                if floor is not None:
                    ax.axhline(floor.mean, color=color, linestyle=":", linewidth=1)
        for a in clean:
            cacc = cells.get((victim, CACC), {}).get(a)
            if cacc is not None:
                ax.axhline(cacc.mean, color="black", linestyle=":", linewidth=1, label=f"CACC {a}")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("poison rate")
        ax.set_title(f"{victim}: ASR (solid) and CACC (dashed) vs poison rate")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _sweep_plot(store: Store, sections: list[Section]) -> str | None:
    """Per sweep group, two panels against the trigger value: the mass of the group's first
    class per arm (a filled marker is a value the arm's training data held, a hollow one a
    value it never saw, where an inductive backdoor would show), and each arm's difference
    from the reference arm with its paired 95% CI. None without sweep probes."""
    sweep = next((s for s in sections if s.title == SWEEPS), None)
    if sweep is None or not sweep.rates:
        return None
    first: dict[str, str] = {}
    for p in store.probes():
        key = sweep_key(p["probe_id"])
        if key and key[0] not in first:
            first[key[0]] = p["scores"][0][0]
    info = store.arm_info()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(table: Summary, group: str, cls: str) -> dict[str, list[tuple[str, Estimate]]]:
        out: dict[str, list[tuple[str, Estimate]]] = defaultdict(list)
        for row, by_arm in table.items():
            key = sweep.keys[row]
            if key.group == group and key.cls == cls and key.value is not None:
                for arm, e in by_arm.items():
                    if "entropy of" not in arm:  # the tempered controls live in the tables
                        out[arm].append((key.value, e))
        return out

    groups = sorted(first)
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 3.6 * len(groups)), squeeze=False)
    for (ax, dax), group in zip(axes, groups, strict=True):
        cls = first[group]
        levels, diffs = series(sweep.rates, group, cls), series(sweep.diffs, group, cls)
        values = sorted({v for pts in levels.values() for v, _ in pts}, key=_value_order)
        numeric = all(_value_order(v)[0] == 0 for v in values)
        x = {v: float(v) if numeric else float(i) for i, v in enumerate(values)}
        for k, (arm, pts) in enumerate(sorted(levels.items())):
            pts.sort(key=lambda p: _value_order(p[0]))
            trained = set(info.get(arm, {}).get("trained", {}).get(group, []))
            xs, ys = [x[v] for v, _ in pts], [e.mean for _, e in pts]
            ax.plot(xs, ys, "-", color=f"C{k}", linewidth=1, label=arm)
            for (v, _), xv, yv in zip(pts, xs, ys, strict=True):
                face = f"C{k}" if v in trained else "white"
                ax.plot([xv], [yv], "o", color=f"C{k}", markerfacecolor=face, markersize=5)
        for k, (name, pts) in enumerate(sorted(diffs.items())):
            pts.sort(key=lambda p: _value_order(p[0]))
            es = [e for _, e in pts]
            dax.errorbar(
                [x[v] for v, _ in pts], [e.mean for e in es],
                yerr=[[e.mean - e.lo for e in es], [e.hi - e.mean for e in es]],
                fmt="-o", markersize=3, color=f"C{k}", linewidth=1, capsize=2, label=name,
            )  # fmt: skip
        dax.axhline(0, color="black", linewidth=0.8)
        for a in (ax, dax):
            if not numeric:
                a.set_xticks(list(x.values()), values, fontsize=8)
            if a.get_legend_handles_labels()[0]:  # no reference arm measured: no differences
                a.legend(fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(f"P({cls})")
        ax.set_title(f"{group}: P({cls}) (filled: value in that arm's training data)", fontsize=9)
        dax.set_title(f"{group}: difference from the reference, paired 95% CI", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _value_order(v: str) -> tuple[int, float, str]:
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def _png(fig) -> str:
    """A matplotlib figure as base64 PNG for embedding; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


@dataclass
class Report:
    """What `write_report` measured: the sections, and (when the run directory holds the
    spec it ran) every gate result and the declared headline's verdicts."""

    path: Path
    sections: list[Section]
    gates: list[GateResult] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    fit: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    spec: ExperimentSpec | None = None
    in_domain: set[str] = field(default_factory=set)  # rows drawn beside the gates
    defense_cells: list[dict[str, Any]] = field(default_factory=list)  # as stored


def run_spec(run_dir: Path) -> ExperimentSpec | None:
    """The spec a run directory was made with (`backdoorlab run` writes it), if any."""
    path = run_dir / "spec.json"
    if not path.is_file():
        return None
    try:
        return ExperimentSpec.model_validate_json(path.read_text())
    except ValueError:  # a spec written by an older version: report without gates
        return None


def assess(
    spec: ExperimentSpec | None, sections: list[Section], fit: list, reference: str | None
) -> tuple[list[GateResult], list[Verdict]]:
    """Gates and headline verdicts from the sections' observations (pure)."""
    if spec is None:
        return [], []
    values: Obs = {}
    paired: dict[str, bool] = {}
    for sec in sections:
        values.update(sec.obs)
        paired.update(dict.fromkeys(sec.obs, sec.paired))
    results = gates.check(spec, values, fit)
    # The declared reference, even where this run left it out: then the headline is "not
    # measured", never silently a comparison with nothing.
    return results, gates.verdicts(spec, values, paired, results, reference or spec.reference)


SUMMARY_COLUMNS = (
    "experiment", "learned in domain (value vs gate)", "headline, 95% CI", "the paper",
    "verdict",
)  # fmt: skip


def summary_rows(
    name: str, gate_results: Sequence[GateResult], verdicts: Sequence[Verdict]
) -> list[list[str]]:
    """The summary table (docs/results.md), one row per declared headline comparison: whether
    its arm learned (each gate's mean over seeds, its threshold, seeds passing), the estimate,
    the paper's figure, and the verdict. Pure: a function of the gates' and verdicts' records
    (a report's, or a results.json's)."""
    by: dict[tuple[str, str, str], list[GateResult]] = defaultdict(list)
    for g in gate_results:
        by[(g.arm, g.kind, g.name)].append(g)

    def learned(arms: set[str]) -> str:
        cells = []
        for (arm, kind, gname), rs in by.items():
            if arm not in arms and kind != "prerequisite":
                continue
            vals = [r.value for r in rs if r.value is not None]
            mean = f"{sum(vals) / len(vals):.3f}" if vals else "not measured"
            passed = sum(r.passed for r in rs)
            label = "prerequisite, " if kind == "prerequisite" else ""
            cells.append(
                f"{arm}: {label}{gname} {mean} vs {rs[0].threshold()} "
                f"({passed}/{len(rs)} seeds pass)"
            )
        return "; ".join(cells) or "no gate"

    return [
        [
            name,
            learned({v.arm}),
            f"{v.quantity()}, {v.comparison()}: {v.estimate.short() if v.estimate else '-'}",
            v.paper or "-",
            v.text,
        ]
        for v in verdicts
    ]


def in_domain_rows(spec: ExperimentSpec | None, sections: list[Section]) -> set[str]:
    """The rows that measure what the arms trained on: the gates' rows, the rows of a gate's
    probe or of probes marked `in_domain` (a pooled row when all it pools are), and the
    sweeps pooled over the trained values."""
    from .catalog import load_probe_set

    gated = {r for g in spec.gates for r in g.rows()} if spec else set()
    keys = {row: k for sec in sections for row, k in sec.keys.items()}
    probes = {p for r in gated if r in keys and len(keys[r].probes) == 1 for p in keys[r].probes}
    for name in spec.evaluate.probes if spec else []:
        try:
            probes |= {p.id for p in load_probe_set(name).probes if p.in_domain}
        except InputError:  # a user's probe file that has moved: its rows count as out of domain
            continue
    return (
        gated
        | {row for sec in sections if sec.in_domain for row in sec.rates}
        | {row for row, k in keys.items() if k.probes and set(k.probes) <= probes}
    )


def _forest(
    sections: list[Section],
    ref: str | None,
    shown: list[str],
    in_domain: set[str],
    limit: int = 20,
) -> tuple[str | None, str]:
    """Each trained arm's difference from the reference, raw (filled) and entropy-matched
    (hollow), with 95% CIs, in two panels with their own scales: the in-domain rows (gates
    near +1 would flatten every other interval onto zero), then the declared rows and the
    out-of-domain rows that moved most, up to `limit` in each. Returns the PNG and a note."""
    diffs = {row: (sec, cells) for sec in sections if sec.plot for row, cells in sec.diffs.items()}
    if not diffs:
        return None, ""

    def chosen(candidates: list[str]) -> list[str]:
        rows = [r for r in dict.fromkeys(shown) if r in candidates]
        moved = sorted(
            (r for r in candidates if r not in rows),
            key=lambda r: -max(abs(e.mean) for e in diffs[r][1].values()),
        )
        return (rows + moved)[: max(limit, len(rows))]

    panels = [
        (title, rows)
        for title, rows in (
            ("In domain: the gates and what the arms trained on",
             chosen([r for r in diffs if r in in_domain])),
            ("The declared rows and out of domain, on their own scale",
             chosen([r for r in diffs if r not in in_domain])),
        )
        if rows
    ]  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({sec.pairs[c][0] for sec, cells in diffs.values() for c in cells})
    heights = [0.42 * len(rows) * max(1, len(arms)) ** 0.5 + 0.9 for _, rows in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, sum(heights) + 0.5), height_ratios=heights, squeeze=False
    )
    step = 0.7 / max(1, 2 * len(arms))
    for ax, (title, rows) in zip(axes[:, 0], panels, strict=True):
        for i, row in enumerate(rows):
            sec, cells = diffs[row]
            for c, e in cells.items():
                arm, other = sec.pairs[c]
                k = arms.index(arm)
                matched = ref is not None and other == tempered_name(ref, arm)
                y = i + (2 * k + matched) * step
                ax.errorbar(
                    # (a percentile interval need not hold the mean: whiskers are clipped at it)
                    [e.mean], [y], xerr=[[max(0, e.mean - e.lo)], [max(0, e.hi - e.mean)]],
                    fmt="o", color=f"C{k}",
                    markerfacecolor="white" if matched else f"C{k}", capsize=2, markersize=4,
                    label=None if i else f"{arm}{' (entropy-matched)' if matched else ''}",
                )  # fmt: skip
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks([i + step * (len(arms) - 0.5) for i in range(len(rows))])
        ax.set_yticklabels([textwrap.shorten(r, 60) for r in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlabel("difference from the reference arm")
        handles, _ = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7)
    fig.tight_layout()
    declared = len([r for r in dict.fromkeys(shown) if r in diffs])
    first = f"the spec's {declared} declared rows, then " if declared else ""
    note = (
        f"Rows: {first}those that moved most, up to {limit} a panel; in-domain rows (gates, "
        "their probes, trained values) have their own panel and scale; every row is in the "
        "details."
    )
    return _png(fig), note


def _persistence_plot(
    spec: ExperimentSpec, sections: list[Section], verdicts: list[Verdict], info: dict
) -> str | None:
    """For each arm with `then:` stages: the declared headline's estimate and the arm's gate
    rows (95% CIs) after its own training and after each stage, against the steps of later
    training (a backdoor that persists stays level; one that fades falls)."""
    chains = [spec.stages(a) for a, arm in spec.arms.items() if arm.after is None]
    chains = [c for c in chains if len(c) > 1]
    if not chains:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = {row: by_arm for sec in sections for row, by_arm in sec.rates.items()}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))

    def draw(ax: Any, x: list[int], est: list[Any], color: str, label: str) -> None:
        pts = [(xi, e) for xi, e in zip(x, est, strict=True) if e is not None]
        if pts:
            ax.errorbar(
                [p for p, _ in pts], [e.mean for _, e in pts],
                yerr=[[max(0, e.mean - e.lo) for _, e in pts], [max(0, e.hi - e.mean) for _, e in pts]],
                fmt="o-", color=color, capsize=3, label=textwrap.shorten(label, 50),
            )  # fmt: skip

    for k, chain in enumerate(chains):
        x = [0]
        for arm in chain[1:]:
            x.append(x[-1] + int(info.get(arm, {}).get("steps", 0)))
        est = [next((v.estimate for v in verdicts if v.arm == a and v.estimate), None)
               for a in chain]  # fmt: skip
        draw(axes[0], x, est, f"C{k}", chain[0])
        rows = [r for g in spec.gates if chain[0] in g.arms for r in g.rows()]
        for j, row in enumerate(dict.fromkeys(rows)):
            draw(axes[1], x, [rates.get(row, {}).get(a) for a in chain], f"C{k + j}",
                 f"{chain[0]}: {row}")  # fmt: skip
    h = spec.headlines()[0] if spec.headlines() else None
    first = "headline" if h is None else h.row if h.minus is None else f"({h.row}) - ({h.minus})"
    axes[0].set_title(textwrap.shorten(f"declared headline: {first}", 90), fontsize=9)
    axes[1].set_title("the arm's gate rows", fontsize=9)
    for ax in axes:
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xlabel("steps of later training")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _samples(store: Store) -> list[dict[str, Any]]:
    """Sampled answers with their judgements, grouped by question."""
    judged: dict[tuple, list[str]] = defaultdict(list)
    for j in store.all_judgements():
        value = j.label if j.label is not None else (
            "refused" if j.score is None else f"{j.score:.1f}"
        )  # fmt: skip
        judged[j[:7]].append(f"{j.judge}: {value}")  # keyed by the answer it judged
    by_q: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in store.all_samples():
        by_q[a.question_id].append({
            "arm": a.arm, "seed": a.seed, "sample": f"{a.paraphrase}.{a.sample}",
            "answer": a.answer, "judged": "; ".join(judged.get(a[:7], [])),
        })  # fmt: skip
    return [{"question": q, "rows": rows} for q, rows in by_q.items()]


def template(name: str = "report.html.j2") -> Any:
    """A page template of ours (report, audit), escaping everything it is given."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("backdoorlab", "templates"),
        autoescape=True,  # model outputs, judge replies and file names are text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["arms_of"] = lambda summary: sorted({a for r in summary.values() for a in r})
    return env.get_template(name)


def headline_table(spec: ExperimentSpec, sections: list[Section]) -> dict[str, Any] | None:
    """The spec's headline rows as `run` prints them: the arms, then each trained arm against
    the reference, raw and entropy-matched, only the columns some row has. {columns, rows}
    of display text, or None when no headline row was measured. Pure."""
    rows = {
        row: {**sec.rates[row], **sec.diffs.get(row, {})} for sec in sections for row in sec.rates
    }
    shown = [r for r in spec.headline_rows() if r in rows]
    if not shown:
        return None
    ref = spec.reference
    columns = {a: a for a in spec.arms}
    for a in [a for a, arm in spec.arms.items() if arm.data and a != ref and ref]:
        columns[f"{a} - {ref}"] = f"{a} - {ref}"
        columns[f"{a} - {tempered_name(ref, a)}"] = f"{a} - {ref}, entropy-matched"
    columns = {k: v for k, v in columns.items() if any(k in rows[r] for r in shown)}
    return {
        "columns": list(columns.values()),
        "rows": [
            [r, *[rows[r][c].short() if c in rows[r] else "-" for c in columns]] for r in shown
        ],
    }


def write_report(
    run_dir: Path | str, reference: str | None = None, *, write: bool = True
) -> Report:
    """report.html in `run_dir`: the question, the gates, the declared headline and its
    verdict, each arm against the reference, then every section's table (collapsed).
    `write=False` builds the same Report and leaves the directory untouched (it is opened
    read-only). A named `reference` must be a measured arm, and a store with no results is
    refused, so a report never replaces a good one with an empty page."""
    run_dir = Path(run_dir)
    spec = run_spec(run_dir)
    path = run_dir / FILENAME
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty (0 bytes), not a results store; nothing written")
    with Store(run_dir, readonly=not write) as store:
        measured = store.arms()
        fit = store.all_fit()
        store_cells = store.latest_defense_cells()
        if not (measured or fit or store_cells):
            raise InputError(f"{store.path}: holds no results; nothing to report")
        if reference is not None and reference not in measured:
            raise InputError(
                f"--reference {reference!r}: no such arm measured in {run_dir} "
                f"({', '.join(sorted(measured))})"
            )
        reference = reference or (spec.reference if spec else None)
        ref = evaluate_sections.reference(store, reference)
        sections = task.summarize(store, reference)
        samples = _samples(store)
        figures = [
            {"title": title, "png": png}
            for title, png in (
                ("Attack success and clean accuracy vs poison rate", _poison_plot(store, sections)),
                ("Behaviour by trigger value", _sweep_plot(store, sections)),
            )
            if png
        ]
        info = store.arm_info()
    results, verdicts = assess(spec, sections, fit, reference)
    if spec and (png := _persistence_plot(spec, sections, verdicts, info)):
        figures.append({"title": "Persistence: after each later training stage", "png": png})
    report = Report(
        run_dir / "report.html", sections, results, verdicts, gates.fit_summary(fit), spec,
        in_domain_rows(spec, sections), store_cells,
    )  # fmt: skip
    shown = [*spec.headline_rows(), *(r for g in spec.gates for r in g.rows())] if spec else []
    forest, forest_note = _forest(sections, ref, shown, report.in_domain)
    defenses = None
    if store_cells:
        from .defenses.cells import table

        defenses = table(store_cells)
    page = template().render(
        name=run_dir.name,
        title=f"{spec.name}: backdoorlab report" if spec else f"backdoorlab report: {run_dir.name}",
        question=spec.description if spec else "",
        verdicts=verdicts,
        gates=results,
        forest=forest,
        forest_rows_note=forest_note,
        figures=figures,
        defenses=defenses,
        sections=[sec for sec in sections if sec.rates],  # empty sections are left out
        samples=samples,
        written=datetime.now(UTC).isoformat(timespec="seconds"),
        run_dir=str(run_dir),
    )
    if write:
        atomic.write_text(report.path, page)
    return report


def terminal_table(section: Summary, title: str) -> Any:
    from rich.table import Table

    arms = sorted({a for r in section.values() for a in r})
    t = Table(title=title)
    t.add_column("")
    for a in arms:
        t.add_column(a)
    for row, by_arm in section.items():
        t.add_row(row, *[str(by_arm[a]) if a in by_arm else "-" for a in arms])
    return t
