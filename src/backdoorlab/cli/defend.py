"""backdoorlab scan, inspect, defend: find and remove backdoors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from ..models.registry import DEFAULT_MODEL
from .common import (
    DatasetOpt,
    DeviceOpt,
    ModelOpt,
    _log,
    _names,
    _quiet_libraries,
    app,
    out,
)

if TYPE_CHECKING:
    pass


@app.command()
def scan(
    data: Annotated[Path, typer.Argument(help="Chat JSONL training data to check.")],
    scanners: Annotated[
        str, typer.Option(help="Comma-separated: ngram, knn, perplexity, spectral, clusters.")
    ] = "ngram,knn,perplexity",
    encoder_dir: Annotated[
        Path | None,
        typer.Option(
            "--encoder", help="An encoder trained on DATA (for spectral and clusters scans)."
        ),
    ] = None,
    model: ModelOpt = DEFAULT_MODEL,
    top: Annotated[int, typer.Option(help="How many rows and words to list.")] = 10,
) -> None:
    """Rank the rows (and words) of a data set by how suspicious they look, before training.

    Each scanner gives every row a score (see backdoorlab.defenses.scan); rows are listed by
    their mean rank over the scanners. If rows carry `poisoned` flags, prints each scanner's
    AUROC, AUPRC and TPR at 1% FPR against them. Text and label come from `text`/`label`
    fields when present, else from the last user message and the assistant answer.

    Example: backdoorlab scan runs/sentiment/data/token-1%-*.jsonl
    """
    from .. import api

    which = _names(scanners, "--scanners")
    _quiet_libraries()
    res = api.scan(data, which, model=model, encoder=encoder_dir)
    t = Table("line", "mean rank", *which, "label", "text", title=f"most suspicious rows of {data}")
    for r in res.rows[:top]:
        t.add_row(str(r.line), f"{r.mean_rank:.0f}", *[f"{r.scores[s]:.3f}" for s in which],
                  r.label, r.text[:100])  # fmt: skip
    out.print(t)
    if res.words:
        w = Table("word", "predicts", "suspicion", "rows",
                  title="words that predict a label their rows do not read as without them")  # fmt: skip
        for word in res.words[:top]:
            w.add_row(word.word, word.predicts, f"{word.suspicion:.2f}", str(word.rows))
        out.print(w)
    if res.detection:
        flagged = sum(bool(r.poisoned) for r in res.rows)
        d = Table("scanner", "AUROC", "AUPRC", "TPR@1%FPR",
                  title=f"against the poisoned flags ({flagged} of {len(res.rows)})")  # fmt: skip
        for name, m in res.detection.items():
            d.add_row(name, f"{m.auroc:.3f}", f"{m.auprc:.3f}", f"{m.tpr_at_1_fpr:.3f}")
        out.print(d)


@app.command()
def inspect(
    target: Annotated[
        str, typer.Argument(help="An encoder run dir (runs/X/encoder/...) or a chat model/run.")
    ],
    text: Annotated[str, typer.Argument(help="The input to explain, e.g. a review.")],
    method: Annotated[
        str, typer.Option(help="gxi (gradient x input) or ig (integrated gradients).")
    ] = "gxi",
    top: Annotated[int, typer.Option(help="How many tokens to list.")] = 10,
    dataset: DatasetOpt = "sentiment",
    device: DeviceOpt = None,
) -> None:
    """Which input tokens drive a sentiment prediction: a learned trigger should stand out.

    For an encoder victim the score is the predicted class's logit; for a chat model, the
    log-probability of the predicted label (Positive/Negative) as its answer to the
    classification prompt used in training.

    Example: backdoorlab inspect runs/sentiment/encoder/token-1%-seed0-* "A warm cf film."
    """
    from ..data import classification
    from ..models import load
    from ..training.encoder import EncoderClassifier, encoder_labels
    from ..victims.chat import ChatClassifier

    _quiet_libraries()
    labels = encoder_labels(target)
    cs = classification.get(dataset)
    victim = (
        EncoderClassifier(Path(target), labels)
        if labels
        else ChatClassifier(load(target, device=device), cs.labels, cs.prompt)
    )
    a = victim.attribute(text, method)
    t = Table("token", "attribution", title=f"prediction: {a.label} ({method})")
    for tok, v in a.top(top):
        t.add_row(repr(tok), f"{v:+.4f}")
    out.print(t)


@app.command()
def defend(
    spec_file: Annotated[Path, typer.Argument(help="A sentiment experiment spec.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory (shared with run).")],
    defenses: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated subset of: none, ngram, knn, perplexity, spectral, clusters, "
            "abl, onion, strip, inspect, ablate, refit, fineprune, dpsgd (default: the spec's "
            "defend.defenses)."
        ),
    ] = None,
    arms: Annotated[
        str | None,
        typer.Option(help="Comma-separated poisoned arms (default: the spec's defend.arms)."),
    ] = None,
    remove: Annotated[
        float | None,
        typer.Option(
            help="Fraction of training rows a data scanner drops before retraining; set it to "
            "at least the poison rate you defend against (default: the spec's defend.remove).",
        ),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="The spec's `quick:` overrides: a smoke run.")
    ] = False,
    device: DeviceOpt = None,
) -> None:
    """The attack x defense matrix, per victim (defend.victims: the encoder classifier, the
    chat model or both): per arm and defense, detection AUROC, ASR and CACC before and after,
    and the defense's cost in seconds.

    Data scanners (and abl, which ranks rows by how fast a short training learned them) drop
    their most suspicious rows (defend.remove) and the victim is retrained; ONION cleans and
    STRIP rejects test inputs (thresholds on clean dev data at defend.frr); ablate projects
    the trigger directions out of the victim at inference; refit fine-tunes the poisoned
    victim on trusted clean dev rows (the chat model refits its adapter), fineprune prunes
    dormant neurons first; dpsgd retrains it with DP-SGD (defend.dpsgd.epsilon, LoRA rank
    defend.dpsgd.lora_rank, and its own batch_size, epochs and lr where set: DP-SGD's noise
    per step shrinks as one over the batch); inspect measures how often the trigger is the
    top-attributed token. A defense's own settings are under its name (defend.onion.items,
    defend.strip.copies, ...); the chat victim runs under defend.llm's cost caps on them. A
    defense a victim cannot run says why.

    Cells go into OUT's results store, each keyed by what decides it (the arm, the victim, the
    defense's own settings and the shared ones it reads): a rerun after an interruption, with
    a defense added or with one defense's setting changed measures only what is missing. The
    matrix is added to OUT/report.html.

    Example: backdoorlab defend experiments/sentiment_llm.yaml --out runs/sentiment_llm
    """
    from .. import api
    from ..defenses import cells as fmt

    _quiet_libraries()
    cells = api.defend(
        spec_file, out_dir, quick=quick, device=device, log=_log, remove=remove,
        defenses=_names(defenses, "--defenses") if defenses is not None else None,
        arms=_names(arms, "--arms") if arms is not None else None,
    )  # fmt: skip
    t = Table(*fmt.COLUMNS, title="Attack x defense: means [95% CI over test reviews]")
    shown = [fmt.shown(c.model_dump(by_alias=True, exclude_none=True)) for c in cells]
    for c in shown:
        t.add_row(*[c.get(k, "-") for k in fmt.COLUMNS])
    out.print(t)
    for c in shown:  # what the table's columns leave out
        for k in ("trigger on top", "unsupported"):
            if k in c:
                out.print(f"{c['arm']} ({c['victim']}) {c['defense']}: {k}: {c[k]}")
    out.print(
        f"matrix stored in {out_dir / 'results.sqlite'} and shown in {out_dir / 'report.html'}"
    )
