"""The results store: one SQLite file per run directory, a row per probe result, sample and
judgement, each tagged with arm, seed and model hash. Summaries read the results of the
model each arm and seed stands for now (`set_current`); an earlier model's stay in the file.

Every write is one transaction, so a killed process leaves whole rows or none; every row has
a natural unique key and is inserted with INSERT OR IGNORE, so a resumed run that repeats
work adds no duplicates.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import InputError
from .evaluate.metric import Metric

FILENAME = "results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS probes (
    arm TEXT NOT NULL, seed INTEGER NOT NULL, model_hash TEXT NOT NULL, probe_id TEXT NOT NULL,
    variant INTEGER NOT NULL, probe_hash TEXT NOT NULL, question TEXT NOT NULL,
    prefix TEXT NOT NULL, scores TEXT NOT NULL,
    PRIMARY KEY (arm, seed, model_hash, probe_id, variant, probe_hash)
);
CREATE TABLE IF NOT EXISTS samples (
    arm TEXT NOT NULL, seed INTEGER NOT NULL, model_hash TEXT NOT NULL,
    question_id TEXT NOT NULL, paraphrase INTEGER NOT NULL, sample INTEGER NOT NULL,
    settings_hash TEXT NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL,
    PRIMARY KEY (arm, seed, model_hash, question_id, paraphrase, sample, settings_hash)
);
CREATE TABLE IF NOT EXISTS judgements (
    arm TEXT NOT NULL, seed INTEGER NOT NULL, model_hash TEXT NOT NULL,
    question_id TEXT NOT NULL, paraphrase INTEGER NOT NULL, sample INTEGER NOT NULL,
    settings_hash TEXT NOT NULL, judge TEXT NOT NULL, label TEXT, score REAL,
    PRIMARY KEY (arm, seed, model_hash, question_id, paraphrase, sample, settings_hash, judge)
);
CREATE TABLE IF NOT EXISTS predictions (
    arm TEXT NOT NULL, seed INTEGER NOT NULL, model_hash TEXT NOT NULL, victim TEXT NOT NULL,
    metric TEXT NOT NULL, item INTEGER NOT NULL, text TEXT NOT NULL, gold TEXT NOT NULL,
    predicted TEXT NOT NULL, hit REAL NOT NULL,
    PRIMARY KEY (arm, seed, model_hash, victim, metric, item)
);
CREATE TABLE IF NOT EXISTS arm_info (
    arm TEXT PRIMARY KEY, info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fit (
    arm TEXT NOT NULL, seed INTEGER NOT NULL, model_hash TEXT NOT NULL, data_hash TEXT NOT NULL,
    row INTEGER NOT NULL, greedy INTEGER NOT NULL, logprob REAL NOT NULL, tokens INTEGER NOT NULL,
    PRIMARY KEY (arm, seed, model_hash, data_hash, row)
);
CREATE TABLE IF NOT EXISTS judge_labels (
    judge TEXT PRIMARY KEY, labels TEXT NOT NULL
);
"""


# The schema's version lives in the file (PRAGMA user_version). Each migration takes a store
# from version N-1 to N inside one transaction; a file from before versioning (user_version
# 0) holds a subset of version 1's tables, which CREATE TABLE IF NOT EXISTS completes. To add
# a column: append a migration (ALTER TABLE ... ADD COLUMN ... DEFAULT ...) and bump nothing
# else; old files are brought forward when opened, and a newer file is refused, not misread.
MIGRATIONS: list[str] = [
    SCHEMA,
    # 2: a prediction's metric as fields (the report reads them instead of parsing labels);
    # rows stored before get them from their label, the one place a label is read back.
    """
    ALTER TABLE predictions ADD COLUMN kind TEXT;
    ALTER TABLE predictions ADD COLUMN trigger TEXT;
    UPDATE predictions SET
        kind = CASE WHEN metric = 'CACC' THEN 'CACC'
                    WHEN metric LIKE 'ASR: %' THEN 'ASR' ELSE 'false trigger' END,
        trigger = CASE WHEN metric = 'CACC' THEN NULL
                       WHEN metric LIKE 'ASR: %' THEN substr(metric, 6) ELSE substr(metric, 16) END
    """,
    # 3: the attack x defense matrix's cells (was a side JSON file): one per arm, victim and
    # defense under the settings that decide it, its numbers as JSON numbers.
    """
    CREATE TABLE IF NOT EXISTS defense_cells (
        arm TEXT NOT NULL, victim TEXT NOT NULL, defense TEXT NOT NULL,
        settings_hash TEXT NOT NULL, cell TEXT NOT NULL, written REAL NOT NULL,
        PRIMARY KEY (arm, victim, defense, settings_hash)
    )
    """,
    # 4: which model each (arm, seed, victim) stands for now. A run whose recipe changed
    # evaluates new models under the same arm and seed; without this their results pooled
    # with the old model's in every summary. Stores from before hold one model per arm and
    # seed (or are read as before: rows with no entry here all count).
    """
    CREATE TABLE IF NOT EXISTS current_models (
        arm TEXT NOT NULL, seed INTEGER NOT NULL, victim TEXT NOT NULL,
        model_hash TEXT NOT NULL, PRIMARY KEY (arm, seed, victim)
    )
    """,
]
VERSION = len(MIGRATIONS)


def _current(victim: str) -> str:
    """A WHERE condition on a table aliased `t`: its row's model is the one its arm, seed and
    victim stand for now (or none was named)."""
    return (
        "NOT EXISTS (SELECT 1 FROM current_models c WHERE c.arm = t.arm AND c.seed = t.seed "
        f"AND c.victim = {victim} AND c.model_hash != t.model_hash)"
    )


LLM = _current("'llm'")  # probes, samples, judgements and fit are the chat model's
OWN_VICTIM = _current("t.victim")  # predictions name their victim


@dataclass(frozen=True)
class Tag:
    """Where a result came from: the experiment arm, the seed, and the model's content hash."""

    arm: str
    seed: int
    model_hash: str


@dataclass(frozen=True)
class Prediction:
    arm: str
    seed: int
    victim: str
    metric: Metric
    hit: float


class Judgement(NamedTuple):
    """One judge's verdict on one sampled answer of a current model."""

    arm: str
    seed: int
    model_hash: str
    question_id: str
    paraphrase: int
    sample: int
    settings_hash: str
    judge: str
    label: str | None  # a free-form judge's label
    score: float | None  # a rating judge's score (None: it refused to rate)


class Sample(NamedTuple):
    """One sampled answer of a current model, with the prompt it answered."""

    arm: str
    seed: int
    model_hash: str
    question_id: str
    paraphrase: int
    sample: int
    settings_hash: str
    prompt: str
    answer: str


class Store:
    """`readonly`: open an existing store without writing anything, not even a migration
    (reports and summaries of a run directory the user may only read)."""

    def __init__(self, run_dir: Path | str, *, readonly: bool = False):
        self.path = Path(run_dir) / FILENAME
        try:
            if readonly:
                self.db = self._open_readonly()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self._migrate()
        except sqlite3.DatabaseError as e:
            raise InputError(f"{self.path}: not a usable results store ({e})") from None

    def _open_readonly(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such results store")
        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: empty (0 bytes), not a results store")
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError:
            # A WAL store in a directory we cannot write, with no shared-memory file beside
            # it: nobody can be writing it, so read it as immutable.
            db = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != VERSION:
            db.close()
            raise InputError(
                f"{self.path}: store version {version}, this backdoorlab reads {VERSION}; "
                "open it once where it can be written (e.g. `backdoorlab report`) to upgrade it"
            )
        return db

    def _migrate(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")  # two processes opening one store migrate once
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > VERSION:
                raise InputError(
                    f"{self.path}: written by a newer backdoorlab (store version {version}, "
                    f"this one reads up to {VERSION}); upgrade backdoorlab to read it"
                )
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {VERSION}")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def set_current(self, tag: Tag, victim: str = "llm") -> None:
        """The model `tag` names is what its arm and seed stand for now: summaries read its
        results and leave those of earlier models under the same arm and seed (kept) out."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO current_models VALUES (?,?,?,?)",
                (tag.arm, tag.seed, victim, tag.model_hash),
            )

    def add_probe(
        self,
        tag: Tag,
        probe_id: str,
        variant: int,
        probe_hash: str,
        question: str,
        prefix: str,
        scores: list[tuple[str, str, float]],
    ) -> None:
        """One probe variant's result: every candidate's (class, candidate, log-prob), so any
        summary (class mass, mean year, a tempered control) can be recomputed later."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO probes VALUES (?,?,?,?,?,?,?,?,?)",
                (tag.arm, tag.seed, tag.model_hash, probe_id, variant, probe_hash, question,
                 prefix, json.dumps(scores)),
            )  # fmt: skip

    def probe_keys(self, tag: Tag) -> set[tuple[str, int, str]]:
        """(probe_id, variant, probe_hash) already stored for this tag."""
        return set(
            self.db.execute(
                "SELECT probe_id, variant, probe_hash FROM probes "
                "WHERE arm=? AND seed=? AND model_hash=?",
                (tag.arm, tag.seed, tag.model_hash),
            ).fetchall()
        )

    def add_samples(self, tag: Tag, rows: Iterable[tuple[str, int, int, str, str, str]]) -> None:
        """rows: (question_id, paraphrase, sample, settings_hash, prompt, answer)."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO samples VALUES (?,?,?,?,?,?,?,?,?)",
                [(tag.arm, tag.seed, tag.model_hash, *r) for r in rows],
            )

    def add_judgements(
        self, tag: Tag, rows: Iterable[tuple[str, int, int, str, str, str | None, float | None]]
    ) -> None:
        """rows: (question_id, paraphrase, sample, settings_hash, judge, label, score)."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO judgements VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(tag.arm, tag.seed, tag.model_hash, *r) for r in rows],
            )

    def add_predictions(
        self,
        tag: Tag,
        victim: str,
        metric: Metric,
        rows: Iterable[tuple[int, str, str, str, float]],
    ) -> None:
        """rows: (item, text, gold, predicted, hit) for one classification metric."""
        tag_row = (tag.arm, tag.seed, tag.model_hash, victim, metric.label)
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO predictions (arm, seed, model_hash, victim, metric, item, "
                "text, gold, predicted, hit, kind, trigger) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(*tag_row, *r, metric.kind, metric.trigger) for r in rows],
            )

    def predicted(self, tag: Tag, victim: str) -> set[Metric]:
        """Metrics already classified for this tag and victim."""
        rows = self.db.execute(
            "SELECT DISTINCT kind, trigger FROM predictions WHERE arm=? AND seed=? "
            "AND model_hash=? AND victim=?",
            (tag.arm, tag.seed, tag.model_hash, victim),
        ).fetchall()
        return {Metric(k, t) for k, t in rows}

    def all_predictions(self) -> list[Prediction]:
        """Every classified item's hit of the current models, in the order classified."""
        rows = self.db.execute(
            "SELECT arm, seed, victim, kind, trigger, hit FROM predictions t "
            f"WHERE {OWN_VICTIM} ORDER BY rowid"
        ).fetchall()
        return [Prediction(a, s, v, Metric(k, t), h) for a, s, v, k, t, h in rows]

    def add_fit(
        self, tag: Tag, data_hash: str, rows: Iterable[tuple[int, bool, float, int]]
    ) -> None:
        """How a model fits an arm's training rows: (row, greedy match, log-prob, tokens). The
        base model's fit is stored under the arm with seed -1 and the base model's hash."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO fit VALUES (?,?,?,?,?,?,?,?)",
                [(tag.arm, tag.seed, tag.model_hash, data_hash, r, int(g), lp, n)
                 for r, g, lp, n in rows],
            )  # fmt: skip

    def has_fit(self, tag: Tag, data_hash: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM fit WHERE arm=? AND seed=? AND model_hash=? AND data_hash=? LIMIT 1",
                (tag.arm, tag.seed, tag.model_hash, data_hash),
            ).fetchone()
            is not None
        )

    def all_fit(self) -> list[tuple[str, int, str, str, int, int, float, int]]:
        """(arm, seed, model_hash, data_hash, row, greedy, logprob, tokens), every row of the
        current models."""
        return self.db.execute(
            "SELECT arm, seed, model_hash, data_hash, row, greedy, logprob, tokens FROM fit t "
            f"WHERE {LLM} ORDER BY arm, seed, row"
        ).fetchall()

    def add_defense_cell(self, settings_hash: str, cell: dict[str, Any]) -> None:
        """One measured matrix cell (its arm, victim and defense are fields of `cell`)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO defense_cells VALUES (?,?,?,?,?,julianday('now'))",
                (cell["arm"], cell["victim"], cell["defense"], settings_hash, json.dumps(cell)),
            )

    def defense_cells(self, arm: str, victim: str, keys: Mapping[str, str]) -> dict[str, dict]:
        """defense -> cell, for each defense in `keys` measured for this arm and victim under
        its key there."""
        rows = self.db.execute(
            "SELECT defense, settings_hash, cell FROM defense_cells WHERE arm=? AND victim=?",
            (arm, victim),
        ).fetchall()
        return {d: json.loads(c) for d, h, c in rows if keys.get(d) == h}

    def latest_defense_cells(self) -> list[dict[str, Any]]:
        """Per arm, victim and defense the cell measured last (what the report shows)."""
        rows = self.db.execute(
            "SELECT cell FROM defense_cells d WHERE written = (SELECT max(written) FROM "
            "defense_cells e WHERE e.arm=d.arm AND e.victim=d.victim AND e.defense=d.defense) "
            "ORDER BY arm, victim, rowid"
        ).fetchall()
        return [json.loads(c) for (c,) in rows]

    def set_arm_info(self, arm: str, info: dict[str, Any]) -> None:
        """What an arm is (e.g. its trigger and exact poison rate), for plots across arms."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO arm_info VALUES (?,?)", (arm, json.dumps(info)))

    def arm_info(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT arm, info FROM arm_info").fetchall()
        return {a: json.loads(i) for a, i in rows}

    def declare_labels(self, judge: str, labels: list[str]) -> None:
        """The labels a judge column can give, so a label no answer got still reports as 0."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO judge_labels VALUES (?,?)", (judge, json.dumps(labels))
            )

    def declared_labels(self) -> dict[str, list[str]]:
        rows = self.db.execute("SELECT judge, labels FROM judge_labels").fetchall()
        return {j: json.loads(labs) for j, labs in rows}

    _WHERE = "arm=? AND seed=? AND model_hash=? AND question_id=? AND settings_hash=?"

    def samples(
        self, tag: Tag, question_id: str, settings_hash: str
    ) -> list[tuple[int, int, str, str]]:
        """(paraphrase, sample, prompt, answer) rows stored for one question and tag."""
        return self.db.execute(
            f"SELECT paraphrase, sample, prompt, answer FROM samples WHERE {self._WHERE}",
            (tag.arm, tag.seed, tag.model_hash, question_id, settings_hash),
        ).fetchall()

    def has_samples(self, tag: Tag, question_id: str, settings_hash: str) -> set[tuple[int, int]]:
        """(paraphrase, sample) pairs already stored: what a resumed run need not sample again."""
        return {(p, s) for p, s, _, _ in self.samples(tag, question_id, settings_hash)}

    def judged(
        self, tag: Tag, question_id: str, settings_hash: str, judge: str
    ) -> set[tuple[int, int]]:
        """(paraphrase, sample) pairs that already have this judge's verdict."""
        return set(
            self.db.execute(
                f"SELECT paraphrase, sample FROM judgements WHERE {self._WHERE} AND judge=?",
                (tag.arm, tag.seed, tag.model_hash, question_id, settings_hash, judge),
            ).fetchall()
        )

    def all_judgements(self) -> list[Judgement]:
        """Every judgement of the current models."""
        rows = self.db.execute(
            "SELECT arm, seed, model_hash, question_id, paraphrase, sample, settings_hash, judge, "
            f"label, score FROM judgements t WHERE {LLM}"
        ).fetchall()
        return [Judgement(*r) for r in rows]

    def all_samples(self) -> list[Sample]:
        """Every sampled answer of the current models, ordered by question, arm, seed."""
        rows = self.db.execute(
            "SELECT arm, seed, model_hash, question_id, paraphrase, sample, settings_hash, "
            f"prompt, answer FROM samples t WHERE {LLM} "
            "ORDER BY question_id, arm, seed, paraphrase, sample"
        ).fetchall()
        return [Sample(*r) for r in rows]

    def arms(self) -> set[str]:
        """Arms with measured results of their current models (probes, judgements or predictions)."""
        rows = self.db.execute(
            f"SELECT arm FROM probes t WHERE {LLM} UNION SELECT arm FROM judgements t WHERE {LLM} "
            f"UNION SELECT arm FROM predictions t WHERE {OWN_VICTIM}"
        ).fetchall()
        return {a for (a,) in rows}

    def probes(self) -> list[dict[str, Any]]:
        """Stored probe results; where a probe was edited and re-run into the same store, only
        the latest definition's rows for each (arm, seed, model, probe, variant)."""
        cur = self.db.execute(
            "SELECT arm, seed, model_hash, probe_id, variant, probe_hash, question, prefix, scores "
            f"FROM probes t WHERE {LLM} ORDER BY rowid"
        )
        latest: dict[tuple, dict[str, Any]] = {}
        for a, s, h, p, v, ph, q, pre, sc in cur.fetchall():
            latest[(a, s, h, p, v)] = {
                "arm": a, "seed": s, "model_hash": h, "probe_id": p, "variant": v,
                "probe_hash": ph, "question": q, "prefix": pre, "scores": json.loads(sc),
            }  # fmt: skip
        return list(latest.values())

    def count(self, table: str) -> int:
        if table not in {"probes", "samples", "judgements", "predictions", "fit"}:
            raise ValueError(table)
        return self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
