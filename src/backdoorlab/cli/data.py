"""backdoorlab data check, questions check, spec show: what a file holds, before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..errors import InputError
from ..models.registry import DEFAULT_MODEL
from .common import (
    MaxLengthOpt,
    ModelOpt,
    _quiet_libraries,
    app,
    data_app,
    out,
)

if TYPE_CHECKING:
    pass


@data_app.command("check")
def data_check(
    file: Annotated[
        Path, typer.Argument(help='Chat JSONL file: one {"messages": [...]} per line.')
    ],
    model: ModelOpt = DEFAULT_MODEL,
    prompts: Annotated[
        bool,
        typer.Option(
            "--prompts", help="Rows are prompts: the last message need not be the assistant's."
        ),
    ] = False,
    tokens: Annotated[
        bool, typer.Option(help="Report token lengths under the model's tokenizer.")
    ] = True,
    max_length: MaxLengthOpt = None,
) -> None:
    """Validate a chat JSONL file and describe it: rows, roles, token lengths, duplicates.

    Exits 2 naming the file and line of the first problem.
    """
    from ..datacheck import describe

    tok = None
    if tokens:
        _quiet_libraries()
        from ..models import load_tokenizer

        tok = load_tokenizer(model)
    d = describe(file, prompts=prompts, tokenizer=tok, max_length=max_length)
    t = Table(title=str(file), show_header=False)
    t.add_row("rows", str(d.rows))
    t.add_row("messages by role", ", ".join(f"{k} {v}" for k, v in sorted(d.roles.items())))
    extra = ", ".join(f"{k} ({v} rows)" for k, v in sorted(d.extra.items()))
    t.add_row("extra fields", extra or "none")
    t.add_row("duplicate rows", str(len(d.duplicates)))
    if d.lengths:
        t.add_row(f"tokens per row ({model}, chat template)", d.lengths.summary())
    if d.trained:
        t.add_row("trained (assistant) tokens per row", d.trained.summary())
        t.add_row(f"rows over max_length {d.max_length}", str(len(d.too_long)))
    out.print(t)
    for line, orig in d.duplicates[:10]:
        out.print(f"  line {line} duplicates line {orig}")
    if len(d.duplicates) > 10:
        out.print(f"  ... and {len(d.duplicates) - 10} more")
    if d.too_long:
        line, n = d.too_long[0]
        raise InputError(
            f"{file}:{line}: the row is {n} tokens, longer than max_length {d.max_length} "
            f"({len(d.too_long)} such rows); `train` would refuse it (raise --max-length or cut it)"
        )


questions_app = typer.Typer(
    help="Free-form question files (the paper's YAML format).", no_args_is_help=True
)
app.add_typer(questions_app, name="questions")


@questions_app.command("check")
def questions_check(
    file: Annotated[
        Path, typer.Argument(help="A question YAML file (free_form questions and judges).")
    ],
) -> None:
    """Check a question file: how many questions and judges it holds, and what is wrong.

    Exits 2 naming the file and line of the first problem.
    """
    from ..evaluate.questions import load_questions

    qf = load_questions(file)
    t = Table("id", "line", "type", "paraphrases", "samples", "judges")
    for q in qf.questions:
        judges = ", ".join(f"{c}: {j}" for c, j in q.judges.items()) or "-"
        t.add_row(q.id, str(qf.lines[q.id]), q.type, str(len(q.paraphrases)),
                  str(len(q.paraphrases) * q.samples_per_paraphrase), judges)  # fmt: skip
    for j in qf.judges.values():
        t.add_row(j.id, str(qf.lines[j.id]), j.type, "-", "-", j.summary())
    out.print(t)
    out.print(f"{len(qf.questions)} questions, {len(qf.judges)} judges parsed from {file}")
    for entry, keys in qf.unused_keys().items():
        out.print(f"  {entry}: keys kept but not used by backdoorlab: {', '.join(keys)}")


spec_app = typer.Typer(help="Experiment specs: what a spec expands to.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


@spec_app.command("show")
def spec_show(
    spec_file: Annotated[Path, typer.Argument(help="An experiment spec (experiments/*.yaml).")],
    quick: Annotated[bool, typer.Option(help="With the spec's `quick:` overrides.")] = False,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Seeds 0..N-1 instead of the spec's seeds.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="The whole expanded spec, as `run` stores it.")
    ] = False,
) -> None:
    """Show the arms a spec runs, grids expanded: each arm's data (the fields the spec sets)
    and victims, then seeds, gates and the declared headline.

    Example: backdoorlab spec show experiments/sentiment_trigger.yaml --quick
    """
    from ..spec import load_spec

    spec = load_spec(spec_file, quick=quick, seeds=seeds)
    if as_json:
        out.print_json(spec.model_dump_json())
        return
    t = Table("arm", "victims", "data", title=f"{spec.name}: {len(spec.arms)} arms")
    for name, arm in spec.arms.items():
        victims = spec.victims_of(name)
        if arm.data is None:
            data = "none (the untrained model)"
        else:
            fields = arm.data.model_dump(mode="json", exclude_unset=True)
            fields.pop("builder", None)
            data = f"{arm.data.builder} {json.dumps(fields, ensure_ascii=False)}"
        ref = " (reference)" if name == spec.reference else ""
        t.add_row(name + ref, ", ".join(victims) or "left out", data)
    out.print(t)
    out.print(f"model {spec.model}; seeds {', '.join(map(str, spec.seeds))}")
    for g in spec.gates:
        out.print(f"gate: {', '.join(g.rows())} on {', '.join(g.arms)} ({g.what or g.row})")
    for h in spec.headlines()[:1]:
        out.print(f"headline: {h.row} in {', '.join(spec.treated(h))}")
