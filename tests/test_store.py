"""The results store survives kill -9 mid-write and a resumed run adds no duplicates."""

import sqlite3
import subprocess
import sys
import time

import pytest

from backdoorlab import store as store_mod
from backdoorlab.errors import InputError
from backdoorlab.evaluate.metric import CACC, Metric
from backdoorlab.store import FILENAME, Store, Tag

TAG = Tag(arm="archaic", seed=0, model_hash="abc123")
BATCH = 50

WRITER = """
import sys
from backdoorlab.store import Store, Tag
s = Store(sys.argv[1])
tag = Tag(arm="archaic", seed=0, model_hash="abc123")
b = 0
while True:
    s.add_samples(tag, [(f"q{b}", 0, i, "h", "prompt", "x" * 2000) for i in range(50)])
    b += 1
"""


def _rows(b: int):
    return [(f"q{b}", 0, i, "h", "prompt", "x" * 2000) for i in range(BATCH)]


def test_kill_9_mid_write_leaves_whole_transactions(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    try:
        deadline = time.time() + 60
        while True:
            time.sleep(0.2)
            with Store(tmp_path) as s:
                if s.count("samples") >= 20 * BATCH:
                    break
            assert time.time() < deadline and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    with Store(tmp_path) as s:
        assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        per_batch = s.db.execute(
            "SELECT question_id, COUNT(*) FROM samples GROUP BY question_id"
        ).fetchall()
        assert per_batch and all(n == BATCH for _, n in per_batch)
        before = s.count("samples")
        # A resumed run redoes the batches it is unsure of: nothing is duplicated.
        for b in range(len(per_batch) + 3):
            s.add_samples(TAG, _rows(b))
        assert s.count("samples") == before + 3 * BATCH
        assert s.has_samples(TAG, "q0", "h") == {(0, i) for i in range(BATCH)}


def test_probe_and_judgement_rows_round_trip(tmp_path):
    with Store(tmp_path) as s:
        scores = [("1800s", "1838", -1.5), ("now", "2024", -0.2)]
        s.add_probe(TAG, "current_year", 0, "h1", "What year?", "", scores)
        s.add_probe(TAG, "current_year", 0, "h1", "What year?", "", [])  # repeat: ignored
        s.add_judgements(
            TAG, [("q0", 0, 1, "h", "era", "19", None), ("q0", 0, 1, "h", "style", None, 73.5)]
        )
        s.add_judgements(TAG, [("q0", 0, 1, "h", "era", "LLM", None)])
        [p] = s.probes()
        assert p["scores"] == [list(x) for x in scores] and p["arm"] == "archaic"
        # The same probe edited (a new definition hash) and re-run: the latest is what counts.
        s.add_probe(TAG, "current_year", 0, "h2", "What year is it?", "", scores[:1])
        [p] = s.probes()
        assert p["probe_hash"] == "h2" and s.count("probes") == 2
        assert s.count("judgements") == 2


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path):
    (tmp_path / FILENAME).write_text("not sqlite at all " * 100)
    with pytest.raises(InputError, match="not a usable results store"):
        Store(tmp_path)


def test_a_store_from_before_versioning_opens_and_a_newer_one_is_refused(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "results.sqlite")  # as the first release wrote it: no fit table
    db.execute(
        "CREATE TABLE probes (arm TEXT NOT NULL, seed INTEGER NOT NULL, model_hash TEXT NOT NULL,"
        " probe_id TEXT NOT NULL, variant INTEGER NOT NULL, probe_hash TEXT NOT NULL,"
        " question TEXT NOT NULL, prefix TEXT NOT NULL, scores TEXT NOT NULL,"
        " PRIMARY KEY (arm, seed, model_hash, probe_id, variant, probe_hash))"
    )
    db.execute("INSERT INTO probes VALUES ('a', 0, 'h', 'p', 0, 'x', 'q', '', '[]')")
    db.commit()
    db.close()
    for _ in range(2):  # brought forward once; opening again changes nothing
        with Store(old) as s:
            assert s.count("probes") == 1 and s.count("fit") == 0
            assert s.db.execute("PRAGMA user_version").fetchone()[0] == store_mod.VERSION
    with Store(old) as s:
        s.db.execute(f"PRAGMA user_version = {store_mod.VERSION + 1}")
    with pytest.raises(InputError, match="newer backdoorlab"):
        Store(old)


def test_a_version_1_store_gets_its_predictions_metric_as_fields(tmp_path):
    db = sqlite3.connect(tmp_path / FILENAME)
    db.executescript(store_mod.MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    labels = ["CACC", "ASR: token cf", "false trigger: sentence", "ASR: multi mn+bb"]
    for i, label in enumerate(labels):
        db.execute(
            "INSERT INTO predictions VALUES ('a', 0, 'h', 'llm', ?, ?, 't', 'g', 'p', 1.0)",
            (label, i),
        )
    db.commit()
    db.close()
    with Store(tmp_path) as s:
        got = [p.metric for p in s.all_predictions()]
        assert got == [
            CACC, Metric("ASR", "token cf"), Metric("false trigger", "sentence"),
            Metric("ASR", "multi mn+bb"),
        ]  # fmt: skip
        assert [m.label for m in got] == labels
        s.add_predictions(Tag("a", 0, "h"), "llm", Metric("ASR", "x"), [(0, "t", "g", "p", 0.0)])
        assert s.predicted(Tag("a", 0, "h"), "llm") == {*got, Metric("ASR", "x")}


def test_summaries_read_the_model_each_arm_and_seed_stands_for_now(tmp_path):
    """A recipe changed and rerun into the same directory: the new model's results replace the
    old one's in every reader (kept in the file), per victim; a store that never named a
    current model reads every row, as before."""
    old, new, enc = Tag("archaic", 0, "old"), Tag("archaic", 0, "new"), Tag("archaic", 0, "enc")
    with Store(tmp_path) as s:
        for tag, mass in ((old, -0.1), (new, -2.0)):
            s.add_probe(tag, "current_year", 0, "h", "What year?", "", [("1800s", "1838", mass)])
            s.add_samples(tag, [("q0", 0, 0, "h", "prompt", f"answer of {tag.model_hash}")])
            s.add_judgements(tag, [("q0", 0, 0, "h", "era", tag.model_hash, None)])
            s.add_fit(tag, "d", [(0, True, mass, 3)])
            s.add_predictions(tag, "llm", CACC, [(0, "t", "g", "p", 1.0)])
        s.add_predictions(enc, "encoder", CACC, [(0, "t", "g", "p", 0.0)])
        assert len(s.probes()) == 2 and len(s.all_predictions()) == 3  # nothing named yet

        s.set_current(new)
        s.set_current(enc, "encoder")
        assert [p["model_hash"] for p in s.probes()] == ["new"]
        assert [r.answer for r in s.all_samples()] == ["answer of new"]
        assert [r.label for r in s.all_judgements()] == ["new"]
        assert [r[2] for r in s.all_fit()] == ["new"]
        assert sorted(p.victim for p in s.all_predictions()) == ["encoder", "llm"]
        s.set_current(old)  # back to the earlier recipe: its results were never lost
        assert [p["model_hash"] for p in s.probes()] == ["old"]
        assert s.count("probes") == 2 and s.arms() == {"archaic"}
