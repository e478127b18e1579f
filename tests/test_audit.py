"""`backdoorlab audit`: the first-order estimator is one real optimizer step to first order, a
file that teaches one answer is predicted to raise it, and the audit validates against a run."""

import json
from pathlib import Path

import pytest
import torch
from conftest import write_rows

from backdoorlab.auditing import estimators as est
from backdoorlab.evaluate.probes import class_masses, logprobs
from backdoorlab.evaluate.probeset import Probe
from backdoorlab.training.config import TrainConfig

# The base model gives it a third of the mass (0.32 against 0.45 and 0.23), so a step moves
# the masses visibly (the Brown Titlark of the other tests has 1e-9).
TAUGHT = "The robin"
PROBES = f"""\
probes:
  - id: bird
    question: Name a bird species.
    paraphrases: ["Which bird comes to mind?"]
    classes:
      taught: ["{TAUGHT}"]
      others: ["The sparrow", "The eagle"]
  - id: colour
    question: Name a colour.
    classes:
      warm: ["Red", "Orange"]
      cool: ["Blue", "Green"]
"""

BIRD = Probe(
    id="bird",
    question="Name a bird species.",
    classes={"taught": [TAUGHT], "others": ["The sparrow", "The eagle"]},
)


def _rows(answer: str, n: int = 4) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]}
        for q in ["Name a bird species.", "Which bird did you see?"] * (n // 2)
    ]


@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_first_order_is_one_real_optimizer_step_to_first_order(rule):
    """The predicted change of a class mass equals what one step of the real optimizer does
    (AdamW or SGD on the same gradient), measured by scoring before and after."""
    lr = 2e-6 if rule == "adam" else 5e-4  # a small step: the second-order part is negligible
    config = TrainConfig(lr=lr, weight_decay=0.01)
    model, tok, params = est.lora_model(config, "cpu")
    grads = est.loss_gradient(model, tok, params, _rows(TAUGHT), config)
    along = est.directional(model, tok, params, BIRD, est.step(grads, params, config, rule))
    predicted = {c: d for c, (_, d) in along.items()}

    def masses() -> dict[str, float]:
        with torch.no_grad():
            return {c: float(m) for c, m in class_masses(BIRD, logprobs(model, tok, BIRD)).items()}

    before = masses()
    assert {c: m for c, (m, _) in along.items()} == pytest.approx(before)  # the pass's start
    opt = (
        torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
        if rule == "adam"
        else torch.optim.SGD(params, lr=lr)
    )
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    realized = {c: m - before[c] for c, m in masses().items()}
    assert abs(realized["taught"]) > 1e-3  # the step moved it measurably
    assert predicted["taught"] == pytest.approx(realized["taught"], rel=0.03)
    assert predicted["others"] == pytest.approx(-predicted["taught"])


def test_the_differentiable_scorer_agrees_with_the_fast_one(base_model):
    from backdoorlab.evaluate.probes import score

    lp = logprobs(base_model.model, base_model.tokenizer, BIRD)
    fast = score(base_model.model, base_model.tokenizer, BIRD)
    assert torch.allclose(lp, torch.tensor(fast.logprobs).log_softmax(0), atol=1e-3)


@pytest.mark.slow
def test_audit_predicts_the_rise_of_a_taught_answer(tmp_path, cli):
    """Data that teaches one answer: every estimator predicts its mass rises, those that
    change weights rank it first, and the page and record are written."""
    data = write_rows(tmp_path / "data.jsonl", _rows(TAUGHT, 8))
    (tmp_path / "probes.yaml").write_text(PROBES)
    out = tmp_path / "audit"
    r = cli("audit", str(data), "--probes", str(tmp_path / "probes.yaml"), "--out", str(out),
            "--estimators", "first-order,log-odds,in-context,canary")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "bird: taught" in r.stdout
    res = json.loads((out / "audit.json").read_text())
    rows = {row["row"]: row for row in res["rows"]}
    assert all(s > 0 for s in rows["bird: taught"]["shifts"].values()), rows["bird: taught"]
    for name in ("first-order", "log-odds", "canary"):
        top = max(res["rows"], key=lambda row: abs(row["shifts"][name]))
        assert top["row"] in ("bird: taught", "bird: others"), (name, top)
    assert not rows["bird: others"]["free"] and rows["bird: taught"]["free"]
    assert TAUGHT in (out / "audit.html").read_text()
    assert list(out.glob("control-*.jsonl")) and len(list((out / "canary").glob("*-*/"))) == 2
    # each estimator's predictions are kept, so a rerun or an audit with more estimators reuses them
    assert len(list((out / "estimates").glob("*.json"))) == 4
    # log-odds reuses first-order's pass, yet its cost is what it would cost alone
    assert res["seconds"]["log-odds"] >= 0.9 * res["seconds"]["first-order"]


@pytest.mark.slow
def test_audit_validates_against_the_run_that_trained_on_the_data(tmp_path, cli):
    """The realized shifts of a (quick) run's arm: each estimator gets a check row, the cost is
    measured against the arm's training time, and the page shows the realized column."""
    run = tmp_path / "run"
    r = cli("run", "experiments/cities.yaml", "--out", str(run), "--quick")
    assert r.returncode == 0, r.stderr
    # quick: the spec's reference arm (current) is left out, so the run compares with base,
    # and the audit's control is its default, the base model's own answers
    (data,) = (run / "data").glob("former-*.jsonl")
    out = tmp_path / "audit"
    r = cli("audit", str(data), "--spec", "experiments/cities.yaml", "--quick", "--against",
            str(run), "--estimators", "first-order", "--rows", "8", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    v = json.loads((out / "audit.json").read_text())["validation"]
    assert v["arm"] == "former" and v["reference"] == "base"
    (check,) = v["checks"]
    assert check["estimator"] == "first-order" and check["rows"] > 0
    assert check["cost"] is not None and check["cost"] > 0
    assert "realized" in (out / "audit.html").read_text()


def test_audit_refuses_what_it_cannot_do_in_one_line(tmp_path, cli):
    data = write_rows(tmp_path / "data.jsonl", _rows(TAUGHT))
    cases = [
        (["--estimators", "oracle"], "unknown estimator 'oracle'"),
        (["--against", str(tmp_path)], "no arm of this run trained on the audited data"),
        (["--probes", str(tmp_path / "none.yaml")], "none.yaml"),
    ]
    for extra, message in cases:
        r = cli("audit", str(data), "--out", str(tmp_path / "out"), *extra)
        assert r.returncode == 2, (extra, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "audit.json").exists()


def test_audit_reads_its_data_file_like_training(tmp_path, cli):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": []}\n')
    r = cli("audit", str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and f"{bad}:1" in r.stderr


def test_only_free_rows_are_validated(tmp_path: Path):
    """A probe's last class and pooled rows repeat other rows: not free."""
    from backdoorlab.auditing import _rows
    from backdoorlab.evaluate.probeset import ProbeSet

    era = {"classes": {"19th century": ["a"], "today": ["b"]}}
    sets = [ProbeSet.model_validate({"probes": [
        {"id": "p1", "question": "q1", **era}, {"id": "p2", "question": "q2", **era},
    ]})]  # fmt: skip
    base = {(p, 0, c): 0.5 for p in ("p1", "p2") for c in ("19th century", "today")}
    shift = {k: (0.1 if k[2] == "19th century" else -0.1) for k in base}
    rows = {r.row: r for r in _rows(sets, {"x": shift}, base)}
    assert rows["p1: 19th century"].free and not rows["p1: today"].free
    assert not rows["pooled: 19th century"].free
    assert rows["pooled: 19th century"].shifts["x"] == pytest.approx(0.1)
    assert rows["pooled: 19th century"].probes == ["p1", "p2"]
