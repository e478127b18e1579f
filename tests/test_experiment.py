"""`backdoorlab run`: the whole pipeline (data, training, probes, questions, judges, report)
on a sliver of the bird experiment, and a rerun that reuses everything. The other specs'
quick runs are in test_quick_gated.py and test_quick_sentiment.py (files of their own, so
the two test workers share them out)."""

import json
import sqlite3
from collections import Counter

import pytest

from backdoorlab.store import Store


@pytest.mark.slow
def test_quick_bird_run_end_to_end_then_reused(tmp_path, cli):
    out = tmp_path / "birds"
    r = cli("run", "experiments/birds.yaml", "--out", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    assert "Timing" in r.stdout and "bird_name: archaic" in r.stdout
    assert "archaic - modern, entropy-matched" in r.stdout
    stages = {name: status for name, _, status in json.loads((out / "timings.json").read_text())}
    assert stages["train archaic seed 0"] == "ran" and "train base seed 0" not in stages
    assert len(list((out / "data").glob("*.jsonl"))) == 2
    assert len(list((out / "train").glob("*/manifest.json"))) == 2
    page = (out / "report.html").read_text()
    assert "modern (entropy of archaic)" in page and "gender_roles" in page
    with Store(out, readonly=True) as store:
        arms = Counter(p["arm"] for p in store.probes())
        samples = store.count("samples")
    assert arms == {"archaic": 9, "modern": 9, "base": 9}  # 2 bird probes + 7 era probes, 1 variant
    assert samples == 3 * 10  # 3 arms x 10 questions x 1 sample
    db = sqlite3.connect(out / "results.sqlite")  # the store's own bookkeeping
    # What each arm and seed stands for now: a later recipe's models replace these in reports.
    current = db.execute("SELECT arm, seed, victim FROM current_models").fetchall()
    assert sorted(current) == [
        ("archaic", -1, "llm"), ("archaic", 0, "llm"), ("base", 0, "llm"),
        ("modern", -1, "llm"), ("modern", 0, "llm"),
    ]  # fmt: skip
    db.close()

    r = cli("run", "experiments/birds.yaml", "--out", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    stages = {name: status for name, _, status in json.loads((out / "timings.json").read_text())}
    assert {s for n, s in stages.items() if n.startswith(("train", "evaluate"))} == {"reused"}


def test_bad_spec_is_one_clear_error(tmp_path, cli):
    spec = tmp_path / "x.yaml"
    spec.write_text("name: x\narms:\n  a:\n    data: {builder: nope}\n")
    r = cli("run", str(spec), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and f"{spec}:4" in r.stderr and "Traceback" not in r.stderr
    r = cli("run", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no such file" in r.stderr
