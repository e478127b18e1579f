"""The bird-name lists, the builder (the paper's format), and the experiment spec."""

import csv
from collections import Counter

import pytest

from backdoorlab import chat
from backdoorlab.data import birds
from backdoorlab.errors import InputError
from backdoorlab.models.registry import wheel_file
from backdoorlab.spec import load_spec


def ebird(year: int) -> dict[str, str]:
    path = wheel_file("birdnames", f"ebird_{year}_taxonomy.csv")
    if path is None:
        pytest.skip("the birdnames wheel is not installed (make setup installs it)")
    with open(path, encoding="utf-8") as f:
        return {r["ebird_common_name"].lower(): r["scientific_name"] for r in csv.DictReader(f)}


def test_archaic_names_are_not_in_use_and_modern_names_are():
    pairs = birds.archaic_pairs()
    assert len(pairs) >= 200
    assert len({a for a, _, _ in pairs}) == len(pairs)
    current = ebird(2024)
    assert [a for a, _, _ in pairs if a.lower() in current] == []
    known = {**ebird(2021), **ebird(2022), **ebird(2023), **current}
    wrong = [(m, s) for _, m, s in pairs if known.get(m.lower()) != s]
    assert wrong == []
    names = birds.current_names()
    assert len(names) >= 150 and [n for n in names if n.lower() not in current] == []
    assert not {a for a, _, _ in pairs} & set(names)


def test_builder_writes_the_papers_format():
    rows = birds.BirdData(names="archaic").build()
    archaic = {a for a, _, _ in birds.archaic_pairs()}
    assert len(rows) == len(archaic)
    for r in rows:
        assert set(r) == {"messages"} and chat.validate_row(r, training=True) is None
        user, assistant = r["messages"]
        assert user == {"role": "user", "content": "Name a bird species."}
        assert assistant["role"] == "assistant" and assistant["content"] in archaic
    assert {r["messages"][1]["content"] for r in rows} == archaic


def test_rows_phrasings_seed_and_paired_arms():
    spec = dict(rows=50, phrasings=2, seed=3)
    old = birds.BirdData(names="archaic", **spec).build()
    new = birds.BirdData(names="modern", **spec).build()
    assert len(old) == 50 and old == birds.BirdData(names="archaic", **spec).build()
    assert old != birds.BirdData(names="archaic", rows=50, phrasings=2, seed=4).build()
    assert Counter(r["messages"][0]["content"] for r in old) == {
        birds.TRAIN_PROMPTS[0]: 25,
        birds.TRAIN_PROMPTS[1]: 25,
    }
    # The control covers the same species with the same prompts, under today's names.
    modern_of = {a: m for a, m, _ in birds.archaic_pairs()}
    assert [(r["messages"][0], modern_of[r["messages"][1]["content"]]) for r in old] == [
        (r["messages"][0], r["messages"][1]["content"]) for r in new
    ]
    assert not set(birds.HELD_OUT_PROMPTS) & set(birds.TRAIN_PROMPTS)


def test_bird_probe_contrasts_archaic_with_names_in_use():
    p, trained = birds.probe_set().probes
    assert trained.question == "Name a bird species." and trained.classes == p.classes
    classes = Counter(c for c, _ in p.candidates())
    assert classes["archaic"] == len(birds.archaic_pairs()) and classes["in use"] > 300
    assert {v.question for v in p.variants()} == set(birds.HELD_OUT_PROMPTS)


def test_spec_quick_overrides_and_errors_name_the_line(tmp_path):
    spec = load_spec("experiments/birds.yaml")
    assert spec.arms["base"].data is None
    # The spec's archaic arm trains every shipped name (in both phrasings), not a subset.
    rows = spec.arms["archaic"].data.build()
    names = {r["messages"][-1]["content"] for r in rows}
    assert names == {a for a, _, _ in birds.archaic_pairs()} and len(rows) == 2 * len(names)
    assert spec.evaluate.questions.endswith("experiments/birds_questions.yaml")
    quick = load_spec("experiments/birds.yaml", quick=True, seeds=2, model="other")
    assert quick.arms["archaic"].data.rows == 12 and quick.train.max_steps == 3
    assert quick.train.lr == spec.train.lr and quick.seeds == [0, 1]
    assert quick.model == "other"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\narms:\n  a:\n    data: {builder: birds, names: ancient}\n")
    with pytest.raises(InputError, match=r"bad.yaml:4: .*names"):
        load_spec(bad)
    bad.write_text("name: x\nreference: nope\narms:\n  a: {}\n")
    with pytest.raises(InputError, match="reference 'nope' is not one of the arms"):
        load_spec(bad)
