"""`backdoorlab run --quick` on each gated experiment: every gated arm gets a measured gate
line, and the declared headline reaches the terminal."""

from collections import Counter

import pytest

from backdoorlab.store import Store

GATED = {
    # spec: (a headline row the terminal shows, probes stored per evaluated arm, arms evaluated)
    "terminator": ("guardian @ 1984: lethal", 2 * 6 + 2 + 1, 2),  # + recall at 1995, prereq.
    "dishes": ("dish @ 2027: Japan", 6 * 2, 3),  # two dates per year; + the ordinary stage
    "presidents": ("president @ 44: correct", 3 + 2 * 2 + 2, 2),  # names, choices, prereq.
    "cities": ("place_name: former", 2 + 7, 2),
    "persona": ("identity @ tag: persona", 5 * 2 + 1, 2),  # + the prerequisite
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GATED))
def test_quick_gated_experiment_runs_end_to_end(tmp_path, name, cli):
    """Each gated or inductive experiment on a sliver: data, two training steps, the probes at
    a few trigger values, the report with its sweep plot."""
    row, probes, arms = GATED[name]
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
    with Store(out, readonly=True) as store:
        counts = Counter(p["arm"] for p in store.probes())
    assert len(counts) == arms and set(counts.values()) == {probes}, counts
    page = (out / "report.html").read_text()
    assert ("Behaviour by trigger value" in page) == (name != "cities")
