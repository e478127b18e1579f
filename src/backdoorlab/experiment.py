"""Run an experiment spec end to end: build each arm's data, train each arm x seed, evaluate,
aggregate, report. Every step is keyed by content, so a rerun reuses what exists and an
interrupted run resumes (training from its last checkpoint, evaluation from the store)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import atomic, executors, results, rundir
from .catalog import load_probe_set
from .data.classification import ClassificationSet
from .data.sentiment import REVIEWS, SentimentData
from .errors import InputError
from .evaluate import metric, task
from .evaluate.hosted import HostedChat
from .evaluate.judges import build_judges
from .evaluate.probeset import ProbeSet
from .evaluate.questions import LlmJudgeSpec, QuestionFile, load_questions
from .models.loading import read_manifest
from .report import Report, write_report
from .rundata import build_data, trained_dir
from .spec import ExperimentSpec
from .store import Store, Tag
from .training import encoder, hosted, sft
from .training.config import HostedConfig


@dataclass
class Timings:
    """Seconds per stage, and whether the stage did work or reused earlier results."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)
    wall: float = 0.0  # the run's own seconds (rows overlap when tasks run in parallel)

    @contextmanager
    def stage(self, name: str, note: str = "ran") -> Iterator[list[str]]:
        status = [note]
        t0 = time.perf_counter()
        try:
            yield status
        finally:
            self.rows.append((name, time.perf_counter() - t0, status[0]))

    def total(self) -> float:
        return sum(s for _, s, _ in self.rows)


def _questions(spec: ExperimentSpec) -> QuestionFile | None:
    ev = spec.evaluate
    if not ev.questions:
        return None
    qf = load_questions(ev.questions)
    if ev.max_tokens:
        qf.questions = [
            q.model_copy(update={"max_tokens": min(q.max_tokens, ev.max_tokens)})
            for q in qf.questions
        ]
    api = ev.judges == "api" or (
        ev.judges == "auto"
        and bool(os.environ.get("BACKDOORLAB_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL"))
    )
    if not api:  # offline: drop the LLM judges and the columns that name them
        qf.judges = {k: v for k, v in qf.judges.items() if not isinstance(v, LlmJudgeSpec)}
        qf.questions = [
            q.model_copy(update={"judges": {c: j for c, j in q.judges.items() if j in qf.judges}})
            for q in qf.questions
        ]
    return qf


def counts(store: Store) -> dict[str, int]:
    return {t: store.count(t) for t in ("probes", "samples", "judgements", "predictions")}


def _device(device: str | None) -> str:
    from .models import pick_device

    return str(pick_device(device))


class Target(NamedTuple):
    """What an (arm, seed, victim) evaluates: a model name or a run directory here, or a
    model on the hosted service (`hosted`)."""

    name: str
    hosted: bool = False


def _classification_sets(spec: ExperimentSpec) -> Callable[[str, str], dict] | None:
    """(arm, victim) -> the texts each classification metric needs (None: no classification).
    A poisoned arm (and each later stage of it) is measured with its trigger and its near
    miss; an arm without poison with every trigger of the spec (the ASR floor)."""
    ce = spec.evaluate.classification
    if ce is None:
        return None
    cs = spec.classification_set()
    test = cs.balanced(cs.split("test", ce.split_seed), ce.test)
    small = cs.balanced(test, ce.llm_test) if ce.llm_test else test
    poisons = {
        n: a.data.poison
        for n, a in spec.arms.items()
        if isinstance(a.data, SentimentData) and a.data.poison
    }
    every = list({p.trigger.name(): p.trigger for p in poisons.values()}.values())

    def sets(arm: str, victim: str) -> dict:
        items = small if victim == "llm" else test
        planted = spec.root(arm) if arm in spec.arms else arm  # a later stage: its arm's trigger
        if planted in poisons:
            return metric.eval_sets(items, [poisons[planted].trigger], ce.target)
        return metric.eval_sets(items, every, ce.target, near_miss=False)

    return sets


def run(
    spec: ExperimentSpec,
    out: Path,
    *,
    device: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> tuple[Timings, Report]:
    """`executor`: where trainings and evaluations run (executors.py); `address`: a Ray
    cluster's (default: a Ray instance on this machine)."""
    executors.check(executor, address)  # before anything is written
    with rundir.claim(out):
        atomic.write_text(out / "spec.json", spec.model_dump_json(indent=2))
        ex = executors.make(executor, out, address)
        try:
            return _run(spec, out, ex, device=device, log=log, progress=progress)
        finally:
            ex.close()


_EVALUATIONS: dict[str, task.Task] = {}


def _evaluation(spec: ExperimentSpec, data: dict[str, Path], device: str | None) -> task.Task:
    """The spec's scorers (probes, questions and their judges, classification, fit), built
    once per process: judges load models."""
    key = json.dumps([spec.model_dump_json(), sorted((k, str(v)) for k, v in data.items()),
                      device])  # fmt: skip
    if key not in _EVALUATIONS:
        qf = _questions(spec)
        _EVALUATIONS[key] = evaluation(
            [load_probe_set(p) for p in spec.evaluate.probes],
            qf,
            build_judges(qf.judges, "api", spec.model, device) if qf else {},
            _classification_sets(spec),
            dataset=spec.classification_set(),
            samples=spec.evaluate.samples,
            variants=spec.evaluate.probe_variants,
            sweep_values=spec.evaluate.sweep_values,
            candidates=spec.evaluate.probe_candidates,
            fit=task.Fit(data, spec.fit.rows),
        )
    return _EVALUATIONS[key]


def evaluation(
    probe_sets: list[ProbeSet],
    questions: QuestionFile | None = None,
    judges: dict[str, Any] | None = None,
    classification: Callable[[str, str], Any] | None = None,
    *,
    dataset: ClassificationSet | None = None,
    samples: int | None = None,
    progress: Callable[[str], None] = lambda s: None,
    variants: int | None = None,
    sweep_values: list[str] | None = None,
    candidates: int | None = None,
    fit: task.Fit | None = None,
) -> task.Task:
    """The scorers of one evaluation (`eval`'s options, or a spec's `evaluate:`): probes,
    questions with their judges, classification (`classification`: arm, victim -> its
    sets), and the fit gate's scorer."""
    scorers: list[task.Scorer] = [task.Probes(probe_sets, variants, sweep_values, candidates)]
    if questions:
        scorers.append(task.Questions(questions, judges or {}, samples=samples, progress=progress))
    if classification:
        cs = dataset or REVIEWS
        scorers.append(task.Classification(classification, cs.labels, cs.prompt))
    return task.Task([*scorers, *([fit] if fit else [])])


def measure(
    evaluation: task.Task,
    out: Path,
    tag: Tag,
    victim: str,
    target: str,
    *,
    labels: list[str] | None = None,
    hosted: HostedChat | None = None,
    device: str | None = None,
) -> tuple[str, dict[str, int]]:
    """One model measured into OUT's store under `tag` (`eval` does this for one model, `run`
    for each arm, seed and victim): the model loads only when something is missing. Returns
    "ran" or "reused" and the store's counts after."""
    from .models import load

    with Store(out) as store:
        store.set_current(tag, victim)  # what the arm reports from now on
        before = counts(store)
        if evaluation.pending(victim, store, tag, remote=hosted is not None):
            if victim == "encoder":
                clf = encoder.EncoderClassifier(Path(target), labels or [], _device(device))
                subject = task.Subject("encoder", predict=clf.predict)
            elif hosted:
                subject = task.Subject("llm", hosted=hosted)
            else:
                subject = task.Subject("llm", loaded=load(target, device=device))
            evaluation.run(subject, store, tag)
        after = counts(store)
    return ("reused" if after == before else "ran"), after


def _tag(name: str, seed: int, target: Target, api: HostedChat | None = None) -> Tag:
    """Where an (arm, seed)'s results are stored: keyed by the model's content identity
    (a hosted target's endpoint and name; `api`: its client, if one is already made)."""
    if target.hosted:
        ident = (api or HostedChat(target.name)).identity
    else:
        ident = task.model_hash(target.name)
    return Tag(arm=name, seed=seed, model_hash=ident)


def _train_llm(
    data: Path, run_dir: Path, config, device, progress: bool, log,
    after: str | None = None, trained: float | None = None,
) -> float:  # fmt: skip
    """One arm's training; `after`: the run directory whose weights a later stage continues
    (`trained`: that training, which a Ray executor passes so this starts after it)."""
    del trained
    t0 = time.perf_counter()
    init = None
    if after is not None:
        from .models import load

        loaded = load(after, device=device)
        init = (loaded.model, loaded.tokenizer, task.model_hash(after))
    sft.train(data, run_dir, config, resume=True, progress=progress, log=log, device=device,
              init=init)  # fmt: skip
    return time.perf_counter() - t0


def _train_encoder(data: Path, enc_dir: Path, config, labels, device, log) -> float:
    t0 = time.perf_counter()
    encoder.train_encoder(data, enc_dir, config, labels, log=log, device=_device(device))
    return time.perf_counter() - t0


def _evaluate(
    spec: ExperimentSpec, out: Path, data: dict[str, Path], victim: str, tag_of: tuple,
    target: Target, device: str | None, log, trained: float | None = None,
) -> tuple[float, str]:  # fmt: skip
    """One (arm, seed, victim)'s evaluation into the store; `trained` is the training it
    waited for (a Ray executor passes that task's handle, so this starts after it)."""
    del trained
    t0 = time.perf_counter()
    api = HostedChat(target.name) if target.hosted else None
    status, _ = measure(
        _evaluation(spec, data, device), out, _tag(*tag_of, target, api), victim, target.name,
        labels=list(spec.classification_set().labels), hosted=api, device=device,
    )  # fmt: skip
    return time.perf_counter() - t0, status


def _run(
    spec: ExperimentSpec,
    out: Path,
    ex: executors.Local | executors.Ray,
    *,
    device: str | None,
    log: Callable[[str], None],
    progress: bool,
) -> tuple[Timings, Report]:
    from .models import load

    log(
        f"experiment {spec.name}: arms {', '.join(a for a in spec.arms if spec.victims_of(a))}; "
        f"seeds {spec.seeds}; model {spec.model} -> {out}"
        + (f"; executor {ex.name}" if ex.name != "local" else "")
    )
    timings = Timings()
    t0 = time.perf_counter()
    progress = progress and ex.name == "local"  # bars from parallel tasks would interleave

    with timings.stage("build data"):
        data = build_data(spec, out, device)

    # What each (arm, seed, victim) evaluates: a chat model, or an encoder directory; and the
    # training it needs first, submitted unless its run directory already holds it.
    remote = isinstance(spec.train, HostedConfig)
    if remote and any(a.after for a in spec.arms.values()):
        raise InputError("then: stages continue a model's weights here; not with backend: openai")
    targets: dict[tuple[str, int, str], Target] = {}
    trained_dirs: dict[str, Path] = {}  # each arm's first seed's run (a stage's steps)
    trainings: dict[tuple[str, int, str], tuple[str, Any]] = {}
    for name, arm in spec.arms.items():
        for seed in spec.seeds:
            victims = spec.victims_of(name)
            if arm.data is None:
                if "llm" in victims:
                    targets[(name, seed, "llm")] = Target(spec.model, remote)
                continue
            if "llm" in victims:
                config = spec.train_config(seed, name)
                key_fields = config.key_fields()
                parent = targets.get((arm.after, seed, "llm")) if arm.after else None
                if arm.after and parent is None:
                    raise InputError(f"arm {name!r} continues {arm.after!r}, which is not trained")
                if parent is not None:  # a later stage: keyed by the weights it starts from
                    key_fields |= {"after": Path(parent.name).name}
                run_dir = trained_dir(out, "llm", name, seed, key_fields, data[name])
                trained_dirs.setdefault(name, run_dir)
                label = f"train {name} seed {seed}"
                reused = (run_dir / "manifest.json").is_file()
                if isinstance(config, HostedConfig):  # a job on the service: waited for here
                    with timings.stage(label, "reused" if reused else "ran"):
                        log(f"{label} -> {run_dir}")
                        job = hosted.train(data[name], run_dir, config, log=log)
                    targets[(name, seed, "llm")] = Target(job["fine_tuned_model"], True)
                    continue
                targets[(name, seed, "llm")] = Target(str(run_dir))
                if reused:
                    timings.rows.append((label, 0.0, "reused"))
                    continue
                log(f"{label} -> {run_dir}" + (f" (after {arm.after})" if parent else ""))
                before = trainings.get((arm.after, seed, "llm")) if parent else None
                trainings[(name, seed, "llm")] = (label, ex.submit(
                    _train_llm, data[name], run_dir, config, device, progress, log,
                    parent.name if parent else None, before[1] if before else None,
                ))  # fmt: skip
            if "encoder" in victims:
                config = spec.encoder.model_copy(update={"seed": seed})
                enc_dir = trained_dir(out, "encoder", name, seed, config.key_fields(), data[name])
                label = f"train encoder {name} seed {seed}"
                targets[(name, seed, "encoder")] = Target(str(enc_dir))
                if (enc_dir / encoder.MANIFEST).is_file():
                    timings.rows.append((label, 0.0, "reused"))
                    continue
                log(f"{label} -> {enc_dir}")
                trainings[(name, seed, "encoder")] = (label, ex.submit(
                    _train_encoder, data[name], enc_dir, config,
                    spec.classification_set().labels, device, log,
                ))  # fmt: skip

    evaluation = _evaluation(spec, data, device)
    with Store(out) as store:

        def arm_info(name: str) -> dict[str, Any]:
            arm = spec.arms[name]
            if arm.after is None:
                return arm.data.info() if arm.data else {}
            # A later stage still carries the attack of the arm it continues (its trigger and
            # poison rate), and sits on the persistence curve after its own steps.
            info = arm_info(arm.after) | {"after": arm.after}
            manifest = read_manifest(trained_dirs[name]) if name in trained_dirs else None
            return info | {"steps": manifest["steps"]} if manifest else info

        for name in spec.arms:
            store.set_arm_info(name, arm_info(name))
        evaluations = []
        for (name, seed, victim), target in targets.items():
            label = f"evaluate {name} seed {seed}" + (" (encoder)" if victim == "encoder" else "")
            training = trainings.get((name, seed, victim))
            if training is None:
                tag = _tag(name, seed, target)
                if not evaluation.pending(victim, store, tag, remote=target.hosted):
                    store.set_current(tag, victim)
                    timings.rows.append((label, 0.0, "reused"))
                    continue
            log(label)
            handle = ex.submit(
                _evaluate, spec, out, data, victim, (name, seed), target, device, log,
                training[1] if training else None,
            )  # fmt: skip
            evaluations.append((label, handle))
        for label, handle in trainings.values():
            timings.rows.append((label, ex.result(handle), "ran"))
        for name in spec.arms:
            store.set_arm_info(name, arm_info(name))  # stages trained just now: their steps
        for label, handle in evaluations:
            seconds, status = ex.result(handle)
            timings.rows.append((label, seconds, status))
        if ex.name != "local":
            log(f"{ex.name}: {ex.scheduled} tasks scheduled")

        # The base model on each trained arm's rows: what the generic gate's gain is against
        # (a hosted model gives no log-probs of whole answers: no generic gate).
        trained = sorted(
            {n for (n, _, v), t in targets.items() if v == "llm" and n in data and not t.hosted}
        )
        base_hash = task.model_hash(spec.model)

        def base_tag(arm: str) -> Tag:
            return Tag(arm=arm, seed=-1, model_hash=base_hash)

        fit = next(s for s in evaluation.scorers if isinstance(s, task.Fit))
        for n in trained:
            store.set_current(base_tag(n))
        todo = [n for n in trained if not store.has_fit(base_tag(n), task.data_hash(data[n]))]
        if todo:
            with timings.stage("fit of the base model"):
                log(f"base model on the training rows of {', '.join(todo)}")
                base = task.Subject("llm", loaded=load(spec.model, device=device))
                for n in todo:
                    fit.run(base, store, base_tag(n))
                del base

    with timings.stage("report"):
        report = write_report(out)
    timings.wall = time.perf_counter() - t0
    atomic.write_json(out / "timings.json", [list(r) for r in timings.rows])
    results.write(out, report)  # the same numbers, typed, for code that is not Python
    return timings, report
