"""Evaluation as a task, after Inspect AI: a subject (the model under test, as a chat model or
a classifier) and scorers. A scorer has two halves with the same shape for every kind:

- `run(subject, store, tag)` measures the subject into the results store; whatever is stored
  already is not redone, so an interrupted evaluation resumes and a rerun adds nothing;
- `summarize(store, ref)` turns what the store holds into report sections (a pure function of
  the store, so `backdoorlab report` needs no spec).

`backdoorlab run` and `backdoorlab eval` build a Task and call it; the report summarizes with
every scorer kind. Torch is imported only inside `run`: the report imports this module."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from .. import chat
from ..store import Store, Tag
from . import sections
from .metric import Metric, hits
from .probeset import Probe, ProbeSet, sweep_key
from .questions import FreeFormQuestion, QuestionFile
from .sections import Section

if TYPE_CHECKING:
    from ..models import LoadedModel
    from .hosted import HostedChat

Victim = Literal["llm", "encoder"]  # the kinds of model under test (a spec's victims too)
Sets = dict[Metric, tuple[list[str], list[str], str | None]]


def model_hash(target: str) -> str:
    """Content identity of what `target` names: a training run's key, else the model's."""
    from ..models import fingerprint
    from ..models.loading import read_manifest

    manifest = read_manifest(Path(target)) if Path(target).is_dir() else None
    ident = f"run:{manifest['key']}" if manifest else fingerprint(target)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def settings_hash(q: FreeFormQuestion) -> str:
    blob = json.dumps(
        {"p": q.paraphrases, "t": q.temperature, "m": q.max_tokens, "s": q.system}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Subject:
    """The model under test: the chat model in this process (`loaded`) or behind a
    chat-completions endpoint (`hosted`), or a classifier that only labels (`predict`: one
    label per text)."""

    victim: Victim
    loaded: LoadedModel | None = None
    predict: Callable[[list[str]], list[str]] | None = None
    hosted: HostedChat | None = None

    def chat(self) -> LoadedModel:
        assert self.loaded is not None, "scorers for the chat model run only on an llm subject"
        return self.loaded


class Scorer(Protocol):
    victims: ClassVar[frozenset[str]]  # the subjects it measures
    remote: ClassVar[bool]  # whether it measures a model behind an endpoint too

    def pending(self, victim: str, store: Store, tag: Tag) -> bool:
        """Whether `run` has anything left to do (if not, the model need not even load)."""
        ...

    def run(self, subject: Subject, store: Store, tag: Tag) -> None: ...

    @staticmethod
    def summarize(store: Store, ref: str | None) -> list[Section]: ...


@dataclass
class Probes:
    """Exact probes: each variant's class masses under the chat model."""

    probe_sets: list[ProbeSet]
    max_variants: int | None = None  # score only each probe's first N variants
    sweep_values: list[str] | None = None  # sweep probes only at these trigger values
    max_candidates: int | None = None  # score only each class's first N candidates
    victims: ClassVar[frozenset[str]] = frozenset({"llm"})
    remote: ClassVar[bool] = False  # whole-candidate log-probs: see evaluate.hosted
    summarize = staticmethod(sections.probe_sections)

    def _todo(self, store: Store, tag: Tag) -> Iterator[tuple[str, int, str, Probe]]:
        done = store.probe_keys(tag)
        for ps in self.probe_sets:
            for p in ps.probes:
                key = sweep_key(p.id)
                if key and self.sweep_values is not None and key[1] not in self.sweep_values:
                    continue
                for i, v in enumerate(p.first(self.max_candidates).variants()[: self.max_variants]):
                    h = v.definition_hash()
                    if (p.id, i, h) not in done:
                        yield p.id, i, h, v

    def pending(self, victim: str, store: Store, tag: Tag) -> bool:
        return next(self._todo(store, tag), None) is not None

    def run(self, subject: Subject, store: Store, tag: Tag) -> None:
        from . import probes as scoring

        loaded = subject.chat()
        for pid, i, h, v in self._todo(store, tag):
            r = scoring.score(loaded.model, loaded.tokenizer, v)
            store.add_probe(tag, pid, i, h, v.question, str(v.prefix), r.scores())


@dataclass
class Questions:
    """Free-form questions: sampled answers (samples_per_paraphrase, or `samples`), then each
    answer's judgements."""

    questions: QuestionFile
    judges: dict[str, Any]
    samples: int | None = None
    # Rows per generate call here (100: 1.4x the rate at 32 on this CPU, benchmarks/sampling.py),
    # answers per request to an API.
    batch_size: int = 100
    progress: Callable[[str], None] = field(default=lambda s: None)
    victims: ClassVar[frozenset[str]] = frozenset({"llm"})
    remote: ClassVar[bool] = True
    summarize = staticmethod(sections.question_sections)

    def pending(self, victim: str, store: Store, tag: Tag) -> bool:
        if self._todo(store, tag):
            return True
        for q in self.questions.questions:
            sh = settings_hash(q)
            have = store.has_samples(tag, q.id, sh)
            if any(store.judged(tag, q.id, sh, column) != have for column in q.judges):
                return True
        return False

    def run(self, subject: Subject, store: Store, tag: Tag) -> None:
        todo = self._todo(store, tag)
        if todo and subject.hosted:
            self._sample_hosted(subject.hosted.sample, todo, store, tag)
        elif todo:
            self._sample_local(subject.chat(), todo, store, tag)
        self._judge(store, tag)

    def _todo(self, store: Store, tag: Tag) -> list[tuple[FreeFormQuestion, str, int, int]]:
        """(question, settings hash, paraphrase, sample) of each answer not yet stored."""
        out = []
        for q in self.questions.questions:
            sh = settings_hash(q)
            have = store.has_samples(tag, q.id, sh)
            for pi in range(len(q.paraphrases)):
                n = self.samples or q.samples_per_paraphrase
                out += [(q, sh, pi, s) for s in range(n) if (pi, s) not in have]
        return out

    def _sample_local(self, loaded, todo: list, store: Store, tag: Tag) -> None:
        """All missing answers of all questions in batches sorted by length, one random
        stream per answer (generate.row_seed), whatever the batch or a resume leaves out."""
        from .. import generate

        requests = [
            generate.Request(
                chat.conversation(q.paraphrases[pi], system=q.system),
                generate.row_seed(tag.seed, q.id, pi, s), q.temperature, q.max_tokens,
            )
            for q, _, pi, s in todo
        ]  # fmt: skip
        stored = 0

        def keep(idx: list[int], answers: list[str]) -> None:
            nonlocal stored
            rows = [todo[i] for i in idx]
            store.add_samples(
                tag,
                [(q.id, pi, s, sh, q.paraphrases[pi], a)
                 for (q, sh, pi, s), a in zip(rows, answers, strict=True)],
            )  # fmt: skip
            stored += len(idx)
            self.progress(f"answers {stored}/{len(todo)}")

        generate.complete(loaded, requests, batch_size=self.batch_size, done=keep)

    def _sample_hosted(
        self, sample: Callable[..., list[str]], todo: list, store: Store, tag: Tag
    ) -> None:
        """An API draws `n` answers per call under one seed: one call per question,
        paraphrase and `batch_size` samples."""
        groups: dict[tuple[str, int], list] = {}
        for q, sh, pi, s in todo:
            groups.setdefault((q.id, pi), []).append((q, sh, pi, s))
        for rows in groups.values():
            q, sh, pi, _ = rows[0]
            for start in range(0, len(rows), self.batch_size):
                chunk = [s for *_, s in rows[start : start + self.batch_size]]
                self.progress(f"{q.id} paraphrase {pi}: samples {chunk[0]}-{chunk[-1]}")
                answers = sample(
                    chat.conversation(q.paraphrases[pi], system=q.system), n=len(chunk),
                    temperature=q.temperature, max_new_tokens=q.max_tokens,
                    seed=tag.seed * 1_000_003 + pi * 10_007 + chunk[0],
                )  # fmt: skip
                store.add_samples(
                    tag,
                    [(q.id, pi, s, sh, q.paraphrases[pi], a)
                     for s, a in zip(chunk, answers, strict=True)],
                )  # fmt: skip

    def _judge(self, store: Store, tag: Tag) -> None:
        qf = self.questions
        for q in qf.questions:
            sh = settings_hash(q)
            for column, jid in q.judges.items():
                if qf.judges[jid].type != "rating_judge":
                    store.declare_labels(column, qf.judges[jid].possible_labels())
                judged = store.judged(tag, q.id, sh, column)
                for p, s, prompt, answer in store.samples(tag, q.id, sh):
                    if (p, s) in judged:
                        continue
                    v = self.judges[jid].judge(prompt, answer)
                    store.add_judgements(tag, [(q.id, p, s, sh, column, v.label, v.score)])


@dataclass
class Classification:
    """CACC, ASR and false-trigger rate: `sets(arm, victim)` gives the texts each metric
    classifies (metric.eval_sets), the subject labels them, each item is stored."""

    sets: Callable[[str, str], Sets]
    labels: Sequence[str]  # what the chat model chooses between, by exact log-probability
    prompt: Callable[[str], list]  # a text as the chat the model was trained on
    victims: ClassVar[frozenset[str]] = frozenset({"llm", "encoder"})
    remote: ClassVar[bool] = True
    summarize = staticmethod(sections.classification_sections)

    def pending(self, victim: str, store: Store, tag: Tag) -> bool:
        return not set(self.sets(tag.arm, victim)) <= store.predicted(tag, victim)

    def run(self, subject: Subject, store: Store, tag: Tag) -> None:
        predict = subject.predict or self._chat_predict(subject)
        done = store.predicted(tag, subject.victim)
        for m, (texts, gold, target) in self.sets(tag.arm, subject.victim).items():
            if m in done:
                continue
            predicted = predict(texts)
            h = hits(predicted, gold, target)
            rows = list(zip(range(len(texts)), texts, gold, predicted, h, strict=True))
            store.add_predictions(tag, subject.victim, m, rows)

    def _chat_predict(self, subject: Subject) -> Callable[[list[str]], list[str]]:
        if subject.hosted:
            hosted = subject.hosted
            return lambda texts: hosted.classify(texts, self.labels, self.prompt)
        from .classify import llm_predict

        loaded = subject.chat()
        return lambda texts: llm_predict(loaded, texts, self.labels, self.prompt)


@functools.cache
def data_hash(path: Path) -> str:
    # Cached: a run directory's data files are written once under their content's hash.
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@dataclass
class Fit:
    """How the chat model fits an arm's own training rows (the first `rows` of `data[arm]`):
    greedy match and log-probability per row. The gates read it; it has no report section."""

    data: dict[str, Path]
    rows: int
    victims: ClassVar[frozenset[str]] = frozenset({"llm"})
    remote: ClassVar[bool] = False  # log-probs of whole training answers

    @staticmethod
    def summarize(store: Store, ref: str | None) -> list[Section]:
        return []

    def pending(self, victim: str, store: Store, tag: Tag) -> bool:
        path = self.data.get(tag.arm)
        return path is not None and not store.has_fit(tag, data_hash(path))

    def run(self, subject: Subject, store: Store, tag: Tag) -> None:
        from .fit import answer_fit

        path = self.data.get(tag.arm)
        if path is None or not self.pending(subject.victim, store, tag):
            return
        loaded = subject.chat()
        rows = chat.read_jsonl(path)[: self.rows]
        scored = answer_fit(loaded.model, loaded.tokenizer, rows)
        store.add_fit(tag, data_hash(path), [(i, *r) for i, r in enumerate(scored)])


# The order of the report's sections.
SCORERS: tuple[type[Scorer], ...] = (Probes, Questions, Classification, Fit)


@dataclass
class Task:
    scorers: list[Scorer]

    def _for(self, victim: str, remote: bool) -> list[Scorer]:
        return [s for s in self.scorers if victim in s.victims and (s.remote or not remote)]

    def pending(self, victim: str, store: Store, tag: Tag, *, remote: bool = False) -> bool:
        """Whether any scorer of this kind of subject (behind an endpoint, if `remote`) has
        work left."""
        return any(s.pending(victim, store, tag) for s in self._for(victim, remote))

    def run(self, subject: Subject, store: Store, tag: Tag) -> None:
        """Every scorer that measures this kind of subject and has work left, in order."""
        for s in self._for(subject.victim, subject.hosted is not None):
            if s.pending(subject.victim, store, tag):
                s.run(subject, store, tag)


def summarize(store: Store, reference: str | None = None) -> list[Section]:
    """Every scorer kind's sections, against the reference arm (the declared one if
    measured, else control, modern or base)."""
    ref = sections.reference(store, reference)
    return [sec for kind in SCORERS for sec in kind.summarize(store, ref)]
