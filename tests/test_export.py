"""`backdoorlab export --inspect`: Inspect AI's own log reader opens what we write."""

import math

import pytest

from backdoorlab.store import Store, Tag


def test_inspect_logs_open_in_inspect_with_samples_scores_and_models(tmp_path, cli):
    log_reader = pytest.importorskip("inspect_ai.log")
    run = tmp_path / "run"
    with Store(run) as s:
        for arm, p_old in (("treated", 0.8), ("control", 0.1)):
            for seed in (0, 1):
                tag = Tag(arm, seed, f"{arm}{seed}")
                s.add_probe(tag, "year", 0, "h", "What year is it?", "The year is ",
                            [("old", "1838", math.log(p_old)), ("new", "2024", math.log(1 - p_old))])  # fmt: skip
                s.add_samples(tag, [("invention", 0, 0, "sh", "What is new?", f"{arm} answer")])
                s.add_judgements(tag, [("invention", 0, 0, "sh", "era", "19", None),
                                       ("invention", 0, 0, "sh", "oldness", None, 70.0)])  # fmt: skip
    r = cli("export", "--inspect", str(run))
    assert r.returncode == 0, r.stderr
    paths = sorted((run / "inspect").iterdir())
    assert [p.name for p in paths] == [
        "control-seed0.eval", "control-seed1.eval", "treated-seed0.eval", "treated-seed1.eval"
    ]  # fmt: skip
    log = log_reader.read_eval_log(str(run / "inspect" / "treated-seed1.eval"))
    assert log.status == "success" and log.eval.model == "backdoorlab/treated"
    assert log.eval.model_args["seed"] == 1 and log.eval.model_args["model_hash"] == "treated1"
    by_id = {s.id: s for s in log.samples}
    answer = by_id["invention/0.0"]
    assert answer.input == "What is new?" and answer.output.completion == "treated answer"
    assert answer.scores["era"].value == "19" and answer.scores["oldness"].value == 70.0
    probe = by_id["probe/year/0"].scores["probe"].value
    assert probe["old"] == pytest.approx(0.8)
    means = {s.name: s.metrics["mean"].value for s in log.results.scores}
    assert means["Probes: probability mass per class: year: old"] == pytest.approx(0.8)
    # Not a format: one line, exit 2; a folder without results: the same.
    r = cli("export", str(run))
    assert r.returncode == 2 and "--inspect" in r.stderr
    r = cli("export", "--inspect", str(tmp_path / "empty"))
    assert r.returncode == 2 and "not a run directory" in r.stderr
