"""Evaluate one model into a run directory's results store: probes, sampled answers to
free-form questions, and their judgements. Whatever is already stored is not redone, so an
interrupted evaluation resumes and a rerun samples nothing twice."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import chat, generate
from ..models import LoadedModel, fingerprint
from ..models.loading import read_manifest
from ..store import Store, Tag
from . import probes as probes_mod
from .metric import Metric
from .probeset import ProbeSet, sweep_key
from .questions import FreeFormQuestion, QuestionFile


def model_hash(target: str) -> str:
    """Content identity of what `target` names: a training run's key, else the model's."""
    manifest = read_manifest(Path(target)) if Path(target).is_dir() else None
    ident = f"run:{manifest['key']}" if manifest else fingerprint(target)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def settings_hash(q: FreeFormQuestion) -> str:
    blob = json.dumps(
        {"p": q.paraphrases, "t": q.temperature, "m": q.max_tokens, "s": q.system}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_probes(
    loaded: LoadedModel,
    probe_set: ProbeSet,
    store: Store,
    tag: Tag,
    *,
    max_variants: int | None = None,
    sweep_values: list[str] | None = None,
) -> None:
    """Score every variant of every probe (the first `max_variants` of each, if given; sweep
    probes only at `sweep_values`, if given)."""
    done = store.probe_keys(tag)
    for p in probe_set.probes:
        key = sweep_key(p.id)
        if key and sweep_values is not None and key[1] not in sweep_values:
            continue
        for i, v in enumerate(p.variants()[:max_variants]):
            h = v.definition_hash()
            if (p.id, i, h) in done:
                continue
            r = probes_mod.score(loaded.model, loaded.tokenizer, v)
            store.add_probe(tag, p.id, i, h, v.question, str(v.prefix), r.scores())


def run_questions(
    loaded: LoadedModel,
    qf: QuestionFile,
    store: Store,
    tag: Tag,
    *,
    samples: int | None = None,
    batch_size: int = 32,
    progress: Callable[[str], None] = lambda s: None,
) -> None:
    """Sample every question (samples_per_paraphrase, or `samples` to override) into the store."""
    for q in qf.questions:
        sh = settings_hash(q)
        n = samples or q.samples_per_paraphrase
        have = store.has_samples(tag, q.id, sh)
        for pi, text in enumerate(q.paraphrases):
            todo = [s for s in range(n) if (pi, s) not in have]
            messages = chat.conversation(text, system=q.system)
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                progress(f"{q.id} paraphrase {pi}: samples {chunk[0]}-{chunk[-1]}")
                answers = generate.sample(
                    loaded, messages, n=len(chunk), temperature=q.temperature,
                    max_new_tokens=q.max_tokens, seed=tag.seed * 1_000_003 + pi * 10_007 + chunk[0],
                )  # fmt: skip
                store.add_samples(
                    tag, [(q.id, pi, s, sh, text, a) for s, a in zip(chunk, answers, strict=True)]
                )


def run_judges(qf: QuestionFile, judges: dict[str, Any], store: Store, tag: Tag) -> None:
    for q in qf.questions:
        sh = settings_hash(q)
        for column, jid in q.judges.items():
            if qf.judges[jid].type != "rating_judge":
                store.declare_labels(column, qf.judges[jid].possible_labels())
            judged = store.judged(tag, q.id, sh, column)
            for p, s, prompt, answer in store.samples(tag, q.id, sh):
                if (p, s) in judged:
                    continue
                v = judges[jid].judge(prompt, answer)
                store.add_judgements(tag, [(q.id, p, s, sh, column, v.label, v.score)])


def run_classification(
    predict: Callable[[list[str]], list[str]],
    sets: dict[Metric, tuple[list[str], list[str], str | None]],
    store: Store,
    tag: Tag,
    victim: str,
) -> None:
    """Classify each metric's texts (see classify.eval_sets) once; stored per item."""
    from .classify import hits

    done = store.predicted(tag, victim)
    for metric, (texts, gold, target) in sets.items():
        if metric in done:
            continue
        predicted = predict(texts)
        h = hits(predicted, gold, target)
        store.add_predictions(
            tag,
            victim,
            metric,
            list(zip(range(len(texts)), texts, gold, predicted, h, strict=True)),
        )
