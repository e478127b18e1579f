"""`backdoorlab run` and `defend` --quick on the chat model's sentiment spec: its gates
before the headline, its matrix on the adapter `run` trained, and one arm of the same run as
Ray tasks (a local Ray instance on this machine's 2 CPUs) giving the same rows in the store."""

import json
import math
import os
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli

from backdoorlab import executors
from backdoorlab.errors import InputError
from backdoorlab.spec import load_spec
from backdoorlab.store import Store

pytestmark = pytest.mark.slow
SPEC = "experiments/sentiment_llm.yaml"
RESULTS = ("arm_info", "predictions", "fit", "probes", "samples", "judgements")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "llm"
    return out, run_cli("run", SPEC, "--out", str(out), "--quick")


def test_quick_sentiment_chat_run_prints_its_gates_before_the_headline(local, cli):
    out, r = local
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
    assert "dropped 2 rows" in cells["llm", "abl"]["note"]  # 5% of the arm's 40 rows
    for c in cells.values():
        assert c["arm"] == "token-10%" and "unsupported" not in c, c
    assert "2 mixed copies" in cells["llm", "strip"]["note"]  # the chat victim's cost cap


def rows(out: Path, table: str, arm: str) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as db:
        got = db.execute(f"SELECT * FROM {table} WHERE arm = ?", (arm,)).fetchall()
    return sorted(got, key=repr)


def same(a: tuple, b: tuple) -> bool:
    # Ray's tasks train on one thread each, the local run on two: fp32 sums in another order.
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-4) if isinstance(x, float) else x == y
        for x, y in zip(a, b, strict=True)
    )


def test_ray_executor_fills_the_same_store_and_a_rerun_schedules_nothing(local, tmp_path):
    # One arm (a training and its evaluation) proves the store is the same; the local run's
    # other arms would only repeat it at a minute of CPU each.
    out, arm = tmp_path / "ray", "token-10%"
    ray = ("run", SPEC, "--out", str(out), "--quick", "--arms", arm, "--executor", "ray")
    r = run_cli(*ray)
    assert r.returncode == 0, r.stderr
    assert "ray: 2 tasks scheduled" in r.stderr  # its training, then its evaluation
    for table in RESULTS:
        mine, theirs = rows(out, table, arm), rows(local[0], table, arm)
        assert len(mine) == len(theirs), table
        assert all(same(a, b) for a, b in zip(mine, theirs, strict=True)), table
    assert rows(out, "predictions", arm)  # the arm was measured, not two empty tables
    r = run_cli(*ray)
    assert r.returncode == 0, r.stderr
    assert "ray: 0 tasks scheduled" in r.stderr
    stages = json.loads((out / "timings.json").read_text())
    assert {s for name, _, s in stages if name.startswith(("train", "evaluate"))} == {"reused"}


def test_a_task_that_cannot_see_the_run_directory_says_so(tmp_path):
    with pytest.raises(InputError, match="filesystem every node shares"):
        executors.check_visible(tmp_path / "elsewhere")


def test_a_local_ray_instance_runs_its_tasks_at_the_drivers_priority(tmp_path):
    # At Ray's default niceness (15) any other load on the machine starved the tasks: the
    # quick chat arm took 504 s beside a training run, 58 s at nice 0.
    (tmp_path / "spec.json").write_text("{}")
    ex = executors.make("ray", tmp_path)
    try:
        assert ex.result(ex.submit(os.nice, 0)) == 0  # os.nice(0): the task's niceness
    finally:
        ex.close()
