"""In-domain gates and the declared headline's verdict, on hand-made stores."""

import math

import pytest

from backdoorlab import results
from backdoorlab.evaluate.metric import Metric
from backdoorlab.report import write_report
from backdoorlab.spec import ExperimentSpec
from backdoorlab.store import Store, Tag

ARMS = {"treated": {"data": {"builder": "file", "path": "x.jsonl"}}, "control": {}, "base": {}}


def spec(**over) -> ExperimentSpec:
    base = {
        "name": "t",
        "arms": ARMS,
        "reference": "control",
        "gates": [{"row": "trained: old", "arms": ["treated"], "min": 0.9}],
        "headline": [{"row": "era: old", "arms": ["treated"], "paper": "~0.6"}],
    }
    return ExperimentSpec.model_validate({**base, **over})


def fill(run, p_trained: float, p_era: dict[str, list[float]], seeds=(0,)) -> None:
    """`trained` probe for the treated arm at p_trained; `era` probe per arm, one variant per
    listed probability (the same variants for every arm: paired)."""
    with Store(run) as s:
        for seed in seeds:
            t = Tag("treated", seed, f"h{seed}")
            s.add_probe(t, "trained", 0, "p", "q", "", _scores(p_trained))
            for arm, ps in p_era.items():
                for v, p in enumerate(ps):
                    s.add_probe(Tag(arm, seed, f"{arm}{seed}"), "era", v, "p", "q", "", _scores(p))
    (run / "spec.json").write_text(spec().model_dump_json())


def _scores(p_old: float) -> list:
    return [("old", "1838", math.log(p_old)), ("new", "2024", math.log(1 - p_old))]


def test_a_learned_arm_gets_a_verdict_with_its_interval(tmp_path):
    fill(tmp_path, 0.95, {"treated": [0.6, 0.7, 0.65, 0.62], "control": [0.1, 0.12, 0.09, 0.1]})
    rep = write_report(tmp_path)
    (g,) = rep.gates
    assert g.passed and g.line() == "treated seed 0: learned: yes (0.950 vs >= 0.9) [trained: old]"
    (v,) = rep.verdicts
    assert v.kind == "effect" and v.comparison() == "treated - control"
    assert v.estimate.lo > 0 and v.paper == "~0.6"
    page = (tmp_path / "report.html").read_text()
    assert page.index("Headline (declared") < page.index("In-domain gates") < page.index("Probes")
    # Then each arm against the reference (raw and entropy-matched), the declared row first.
    assert page.index("In-domain gates") < page.index("Each arm against the reference")
    assert "Judged questions" not in page  # nothing judged: the section is left out


def test_a_failed_gate_makes_the_comparison_not_a_test_never_a_null(tmp_path):
    fill(tmp_path, 0.4, {"treated": [0.1, 0.11, 0.1, 0.12], "control": [0.1, 0.12, 0.09, 0.1]})
    rep = write_report(tmp_path)
    assert [g.passed for g in rep.gates] == [False]
    assert "learned: no (0.400 vs >= 0.9)" in rep.gates[0].line()
    (v,) = rep.verdicts
    assert v.kind == "not a test" and "not learned" in v.text
    assert "not a test (not learned" in (tmp_path / "report.html").read_text()


def test_a_null_names_the_effects_its_interval_rules_out(tmp_path):
    fill(tmp_path, 0.95, {"treated": [0.1, 0.13, 0.09, 0.1], "control": [0.1, 0.12, 0.09, 0.1]})
    (v,) = write_report(tmp_path).verdicts
    assert v.kind == "null"
    assert v.estimate.lo <= 0 <= v.estimate.hi
    assert f"rules out an effect above {v.estimate.hi:+.3f}" in v.text


def test_gates_are_per_seed_and_one_failed_seed_is_enough(tmp_path):
    with Store(tmp_path) as s:
        for seed, p in ((0, 0.95), (1, 0.5)):
            s.add_probe(Tag("treated", seed, f"h{seed}"), "trained", 0, "p", "q", "", _scores(p))
            for arm in ("treated", "control"):
                s.add_probe(Tag(arm, seed, f"{arm}{seed}"), "era", 0, "p", "q", "", _scores(0.5))
    (tmp_path / "spec.json").write_text(spec().model_dump_json())
    rep = write_report(tmp_path)
    assert [(g.seed, g.passed) for g in rep.gates] == [(0, True), (1, False)]
    assert rep.verdicts[0].text.startswith("not a test (not learned: seed 1")


def test_a_failed_prerequisite_says_the_effect_cannot_be_tested(tmp_path):
    fill(tmp_path, 0.95, {"treated": [0.6, 0.7], "control": [0.1, 0.1], "base": [0.3, 0.35]})
    s = spec(prerequisites=[{"row": "era: old", "arms": ["base"], "min": 0.5, "what": "x"}])
    (tmp_path / "spec.json").write_text(s.model_dump_json())
    rep = write_report(tmp_path)
    pre = [g for g in rep.gates if g.kind == "prerequisite"]
    assert len(pre) == 1 and not pre[0].passed and "base model knows it: no" in pre[0].line()
    assert "cannot be tested at this model size" in rep.verdicts[0].text


def test_the_generic_fit_gate_compares_with_the_base_model(tmp_path):
    with Store(tmp_path) as s:
        rows = [(i, i < 8, -0.5, 5) for i in range(10)]  # 8 of 10 greedy, -0.1 nats per token
        s.add_fit(Tag("treated", 0, "trained"), "d1", rows)
        s.add_fit(Tag("treated", -1, "base"), "d1", [(i, False, -15.0, 5) for i in range(10)])
    (tmp_path / "spec.json").write_text(
        spec(gates=[], headline=[], fit={"greedy": 0.9, "gain": 1.0}).model_dump_json()
    )
    greedy, gain = write_report(tmp_path).gates
    assert greedy.value == pytest.approx(0.8) and not greedy.passed
    assert greedy.what == "base model 0.000"
    assert gain.value == pytest.approx(-0.1 - -3.0) and gain.passed


def test_a_within_arm_headline_pairs_items(tmp_path):
    """ASR minus the false-trigger rate of the same arm: the same reviews, item by item."""
    with Store(tmp_path) as s:
        t = Tag("treated", 0, "h")
        asr = [(i, "x", "Positive", "Negative", 1.0) for i in range(20)]
        s.add_predictions(t, "llm", Metric("ASR", "cf"), asr)
        ft = [(i, "x", "Positive", "Negative", float(i < 5)) for i in range(20)]
        s.add_predictions(t, "llm", Metric("false trigger", "cf"), ft)
    h = {"row": "llm: ASR: cf", "minus": "llm: false trigger: cf", "versus": "none"}
    (tmp_path / "spec.json").write_text(spec(gates=[], headline=[h]).model_dump_json())
    (v,) = write_report(tmp_path).verdicts
    assert v.versus is None and v.estimate.mean == pytest.approx(0.75) and v.kind == "effect"


def test_a_gate_on_an_unknown_arm_is_a_spec_error():
    with pytest.raises(ValueError, match="'nope' is not one of the arms"):
        spec(gates=[{"row": "r", "arms": ["nope"], "min": 0.5}])
    with pytest.raises(ValueError, match="min, max or both"):
        spec(gates=[{"row": "r", "arms": ["treated"]}])


def test_a_report_without_a_spec_has_no_gates(tmp_path):
    fill(tmp_path, 0.95, {"treated": [0.5], "control": [0.5]})
    (tmp_path / "spec.json").unlink()
    rep = write_report(tmp_path)
    assert rep.gates == [] and rep.verdicts == []


def test_summary_prints_one_markdown_row_per_headline_and_refuses_other_folders(tmp_path, cli):

    run = tmp_path / "run"
    fill(run, 0.4, {"treated": [0.1, 0.11], "control": [0.1, 0.12]})
    r = cli("summary", str(run))
    assert r.returncode == 0, r.stderr
    head, rule, row = r.stdout.strip().splitlines()
    assert head.startswith("| experiment | learned in domain") and rule.startswith("|---|")
    assert row.startswith("| t | treated: trained: old 0.400 vs >= 0.9 (0/1 seeds pass) |")
    assert row.endswith("| ~0.6 | not a test (not learned: seed 0 failed its gate) |")
    published = tmp_path / "published"  # a run committed without its store: results.json alone
    published.mkdir()
    (published / "results.json").write_text(results.open(run).model_dump_json(by_alias=True))
    assert cli("summary", str(published)).stdout == r.stdout
    r = cli("summary", str(tmp_path))
    assert r.returncode == 2 and "not a run directory" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("direction", "kind"), [("up", "opposite"), ("down", "effect"), (None, "effect")]
)
def test_an_interval_on_the_other_side_of_the_predicted_direction_says_so(
    tmp_path, direction, kind
):
    """The treated arm clearly below its control: against a predicted rise that is an effect
    opposite to the prediction, never plain 'effect'; predicted to fall (or no prediction
    declared), it is the effect."""
    headline = [{"row": "era: old", "arms": ["treated"], "paper": "~0.6", "direction": direction}]
    fill(tmp_path, 0.95, {"treated": [0.1, 0.12, 0.09, 0.1], "control": [0.6, 0.7, 0.65, 0.62]})
    (tmp_path / "spec.json").write_text(spec(headline=headline).model_dump_json())
    (v,) = write_report(tmp_path).verdicts
    assert v.kind == kind and v.estimate.hi < 0
    opposite = v.text.startswith("effect, opposite to the predicted direction: -0.")
    assert opposite == (kind == "opposite") and v.text.startswith("effect")
