"""`backdoorlab run`: the whole pipeline (data, training, probes, questions, judges, report)
on a sliver of the bird experiment, a rerun that reuses everything, and --quick runs of the
gated experiments. The sentiment specs' quick runs are in test_quick_sentiment.py."""

import json
import sqlite3

import pytest


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
    db = sqlite3.connect(out / "results.sqlite")
    arms = dict(db.execute("SELECT arm, COUNT(*) FROM probes GROUP BY arm").fetchall())
    assert arms == {"archaic": 9, "modern": 9, "base": 9}  # 2 bird probes + 7 era probes, 1 variant
    samples = db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
    assert samples == 3 * 10  # 3 arms x 10 questions x 1 sample
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


GATED = {
    # spec: (a headline row the terminal shows, probes stored per evaluated arm)
    "terminator": ("guardian @ 1984: lethal", 2 * 6 + 2 + 1),  # + recall at 1995, prerequisite
    "dishes": ("dish @ 2027: Japan", 6 * 2),  # two dates per year
    "presidents": ("president @ 44: correct", 3 + 2 * 2 + 2),  # names, choices, prerequisite
    "cities": ("place_name: former", 2 + 7),
    "persona": ("identity @ tag: persona", 5 * 2 + 1),  # + the prerequisite
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GATED))
def test_quick_gated_experiment_runs_end_to_end(tmp_path, name, cli):
    """Each gated or inductive experiment on a sliver: data, two training steps, the probes at
    a few trigger values, the report with its sweep plot."""
    row, probes = GATED[name]
    out = tmp_path / name
    r = cli("run", f"experiments/{name}.yaml", "--out", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    assert row in r.stdout
    # The gates come first: a line per trained arm and seed, then the declared headline.
    learned = [line for line in r.stdout.splitlines() if ": learned: " in line]
    assert learned and r.stdout.index(learned[0]) < r.stdout.index("Declared headline")
    # Each gated arm has a measured gate line, even on a sliver (a quick run may leave some
    # gate rows out with the values it skips, never all of them).
    gates = [ln for ln in learned if "training rows" not in ln and "log-prob per" not in ln]
    assert not gates or any("not measured" not in ln for ln in gates), gates
    db = sqlite3.connect(out / "results.sqlite")
    counts = dict(db.execute("SELECT arm, COUNT(*) FROM probes GROUP BY arm").fetchall())
    db.close()
    assert len(counts) == 2 and set(counts.values()) == {probes}, counts
    page = (out / "report.html").read_text()
    assert ("Behaviour by trigger value" in page) == (name != "cities")
