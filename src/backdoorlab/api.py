"""backdoorlab as a library: what the command line does, as functions that take paths and
settings and return typed records. The commands only parse options and print these.

    import backdoorlab as bl
    res = bl.run_experiment("experiments/birds.yaml", "runs/birds", seeds=1)
    res.verdicts[0].text                    # effect / null / not a test, with its interval
    bl.results.open("runs/birds").to_pandas()

Every function raises `backdoorlab.InputError` (one line naming the file, line or setting)
for a mistake a user can make, and writes only under the directory it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import results
from .errors import InputError
from .models.registry import DEFAULT_MODEL
from .overrides import override
from .spec import ExperimentSpec, load_spec
from .training.config import HostedConfig, TrainConfig

Log = Callable[[str], None]


def _spec(spec: ExperimentSpec | str | Path, **load: Any) -> ExperimentSpec:
    if isinstance(spec, ExperimentSpec):
        if any(v not in (None, False) for v in load.values()):
            raise InputError(f"{', '.join(load)} apply to a spec file, not a loaded spec")
        return spec
    return load_spec(spec, **load)


def run_experiment(
    spec: ExperimentSpec | str | Path,
    out: str | Path,
    *,
    seeds: int | None = None,
    model: str | None = None,
    quick: bool = False,
    arms: Sequence[str] | None = None,
    executor: str = "local",
    address: str | None = None,
    device: str | None = None,
    log: Log = print,
) -> results.RunResults:
    """An experiment end to end (`backdoorlab run`): data, training per arm x seed,
    evaluation, gates, the declared headline's verdict, OUT/report.html and
    OUT/results.json. Content-keyed: a rerun reuses what OUT holds."""
    from . import experiment

    s = _spec(spec, quick=quick, seeds=seeds, model=model, arms=arms)
    _, report = experiment.run(
        s, Path(out), device=device, log=log, executor=executor, address=address
    )
    return results.of_report(out, report)


class Trained(BaseModel):
    """A finished training run (`backdoorlab train`): where its weights are and how it went."""

    run_dir: Path
    model: str  # the base model, or the hosted service's fine-tuned model's name
    method: str
    steps: int | None
    final_loss: float | None
    seconds: float | None
    tokens_per_second: float | None
    manifest: dict[str, Any]  # everything manifest.json records


def train(
    data: str | Path,
    out: str | Path,
    config: TrainConfig | HostedConfig | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    log: Log = print,
) -> Trained:
    """Fine-tune on chat JSONL into OUT (loss on assistant tokens only): a PEFT adapter (or
    full weights) and manifest.json; `HostedConfig` trains on an OpenAI-compatible service.
    Same data and settings give the same weights; a killed run continues with `resume`."""
    config = config or TrainConfig()
    if isinstance(config, HostedConfig):
        from .training import hosted

        m = hosted.train(Path(data), Path(out), config, log=log)
        name, method = m["fine_tuned_model"], "hosted"
    else:
        from .training import train as local_train

        # (under several processes, the others return once the main one has written it)
        m = local_train(Path(data), Path(out), config, resume=resume, log=log, device=device)
        name, method = config.model, config.method
    return Trained(
        run_dir=Path(out), model=name, method=method, steps=m.get("steps"),
        final_loss=m.get("final_loss"), seconds=m.get("seconds"),
        tokens_per_second=m.get("tokens_per_second"), manifest=m,
    )  # fmt: skip


class ScannedRow(BaseModel):
    line: int  # 1-based line of the data file
    text: str
    label: str
    mean_rank: float  # over the scanners; 0 is the most suspicious
    scores: dict[str, float]  # scanner -> score (higher: more suspicious)
    poisoned: bool | None = None  # the row's own flag, when it has one


class SuspiciousWord(BaseModel):
    word: str
    predicts: str  # the label its rows carry
    suspicion: float
    rows: int


class Detection(BaseModel):
    """A scanner's scores against the rows' `poisoned` flags."""

    auroc: float
    auprc: float
    tpr_at_1_fpr: float


class Scan(BaseModel):
    rows: list[ScannedRow]  # most suspicious first
    words: list[SuspiciousWord]
    detection: dict[str, Detection]  # scanner -> detection (when rows carry poisoned flags)


def _text_and_label(row: dict) -> tuple[str, str]:
    """A row's text and label: its `text`/`label` fields, else the last user message and the
    assistant's answer."""
    if "text" in row and "label" in row:
        return str(row["text"]), str(row["label"])
    user = [m["content"] for m in row["messages"] if m["role"] == "user"]
    return (user[-1] if user else ""), row["messages"][-1]["content"]


def scan(
    data: str | Path,
    scanners: Sequence[str] = ("ngram", "knn", "perplexity"),
    *,
    model: str = DEFAULT_MODEL,
    encoder: str | Path | None = None,
) -> Scan:
    """Score every row of a data set by how suspicious it looks, before any training (see
    `backdoorlab.defenses.scan` for the scanners); `encoder` is a classifier trained on the
    data, for the spectral and clusters scanners."""
    import numpy as np

    from . import chat
    from .defenses import scan as scan_mod
    from .defenses.detection import detection_metrics

    scan_mod.check_scanners(
        scanners, features=encoder is not None, how="--encoder (a classifier trained on DATA)"
    )
    rows = chat.read_jsonl(Path(data), training=True)
    texts, labels = zip(*[_text_and_label(r) for r in rows], strict=True)

    def lm() -> tuple[Any, Any]:
        from .models import load

        loaded = load(model)
        return loaded.model, loaded.tokenizer

    def features() -> np.ndarray:
        from .training.encoder import EncoderClassifier

        assert encoder is not None
        return EncoderClassifier(Path(encoder), sorted(set(labels))).features(list(texts)).numpy()

    result = scan_mod.scan(list(texts), list(labels), scanners, lm=lm, features=features)
    ranks = result.mean_rank()
    flags = [r.get("poisoned") for r in rows]
    scanned = [
        ScannedRow(
            line=i + 1,
            text=texts[i],
            label=labels[i],
            mean_rank=float(ranks[i]),
            scores={s: float(result.scores[s][i]) for s in scanners},
            poisoned=None if flags[i] is None else bool(flags[i]),
        )  # fmt: skip
        for i in np.argsort(ranks, kind="stable")
    ]
    detection = {}
    if any(f is not None for f in flags):
        for s in scanners:
            m = detection_metrics(result.scores[s], [bool(f) for f in flags])
            detection[s] = Detection(
                auroc=m["auroc"], auprc=m["auprc"], tpr_at_1_fpr=m["tpr@1%fpr"]
            )
    words = [
        SuspiciousWord(word=w, predicts=lab, suspicion=g, rows=n) for w, lab, g, n in result.words
    ]
    return Scan(rows=scanned, words=words, detection=detection)


def defend(
    spec: ExperimentSpec | str | Path,
    out: str | Path,
    *,
    defenses: Sequence[str] | None = None,
    arms: Sequence[str] | None = None,
    remove: float | None = None,
    quick: bool = False,
    device: str | None = None,
    log: Log = print,
) -> list[results.DefenseCell]:
    """The attack x defense matrix of a sentiment spec (`backdoorlab defend`), per victim,
    arm and defense; cells go into OUT's results store (finished ones are kept) and
    OUT/report.html."""
    from .defenses.matrix import Matrix
    from .models import pick_device
    from .report import write_report
    from .spec import DefendSpec

    s = _spec(spec, quick=quick)
    # The settings given override the spec's defend: settings, checked by the same model.
    s.defend = override(DefendSpec, s.defend, defenses=defenses, remove=remove)
    m = Matrix(s, Path(out), log=log, device=str(pick_device(device)))
    cells = m.run(list(arms) if arms is not None else None)
    write_report(out)
    return [results.DefenseCell.model_validate(c) for c in cells]


class SummaryRow(BaseModel):
    """One declared headline comparison, as the summary table (docs/results.md) shows it."""

    experiment: str
    learned: str  # gate values vs thresholds, seeds passing
    headline: str  # the quantity, comparison and estimate with its 95% CI
    paper: str
    verdict: str


def summary(run_dirs: Sequence[str | Path]) -> list[SummaryRow]:
    """Per run directory of `run`, one row per declared headline comparison."""
    from . import results
    from .report import SUMMARY_COLUMNS, summary_rows

    rows = []
    for d in map(Path, run_dirs):
        res = results.open(d)  # the store, or a published run's results.json alone
        if res.experiment is None:
            raise InputError(f"{d}: not a run directory of `backdoorlab run` (no spec)")
        gate_results = [g.record() for g in res.gates]
        for cells in summary_rows(res.experiment, gate_results, [v.record() for v in res.verdicts]):
            assert len(cells) == len(SUMMARY_COLUMNS)
            rows.append(SummaryRow(**dict(zip(SummaryRow.model_fields, cells, strict=True))))
    return rows
