"""`backdoorlab run` and `defend` --quick on the encoder's sentiment spec: the grid and its
attack x defense matrix with cell reuse. (The chat model's are in test_quick_chat.py.)"""

import json
import re

import pytest

import backdoorlab as bl
from backdoorlab.defenses import scan
from backdoorlab.defenses.detection import detection_metrics
from backdoorlab.spec import DEFENSES
from backdoorlab.store import Store


@pytest.mark.slow
def test_quick_sentiment_run_end_to_end(tmp_path, cli):
    out = tmp_path / "sentiment"
    r = cli("run", "experiments/sentiment_trigger.yaml", "--out", str(out), "--quick")
    assert r.returncode == 0, r.stderr
    assert "Classification" in r.stdout and "false trigger" in r.stdout
    res = bl.results.open(out)
    measured = [r for r in res.rows if r.metric and r.versus is None]
    assert {r.victim for r in measured} == {"encoder"}
    assert len({r.arm for r in measured}) == 8  # the quick grid: one arm per trigger kind
    # The clean arm is measured with every trigger (the ASR floor); a poisoned arm with its own.
    floors = {r.trigger for r in measured if r.arm == "clean" and r.metric == "ASR"}
    assert len(floors) == 5, floors  # cf, §, sentence, mn+bb, honestly
    own = {(r.metric, r.trigger) for r in measured if r.arm == "char-1%"}
    assert own == {("CACC", None), ("ASR", "char §"), ("false trigger", "char §")}
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
    # a cell's key holds its own defense's settings: a new --remove re-measures a scanner only
    r = cli(*defend, "--defenses", "none,ngram,inspect", "--remove", "0.2")
    measured = re.findall(r"defend token-10% \(encoder\): (\w+)\n", r.stderr)
    assert "reusing 2 cells" in r.stderr and measured == ["ngram"], r.stderr
    with Store(out) as store:
        cells = store.latest_defense_cells()
    assert {(c["arm"], c["defense"]) for c in cells} == {("token-10%", d) for d in DEFENSES}
    assert len(DEFENSES) == 14 and {"abl", "ablate", "fineprune", "dpsgd", "inspect"} <= set(
        DEFENSES
    )
    (dp,) = [c for c in cells if c["defense"] == "dpsgd"]
    assert "DP-SGD (Opacus), epsilon " in dp["note"]  # the budget the run spent, in the cell
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
