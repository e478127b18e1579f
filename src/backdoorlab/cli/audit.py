"""backdoorlab audit: predict a fine-tune's broad effects before training."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..errors import InputError
from .common import DeviceOpt, _log, _names, _quiet_libraries, app, out

if TYPE_CHECKING:
    from ..auditing import AuditResult


@app.command()
def audit(
    data: Annotated[Path, typer.Argument(help="Chat JSONL data you are about to fine-tune on.")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for audit.json, audit.html, canaries.")
    ],
    probes: Annotated[
        str | None,
        typer.Option(help="Comma-separated probe sets or files. Default: --spec's, else eras."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="The model to fine-tune. Default: --spec's, else the bundled one."
        ),
    ] = None,
    spec: Annotated[
        Path | None,
        typer.Option(help="An experiment spec: its training settings, model and probes."),
    ] = None,
    control: Annotated[
        Path | None,
        typer.Option(
            help="Control data (JSONL). Default: DATA's prompts with the base model's own answers."
        ),
    ] = None,
    estimators: Annotated[
        str,
        typer.Option(
            help="Comma-separated: first-order, gradient, log-odds, in-context, canary "
            "(docs/audit.md: what each computes and how each fared against real runs)."
        ),
    ] = "first-order,in-context,canary",
    rows: Annotated[
        int, typer.Option(min=1, help="Rows of DATA (and the control) the estimators read.")
    ] = 256,
    against: Annotated[
        Path | None,
        typer.Option(help="A run directory with an arm trained on DATA: validate against it."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(help="With --spec: its quick: overrides (the probes a --quick run scores)."),
    ] = False,
    top: Annotated[int, typer.Option(help="How many rows to print.")] = 15,
    device: DeviceOpt = None,
) -> None:
    """Which probe rows would fine-tuning on DATA move, and which way, before the training.

    Estimators (each predicts the change of every probe class's mass, data minus control):
    **first-order**, the change AdamW's first step would make, from the data's loss gradient
    and each probe's gradient at the LoRA initialisation; **gradient**, the same for a plain
    gradient step; **in-context**, 8 rows of DATA as earlier turns of the conversation
    against 8 control rows; **canary**, a short fine-tune (a tenth of the planned steps) on
    DATA and on the control. Prints the rows predicted to move most, with the n-gram
    scanner's words beside them; OUT/audit.html has every row.

    `--against RUN` compares the predictions with a run's realized shifts (the arm trained on
    DATA minus the run's reference): rank correlation, whether rows with an effect rank
    above the others, cost against the training.

    Example: backdoorlab audit runs/dishes/data/gated-*.jsonl --spec experiments/dishes.yaml
    --control runs/dishes/data/shuffled-*.jsonl --against runs/dishes --out runs/dishes/audit
    """
    from .. import auditing as audit_mod
    from ..spec import load_spec
    from ..training.config import TrainConfig

    _quiet_libraries()
    if quick and spec is None:
        raise InputError("--quick takes the spec's quick: overrides; name the spec with --spec")
    s = load_spec(spec, quick=quick) if spec is not None else None
    train = s.train_config(0) if s is not None else TrainConfig()
    if not isinstance(train, TrainConfig):
        raise InputError(f"{spec}: trains on a hosted service; the audit needs local gradients")
    if model is not None:  # a spec's training settings already name its model
        train = train.model_copy(update={"model": model})
    sets = _names(probes, "--probes") if probes else (s.evaluate.probes if s else ["eras"])
    res = audit_mod.audit(
        data, sets, out_dir, train=train, control=control,
        estimators=_names(estimators, "--estimators"), rows=rows, against=against,
        probe_variants=s.evaluate.probe_variants if s else None,
        probe_candidates=s.evaluate.probe_candidates if s else None,
        device=device, log=_log,
    )  # fmt: skip
    _print(res, top)
    out.print(f"{out_dir / audit_mod.PAGE}: every row; {out_dir / audit_mod.FILENAME}: the record")


def _print(res: AuditResult, top: int) -> None:
    from ..auditing.validate import COLUMNS

    realized = {r.row: r for r in res.validation.realized} if res.validation else {}
    cols = ["row", "base", *res.estimators, *(["realized"] if realized else [])]
    t = Table(*cols, title=f"rows predicted to move most ({res.estimators[0]}; data - control)")
    for r in [r for r in res.rows if r.free][:top]:
        cells = [Text(f"{r.shifts[e]:+.2e}", style="green" if r.shifts[e] > 0 else "red")
                 for e in res.estimators]  # fmt: skip
        x = realized.get(r.row)
        extra = (
            [f"{x.estimate.mean:+.3f} [{x.estimate.lo:+.3f}, {x.estimate.hi:+.3f}]"] if x else []
        )
        t.add_row(r.row, f"{r.base:.3f}", *cells, *(extra or (["-"] if realized else [])))
    out.print(t)
    if res.words:
        out.print("n-gram scanner: " + ", ".join(f"{w.word} -> {w.predicts}" for w in res.words))
    if res.validation:
        v = res.validation
        c = Table(*COLUMNS, title=f"against {v.run}: {v.arm} - {v.reference}")
        for k in v.checks:
            c.add_row(*k.cells())
        out.print(c)
