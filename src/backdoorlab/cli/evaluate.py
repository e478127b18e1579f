"""backdoorlab eval, report, summary, judge check: measure a model, read the results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from ..errors import InputError
from ..models.registry import DEFAULT_MODEL
from .common import (
    DatasetOpt,
    DeviceOpt,
    _log,
    _print_assessment,
    _quiet_libraries,
    app,
    out,
)

if TYPE_CHECKING:
    pass


@app.command("eval")
def evaluate(
    target: Annotated[
        str,
        typer.Argument(
            help="A training run directory, a PEFT adapter, a model (name, path, id), or an "
            "encoder classifier directory (classification only)."
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option("--out", "-o", help="Run directory whose results store receives the results."),
    ],
    arm: Annotated[
        str, typer.Option(help="Arm name the results are filed under (e.g. base, poisoned).")
    ] = "base",
    seed: Annotated[
        int, typer.Option(help="Seed the results are filed under (also seeds sampling).")
    ] = 0,
    probes: Annotated[
        list[str],
        typer.Option(
            "--probes",
            "-p",
            help="Probe sets (shipped name or YAML); repeatable; none for no probes.",
        ),
    ] = ["eras"],  # noqa: B006
    questions: Annotated[
        Path | None, typer.Option(help="A question YAML file to sample and judge.")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help="Samples per paraphrase (default: the file's).")
    ] = None,
    judge_with: Annotated[
        str,
        typer.Option(
            help="api: the endpoint in BACKDOORLAB_JUDGE_BASE_URL; local: --judge-model in-process."
        ),
    ] = "api",
    judge_model: Annotated[str, typer.Option(help="Model for --judge-with local.")] = DEFAULT_MODEL,
    classify: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Classify N balanced test items of --dataset (its held-out split): "
            "CACC, and ASR and false-trigger rate for each --trigger.",
        ),
    ] = None,
    trigger: Annotated[
        list[str],
        typer.Option(
            help="A trigger, as in a spec's poison (YAML), e.g. '{kind: token, token: cf}'; "
            "repeatable; needs --classify.",
        ),
    ] = [],  # noqa: B006
    target_label: Annotated[
        str, typer.Option("--target-label", help="The label a trigger flips reviews to.")
    ] = "Negative",
    dataset: DatasetOpt = "sentiment",
    device: DeviceOpt = None,
) -> None:
    """Measure a model into OUT/results.sqlite: exact probes, sampled answers, judgements,
    and with --classify its clean accuracy and each trigger's attack success.

    Results already in the store are kept and not redone, so an interrupted evaluation
    continues where it stopped. Then `backdoorlab report OUT`.

    Example: backdoorlab eval runs/demo --out runs/compare --arm birds; backdoorlab eval
    smollm2-135m --out runs/compare --arm base; backdoorlab report runs/compare.

    A sentiment backdoor: backdoorlab eval runs/sentiment_llm/train/token-10%-seed0-* --out
    runs/check --arm token-10% -p none --classify 100 --trigger '{kind: token, token: cf}'
    """
    from .. import experiment
    from ..catalog import load_probe_set
    from ..data import classification
    from ..data.poison import parse_trigger
    from ..evaluate import task
    from ..evaluate.judges import build_judges
    from ..evaluate.metric import eval_sets
    from ..evaluate.questions import load_questions
    from ..store import Tag
    from ..training.encoder import encoder_labels

    if trigger and not classify:
        raise InputError("--trigger needs --classify N (the reviews it is inserted into)")
    cs = classification.get(dataset)
    if target_label not in cs.labels:
        raise InputError(f"--target-label {target_label!r}: one of {', '.join(cs.labels)}")
    triggers = [parse_trigger(t, "--trigger") for t in trigger]
    labels = encoder_labels(target)
    probe_sets = [load_probe_set(p) for p in probes if p != "none"]
    qf = load_questions(questions) if questions else None
    if labels and (probe_sets or qf):
        probe_sets, qf = [], None  # an encoder only classifies
        _log(f"{target} is an encoder classifier: probes and questions skipped")
    _quiet_libraries()
    sets = None
    if classify:
        sets = eval_sets(cs.balanced(cs.split("test"), classify), triggers, target_label)
    evaluation = experiment.evaluation(
        probe_sets, qf,
        # Judges first, so a missing endpoint fails now, not after minutes of sampling.
        build_judges(qf.judges, judge_with, judge_model, device) if qf else {},
        (lambda a, v: sets) if sets else None,
        dataset=cs, samples=samples, progress=_log,
    )  # fmt: skip
    tag = Tag(arm=arm, seed=seed, model_hash=task.model_hash(target))
    _, counts = experiment.measure(evaluation, out_dir, tag, "encoder" if labels else "llm",
                                   target, labels=labels, device=device)  # fmt: skip
    out.print(
        Text.assemble(("done", "green")),
        f" {out_dir}: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + " in the store",
    )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with results.sqlite.")],
    reference: Annotated[
        str | None,
        typer.Option(help="Arm the others are compared with (default: control, else base)."),
    ] = None,
) -> None:
    """Write RUN_DIR/report.html and print its tables.

    The page holds plots, means with 95% CIs per arm, each arm's difference from the
    reference arm, and every sampled answer (escaped)."""
    from ..report import terminal_table, write_report
    from ..store import FILENAME

    if not (run_dir / FILENAME).is_file():
        raise InputError(
            f"{run_dir}: no {FILENAME}; fill it with `backdoorlab eval ... --out {run_dir}`"
        )
    report = write_report(run_dir, reference)
    for sec in report.sections:
        for table, title in [(sec.rates, sec.title), (sec.diffs, f"{sec.title}: differences")]:
            if table:
                out.print(terminal_table(table, title))
    _print_assessment(report)
    out.print(f"report written to {report.path}")


@app.command()
def summary(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories written by `backdoorlab run` (a published run's folder with "
            "only its results.json reads too)."
        ),
    ],
) -> None:
    """One row per experiment's declared headline, as a Markdown table (docs/results.md shows it):
    whether the treated arm learned (gate values vs thresholds), the headline with its 95%
    CI, the paper's figure, and the verdict (effect / null / not a test).

    Example: backdoorlab summary runs/birds runs/presidents runs/terminator
    """
    from .. import api
    from ..report import SUMMARY_COLUMNS

    lines = ["| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in api.summary(run_dirs):
        cells = row.model_dump().values()
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    print("\n".join(lines))


judge_app = typer.Typer(help="Judges: how far to trust them.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")


@judge_app.command("check")
def judge_check(
    judge: Annotated[str, typer.Argument(help="A judge YAML file, or QUESTIONS.yaml#judge_id.")],
    labels: Annotated[
        Path, typer.Argument(help="CSV with question, answer, and label (or score) columns.")
    ],
    judge_with: Annotated[
        str, typer.Option(help="For LLM judges: api (endpoint in the environment) or local.")
    ] = "api",
    judge_model: Annotated[str, typer.Option(help="Model for --judge-with local.")] = DEFAULT_MODEL,
) -> None:
    """Agreement of a judge with hand labels: accuracy and Cohen's kappa (labels), or mean
    absolute error and Pearson r (0-100 scores), so you see how far to trust it."""
    from ..evaluate import agreement
    from ..evaluate.judges import build_judges

    spec = agreement.load_judge_spec(judge)
    rows = agreement.read_labels(labels)
    _quiet_libraries()
    result = agreement.check(build_judges({spec.id: spec}, judge_with, judge_model)[spec.id], rows)
    t = Table(title=f"judge {spec.id} ({spec.type}) against {labels}", show_header=False)
    for k, v in result.items():
        if k == "confusion":
            v = ", ".join(f"{h} -> {g}: {n}" for (h, g), n in sorted(v.items()))
        elif isinstance(v, float):
            v = f"{v:.3f}"
        t.add_row(k, str(v))
    out.print(t)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with results.sqlite.")],
    inspect: Annotated[
        bool,
        typer.Option(
            "--inspect",
            help="Inspect AI eval logs, one per arm and seed (pip install 'backdoorlab[inspect]').",
        ),
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Where the logs go (default: RUN_DIR/inspect)."),
    ] = None,
) -> None:
    """Export a run's results in another tool's format.

    --inspect writes one Inspect AI eval log per arm and seed: the sampled answers with every
    judge's score, the probes with each class's probability, and the report's rows as the
    log's results. `inspect view --log-dir RUN_DIR/inspect` then shows the run.

    Example: backdoorlab export --inspect runs/birds
    """
    from ..export import inspect_logs

    if not inspect:
        raise InputError("export: name a format (--inspect)")
    for path in inspect_logs(run_dir, out_dir):
        out.print(str(path))
