"""backdoorlab run: an experiment end to end."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from .common import (
    DeviceOpt,
    _log,
    _names,
    _print_assessment,
    _quiet_libraries,
    app,
    out,
)

if TYPE_CHECKING:
    pass


@app.command("run")
def run_experiment(
    spec_file: Annotated[Path, typer.Argument(help="An experiment spec (experiments/*.yaml).")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory: data, adapters, results, report.")
    ],
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Run seeds 0..N-1 instead of the spec's seeds.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model for every arm (default: the spec's)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Smoke run: the spec's `quick:` overrides (a few minutes).")
    ] = False,
    arms: Annotated[
        str | None,
        typer.Option(
            help="Train and evaluate only these arms (comma-separated); a later run with "
            "others adds them to the same OUT."
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local: every training and evaluation here, one after another; ray: each as a "
            "Ray task (a GPU each where the cluster has them, else a CPU), OUT on a filesystem "
            "every node shares. Needs pip install 'backdoorlab[ray]'."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--executor ray: the cluster's address (default: Ray on this machine)."),
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Run an experiment end to end: build data, train every arm x seed, evaluate, report.

    Everything lands in OUT, keyed by content: a rerun reuses trained adapters and stored
    results, and an interrupted run (Ctrl-C, a crash) continues where it stopped. Prints a
    timing table per stage and the spec's headline rows; OUT/report.html has everything.

    Example: backdoorlab run experiments/birds.yaml --out runs/birds
    """
    from .. import experiment
    from ..spec import load_spec

    chosen = _names(arms, "--arms") if arms is not None else None
    spec = load_spec(spec_file, quick=quick, seeds=seeds, model=model, arms=chosen)
    _quiet_libraries()
    timings, report = experiment.run(
        spec, out_dir, device=device, log=_log, executor=executor, address=address
    )
    sections = report.sections
    t = Table("stage", "seconds", "status", title="Timing")
    for name, secs, status in timings.rows:
        t.add_row(name, f"{secs:.1f}", status)
    t.add_row("total", f"{timings.total():.1f}", "")
    if executor != "local":
        t.add_row("wall clock (tasks in parallel)", f"{timings.wall:.1f}", "")
    out.print(t)
    _print_assessment(report)
    from ..report import classification_table, headline_table

    headline = headline_table(spec, sections)
    if headline:
        h = Table(title="Headline: means [95% CI]; every row and interval is in the report")
        h.add_column("", no_wrap=True)
        for title in headline["columns"]:
            h.add_column(title)
        for r in headline["rows"]:
            h.add_row(*r)
        out.print(h)
    from ..store import Store

    with Store(out_dir) as store:
        rows_ = classification_table(sections, store.arm_info())
    if rows_:
        c = Table(title="Classification: means [95% CI over test reviews]")
        for col in ("arm", "victim", "trigger", "poison rate", "CACC", "ASR", "false trigger"):
            c.add_column(col, no_wrap=col in ("arm", "victim"))
        for r in rows_:
            c.add_row(*r)
        out.print(c)
    out.print(f"report written to {out_dir / 'report.html'}")
