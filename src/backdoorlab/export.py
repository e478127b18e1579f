"""A run as Inspect AI eval logs (`backdoorlab export --inspect RUN`), so `inspect view` and
Inspect's own analysis tools show our runs beside theirs: one log per arm and seed, whose
samples are the sampled answers (scored by every judge) and the probes (scored by each
class's probability), and whose results are the report's rows for that arm and seed (the
mean of the seed's observations). Needs `pip install 'backdoorlab[inspect]'`."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import atomic, results
from .errors import InputError
from .evaluate.probeset import ProbeResult
from .store import Store

INSTALL = "pip install 'backdoorlab[inspect]'"


def inspect_logs(run_dir: Path | str, out: Path | str | None = None) -> list[Path]:
    """Write RUN's Inspect logs into `out` (default RUN/inspect), replacing what was there in
    one rename; returns their paths."""
    try:
        from inspect_ai.log import (
            EvalConfig,
            EvalDataset,
            EvalLog,
            EvalMetric,
            EvalResults,
            EvalSample,
            EvalScore,
            EvalSpec,
            write_eval_log,
        )  # fmt: skip
        from inspect_ai.model import ModelOutput
        from inspect_ai.scorer import Score
    except ImportError:
        raise InputError(f"export --inspect needs inspect-ai: {INSTALL}") from None
    run_dir = Path(run_dir)
    res = results.open(run_dir)
    with Store(run_dir, readonly=True) as store:
        answers, judgements, probes = store.all_samples(), store.all_judgements(), store.probes()
    task = f"backdoorlab/{res.experiment or run_dir.name}"
    created = datetime.now(UTC).isoformat(timespec="seconds")
    scored: dict[tuple, dict[str, Any]] = defaultdict(dict)
    for j in judgements:
        value = j.label if j.label is not None else ("refused" if j.score is None else j.score)
        scored[j[:7]][j.judge] = Score(value=value)
    by_run: dict[tuple[str, int], list[Any]] = defaultdict(list)
    model_hash: dict[tuple[str, int], str] = {}
    for a in answers:
        by_run[(a.arm, a.seed)].append(
            EvalSample(
                id=f"{a.question_id}/{a.paraphrase}.{a.sample}",
                epoch=1,
                input=a.prompt,
                target="",
                output=ModelOutput.from_content(model=a.arm, content=a.answer),
                scores=scored.get(a[:7], {}),
                metadata={"kind": "question", "question": a.question_id},
            )  # fmt: skip
        )
        model_hash[(a.arm, a.seed)] = a.model_hash
    for p in probes:
        mass = ProbeResult.from_scores(p["probe_id"], p["scores"]).class_mass()
        by_run[(p["arm"], p["seed"])].append(
            EvalSample(
                id=f"probe/{p['probe_id']}/{p['variant']}",
                epoch=1,
                input=p["question"] + (f"\n(answer after: {p['prefix']})" if p["prefix"] else ""),
                target="",
                scores={"probe": Score(value={c: float(m) for c, m in mass.items()})},
                metadata={"kind": "probe", "probe": p["probe_id"]},
            )  # fmt: skip
        )
        model_hash[(p["arm"], p["seed"])] = p["model_hash"]
    if not by_run:
        raise InputError(f"{run_dir}: no sampled answers or probes to export")
    written = []
    final = Path(out) if out is not None else run_dir / "inspect"
    with atomic.directory(final) as tmp:
        for (arm, seed), samples in sorted(by_run.items()):
            rows = [r for r in res.rows if r.column == arm and seed in r.observations]
            scores = [
                EvalScore(
                    name=f"{r.section}: {r.row}",
                    scorer="backdoorlab",
                    metrics={
                        "mean": EvalMetric(
                            name="mean", value=sum(r.observations[seed]) / len(r.observations[seed])
                        )
                    },
                )  # fmt: skip
                for r in rows
                if r.observations[seed]
            ]
            log = EvalLog(
                status="success",
                eval=EvalSpec(
                    created=created,
                    task=task,
                    task_id=f"{task}/{arm}/{seed}",
                    dataset=EvalDataset(name=res.experiment, samples=len(samples)),
                    model=f"backdoorlab/{arm}",
                    model_args={
                        "base": res.model,
                        "arm": arm,
                        "seed": seed,
                        "model_hash": model_hash[(arm, seed)],
                    },
                    config=EvalConfig(),
                ),  # fmt: skip
                results=EvalResults(
                    total_samples=len(samples), completed_samples=len(samples), scores=scores
                ),
                samples=samples,
            )
            name = f"{arm}-seed{seed}.eval"
            write_eval_log(log, str(tmp / name))
            written.append(final / name)
    return written
