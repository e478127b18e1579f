"""`backdoorlab run` and `defend` --quick on the chat model's sentiment spec: its gates
before the headline, and its matrix on the adapter `run` trained."""

import re

import pytest

from backdoorlab.spec import load_spec
from backdoorlab.store import Store


@pytest.mark.slow
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
    assert "dropped 2 rows" in cells["llm", "abl"]["note"]  # 5% of the arm's 40 rows
    for c in cells.values():
        assert c["arm"] == "token-10%" and "unsupported" not in c, c
    assert "2 mixed copies" in cells["llm", "strip"]["note"]  # the chat victim's cost cap
