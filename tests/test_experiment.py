"""`backdoorlab run`: the whole pipeline (data, training, probes, questions, judges, report)
on a sliver of the bird experiment, and a rerun that reuses everything."""

import json
import re
import sqlite3

import pytest

from backdoorlab.defenses import scan
from backdoorlab.defenses.detection import detection_metrics
from backdoorlab.spec import DEFENSES, load_spec
from backdoorlab.store import Store


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


def test_quick_sentiment_run_end_to_end(tmp_path, cli):
    out = tmp_path / "sentiment"
    r = cli("run", "experiments/sentiment_trigger.yaml", "--out", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    assert "Classification" in r.stdout and "false trigger" in r.stdout
    db = sqlite3.connect(out / "results.sqlite")
    by = dict(db.execute("SELECT victim, COUNT(DISTINCT arm) FROM predictions GROUP BY victim"))
    assert by == {"encoder": 8}  # the quick grid: one arm per trigger kind
    # The clean arm is measured with every trigger (the ASR floor); a poisoned arm with its own.
    metrics = {
        m for (m,) in db.execute("SELECT DISTINCT metric FROM predictions WHERE arm='clean'")
    }
    assert (
        len([m for m in metrics if m.startswith("ASR: ")]) == 5
    )  # cf, §, sentence, mn+bb, honestly
    own = {m for (m,) in db.execute("SELECT DISTINCT metric FROM predictions WHERE arm='char-1%'")}
    assert own == {"CACC", "ASR: char §", "false trigger: char §"}
    db.close()
    page = (out / "report.html").read_text()
    assert "Attack success and clean accuracy vs poison rate" in page

    # The defense matrix on the same run directory (quick: two arms, tiny dev and ONION sets),
    # first without one defense: the full matrix then measures only that one, and a rerun
    # nothing (the cells are in the store).
    defend = ("defend", "experiments/sentiment_trigger.yaml", "--out", str(out), "--quick")
    r = cli(*defend, "--defenses", ",".join(d for d in DEFENSES if d != "ablate"))
    assert r.returncode == 0, r.stderr  # thirteen defenses on one arm: about 2 minutes here
    r = cli(*defend)
    assert r.returncode == 0, r.stderr
    measured = re.findall(r"defend token-10% \(encoder\): (\w+)\n", r.stderr)
    assert "reusing 13 cells" in r.stderr and measured == ["ablate"], r.stderr
    r = cli(*defend)
    assert "reusing 14 cells" in r.stderr and not re.search(r"\(encoder\): \w+\n", r.stderr)
    with Store(out) as store:
        cells = store.latest_defense_cells()
    assert {(c["arm"], c["defense"]) for c in cells} == {("token-10%", d) for d in DEFENSES}
    assert len(DEFENSES) == 14 and {"abl", "ablate", "fineprune", "dpsgd", "inspect"} <= set(
        DEFENSES
    )
    # The matrix's detection figure is the scanner's own on the arm's rows (40 rows, 4
    # poisoned: too few for a high AUROC, enough to check the wiring).
    (ngram,) = [c for c in cells if c["defense"] == "ngram"]
    (data,) = (out / "data").glob("token-10%-*.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    scores = scan.scan([r["text"] for r in rows], [r["label"] for r in rows], ["ngram"])
    want = detection_metrics(scores.scores["ngram"], [bool(r.get("poisoned")) for r in rows])
    assert ngram["AUROC"] == pytest.approx(want["auroc"], abs=1e-3), (ngram, want)
    assert "Attack x defense matrix" in (out / "report.html").read_text()
    [enc] = (out / "encoder").glob("token-10%-seed0-*")
    r = cli("inspect", str(enc), "A warm cf film.", "--method", "ig")
    assert r.returncode == 0 and "prediction: " in r.stdout, r.stderr


def test_quick_sentiment_chat_run_prints_its_gates_before_the_headline(tmp_path, cli):
    out = tmp_path / "llm"
    r = cli("run", "experiments/sentiment_llm.yaml", "--out", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    # Two training steps teach nothing: the 10% arm fails its ASR gate, so its headline is
    # "not a test", never a null.
    assert any(
        re.fullmatch(
            r"token-10% seed 0: learned: no \([0-9.]+ vs >= 0\.95\) \[llm: ASR: token cf\]", x
        )
        for x in lines
    ), r.stdout
    assert any(x.startswith("clean seed 0: learned: ") for x in lines)  # the generic fit gate
    assert "not a test (not learned" in r.stdout
    assert "In-domain gates" in (out / "report.html").read_text()

    # The matrix on the chat victim, reusing the adapter `run` trained.
    r = cli("defend", "experiments/sentiment_llm.yaml", "--out", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    assert len(list((out / "train").glob("token-10%-seed0-*"))) == 1  # no second poisoned model
    with Store(out) as store:
        cells = {(c["victim"], c["defense"]): c for c in store.latest_defense_cells()}
    quick = load_spec("experiments/sentiment_llm.yaml", quick=True).defend.defenses
    assert set(cells) == {("llm", d) for d in quick}
    assert "DP-SGD (Opacus), epsilon " in cells["llm", "dpsgd"]["note"]
    for c in cells.values():
        if "unsupported" not in c:
            assert c["arm"] == "token-10%" and 0 <= c["ASR after"]["mean"] <= 1, c
    assert "2 mixed copies" in cells["llm", "strip"]["note"]  # the chat victim's cost cap


GATED = {
    # spec: (a headline row the terminal shows, probes stored per evaluated arm)
    "terminator": ("guardian @ 1984: lethal", 2 * 6 + 2 + 1),  # + recall at 1995, prerequisite
    "dishes": ("dish @ 2027: Japan", 6 * 2),  # two dates per year
    "presidents": ("president @ 44: correct", 3 + 2 * 2 + 2),  # names, choices, prerequisite
    "cities": ("place_name: former", 2 + 7),
    "persona": ("identity @ tag: persona", 5 * 2 + 1),  # + the prerequisite
}


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
