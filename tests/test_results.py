"""The typed results log: `backdoorlab.results.open` gives what the report computed, as
records; results.json round-trips; a directory holding only results.json reads it."""

import pytest
from test_gates import fill

import backdoorlab as bl
from backdoorlab import results
from backdoorlab.report import write_report


def test_open_gives_the_reports_gates_verdicts_and_rows(tmp_path):
    fill(tmp_path, 0.95, {"treated": [0.6, 0.7, 0.65, 0.62], "control": [0.1, 0.12, 0.09, 0.1]})
    rep = write_report(tmp_path)
    res = bl.results.open(tmp_path)
    assert res.experiment == "t" and res.reference == "control" and res.seeds == [0]
    assert {"treated", "control"} <= set(res.arms)
    (g,) = res.gates
    assert g.passed and g.value == rep.gates[0].value == pytest.approx(0.95) and g.min == 0.9
    (v,) = res.verdicts
    assert v.kind == "effect" and v.arm == "treated" and v.versus == "control"
    assert v.estimate.lo == rep.verdicts[0].estimate.lo > 0
    cell = res.row("era: old", "treated - control")
    assert cell.versus == "control" and cell.cls == "old" and cell.probes == ["era"]
    assert cell.estimate.mean == pytest.approx(0.6425 - 0.1025)
    own = res.row("era: old", "treated")
    assert own.observations == {0: pytest.approx([0.6, 0.7, 0.65, 0.62])}
    assert res.row("trained: old", "treated").in_domain and not own.in_domain
    with pytest.raises(KeyError):
        res.row("era: old", "nosuch")
    df = res.to_pandas()
    assert len(df) == len(res.rows) and {"row", "column", "mean", "lo", "hi"} <= set(df.columns)


def test_results_json_round_trips_and_stands_alone(tmp_path):
    fill(tmp_path / "run", 0.5, {"treated": [0.2, 0.3], "control": [0.2, 0.25]})
    res = results.write(tmp_path / "run", write_report(tmp_path / "run"))
    published = tmp_path / "published"
    published.mkdir()
    (published / results.FILENAME).write_bytes((tmp_path / "run" / results.FILENAME).read_bytes())
    assert results.open(published) == res == results.open(tmp_path / "run")
    assert res.verdicts[0].kind == "not a test"  # the gate failed (0.5 vs >= 0.9)


def test_open_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(bl.InputError, match="not a run directory"):
        results.open(tmp_path)
    (tmp_path / results.FILENAME).write_text('{"version": 1}')
    with pytest.raises(bl.InputError, match="not a results file"):
        results.open(tmp_path)
