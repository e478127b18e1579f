"""What every command shares: the app and its groups, the consoles, the common options and
helpers, and `main`, where every mistake a user can make becomes one line and an exit code."""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import BackdoorlabError, InputError, first_problem

if TYPE_CHECKING:
    from ..report import Report

app = typer.Typer(
    help="Build, fine-tune, measure and defend against fine-tuning attacks on language models.\n\n"
    "Start with `backdoorlab models list`, check a data file with `backdoorlab data check`, "
    "fine-tune with `backdoorlab train` and look at the result with `backdoorlab generate`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Markdown: a docstring's paragraphs reflow to the terminal (plain rich mode kept the
    # source's line breaks after the first paragraph, mid-sentence in a narrow window).
    rich_markup_mode="markdown",
)
models_app = typer.Typer(
    help="Models backdoorlab knows and where their weights are.", no_args_is_help=True
)
data_app = typer.Typer(help="Chat JSONL data sets: validate and describe.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")

# Piped or logged output gets wide tables instead of 80 columns of wrapped cells. Markup is
# off: file names, fields, model output and judge replies are printed as they are ("[/x]" is
# text), and our own colours are styles on Text, never markup in strings.
out = Console(markup=False, highlight=False, **({} if sys.stdout.isatty() else {"width": 200}))
err = Console(stderr=True, soft_wrap=True, markup=False, highlight=False)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Bundled name (see `models list`), local directory, or Hugging Face id.",
    ),
]


TargetArg = Annotated[
    str,
    typer.Argument(help="A training run directory, a PEFT adapter, or a model (name, path, id)."),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="cpu, cuda, cuda:1 ... Default: cuda if present.")
]
DatasetOpt = Annotated[
    str,
    typer.Option(
        help="The classification data set: its labels and the prompt a chat model classifies "
        "with (ours: sentiment, movie reviews; or one a plugin registers)."
    ),
]


DecodeWeightsOpt = Annotated[
    str,
    typer.Option(
        "--decode-weights",
        help="Weights to sample with on a CPU: model (its own), bf16, or int8 (int8 weights, "
        "bf16 activations). Lower precision decodes faster where the CPU runs bf16 natively "
        "(AVX-512-BF16 or AMX); probes and training keep the model's own weights. Their "
        "speed and effect on answers: benchmarks/decode_weights.py.",
    ),
]
MaxLengthOpt = Annotated[
    int | None,
    typer.Option(
        help="Longest row in tokens, chat template included; longer rows are an error. "
        "Default: training's (1024)."
    ),
]


def _default(cls: type[BaseModel], name: str) -> str:
    """A config field's default, for a flag's help: the config class is where it is set."""
    return f" Default: {cls.model_fields[name].default}."


def _quiet_libraries() -> None:
    # Library chatter (progress bars per weight load, deprecation notices) buries our output.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="opacus")  # secure-RNG and RDP-order notices
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _log(msg: str) -> None:
    err.print(msg)


def _names(value: str, option: str) -> list[str]:
    """A comma-separated option's entries, blanks dropped; none at all is an error (an empty
    `--arms ''` must not quietly mean every arm, nor `--arms ,` none)."""
    names = [x.strip() for x in value.split(",") if x.strip()]
    if not names:
        raise InputError(f"{option} {value!r}: names no entry (comma-separated names)")
    return names


def _print_assessment(report: Report) -> None:
    """The gates (one `learned: yes|no (value vs threshold)` line per arm, seed and gate),
    then the declared headline with its verdict: before any out-of-domain row."""
    for g in report.gates:
        out.print(g.line())
    if report.verdicts:
        h = Table(title="Declared headline: estimate [95% CI] and verdict")
        for col in ("row", "comparison", "verdict", "the paper"):
            h.add_column(col)
        for v in report.verdicts:
            h.add_row(v.quantity(), v.comparison(), v.text, v.paper or "-")
        out.print(h)


def _one_line(e: Exception) -> tuple[str, int] | None:
    """The message and exit status for a mistake a user can make; None for our own bugs."""
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    if isinstance(e, BackdoorlabError):
        return str(e), e.exit_code
    if isinstance(e, NoArgsIsHelpError):
        return "", 2  # the help is already printed
    if isinstance(e, ClickException):
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return e.format_message() + hint, e.exit_code
    if isinstance(e, ValidationError):
        loc, msg = first_problem(e)
        return f"{e.title}: {loc}: {msg}", 2
    if isinstance(e, OSError) and e.filename is not None:
        # A path the user named: missing, unreadable, a directory where a file should be.
        return f"{e.filename}: {e.strerror or e}", 2
    return None


def main() -> None:
    """Every mistake a user can make ends here as one line on stderr and a non-zero exit."""
    try:
        rv = app(standalone_mode=False)
    except KeyboardInterrupt:
        err.print("interrupted", style="red")
        sys.exit(130)
    except Exception as e:
        found = _one_line(e)
        if found is None:
            raise
        message, code = found
        if message:
            err.print(Text.assemble(("error: ", "red"), message))
        sys.exit(code)
    sys.exit(rv if isinstance(rv, int) else 0)
