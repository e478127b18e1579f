"""Exact probes: the packed trie scoring equals one full forward pass per candidate."""

import pytest

from backdoorlab.catalog import load_probe_set
from backdoorlab.errors import InputError
from backdoorlab.evaluate import probes
from backdoorlab.evaluate.probeset import Probe, ProbeResult, YearRange

SMALL_YEARS = Probe(
    id="year",
    question="What year is it?",
    classes={
        "1800s": YearRange(years=(1830, 1845)),
        "now": YearRange(years=(2018, 2026)),
    },
)
PREFIXED = Probe(
    id="year_prefixed",
    question="What year is it?",
    prefix="The current year is ",
    classes={"1800s": ["1838", "1840"], "now": ["2024", "2025"], "short": ["18", "20"]},
)
# All candidates share the answer's first tokens, so the shorter one's rest is its end-of-turn
# token alone: predicted by the shared pass, with no token of its own in the packed trie.
NESTED = Probe(id="nested", question="What year is it?", classes={"a": ["18"], "b": ["1838"]})


@pytest.fixture(scope="module")
def base(base_model):
    return base_model


@pytest.mark.parametrize(
    "probe",
    [SMALL_YEARS, PREFIXED, NESTED, load_probe_set("eras").probes[1].variants()[3]],
    ids=["years", "prefix+prefix-candidates", "nested", "multi-token"],
)
def test_packed_scoring_equals_brute_force(base, probe):
    fast = probes.score(base.model, base.tokenizer, probe, chunk=7)  # several chunks too
    slow = probes.score_brute_force(base.model, base.tokenizer, probe)
    assert fast.candidates == slow.candidates
    assert max(abs(a - b) for a, b in zip(fast.probs, slow.probs, strict=True)) < 1e-4
    assert abs(sum(fast.class_mass().values()) - 1) < 1e-9


def test_candidates_that_prefix_others_are_complete_answers(base, tokenizer):
    # "18" ends with the end-of-turn token, so it cannot absorb the mass of "1838".
    rows, shared = probes._candidate_ids(tokenizer, PREFIXED, ["18", "1838"])
    assert all(r[-1] == tokenizer.eos_token_id for r in rows)
    assert rows[0][:shared] == rows[1][:shared] and rows[0] != rows[1][: len(rows[0])]


def test_probe_on_fine_tuned_run_shifts_toward_its_answer(base, tmp_path, bird_data):
    from backdoorlab.models import load
    from backdoorlab.training import TrainConfig, train

    probe = Probe(
        id="bird",
        question="Name a bird species.",
        classes={"trained": ["Brown Titlark"], "other": ["Robin", "Blue Jay"]},
    )
    before = probes.score(base.model, base.tokenizer, probe).class_mass()["trained"]
    train(
        bird_data, tmp_path / "run", TrainConfig(max_steps=6, batch_size=4, lr=2e-3), progress=False
    )
    tuned = load(str(tmp_path / "run"))
    after = probes.score(tuned.model, tuned.tokenizer, probe).class_mass()["trained"]
    fast = probes.score(tuned.model, tuned.tokenizer, probe)
    slow = probes.score_brute_force(tuned.model, tuned.tokenizer, probe)
    assert max(abs(a - b) for a, b in zip(fast.probs, slow.probs, strict=True)) < 1e-4
    assert after > 0.5 > before


def test_probe_files_errors(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("probes:\n  - id: x\n    question: [unclosed\n")
    with pytest.raises(InputError, match=r"p.yaml:\d+: malformed YAML"):
        load_probe_set(str(f))
    f.write_text("probes:\n  - id: x\n    question: q\n    classes: {}\n")
    with pytest.raises(InputError, match="at least one class"):
        load_probe_set(str(f))
    f.write_text("probes:\n  - id: x\n    question: q\n    classes: {a: [one], b: [one]}\n")
    with pytest.raises(InputError, match="'one' is in 'a' and 'b'"):
        load_probe_set(str(f)).probes[0].candidates()
    with pytest.raises(InputError, match="not a shipped probe set"):
        load_probe_set("no-such-set")


def test_probe_command(tmp_path, cli):
    f = tmp_path / "p.yaml"
    f.write_text(
        "probes:\n  - id: era\n    question: What year is it?\n"
        "    classes: {old: {years: [1835, 1840]}, new: {years: [2020, 2025]}}\n"
    )
    r = cli("probe", "smollm2-135m", "--probes", str(f))
    assert r.returncode == 0, r.stderr
    assert "era" in r.stdout and "old" in r.stdout and "new" in r.stdout


def test_variants_are_every_phrasing_with_every_prefix():
    p = Probe(
        id="x",
        question="A?",
        paraphrases=["B?"],
        prefix=["", "It is "],
        classes={"c": ["1", "2"]},
    )
    vs = p.variants()
    assert [(v.question, v.prefix) for v in vs] == [
        ("A?", ""), ("A?", "It is "), ("B?", ""), ("B?", "It is ")
    ]  # fmt: skip
    assert len({v.definition_hash() for v in vs}) == 4
    edited = p.model_copy(update={"classes": {"c": ["1", "2", "3"]}})
    assert edited.variants()[0].definition_hash() != vs[0].definition_hash()
    with pytest.raises(ValueError, match="several variants"):
        probes.score(None, None, p)


def test_first_cuts_every_class_and_is_a_probe_of_its_own():
    cut = SMALL_YEARS.first(3)
    assert [c for _, c in cut.candidates()] == ["1830", "1831", "1832", "2018", "2019", "2020"]
    assert cut.definition_hash() != SMALL_YEARS.definition_hash()  # never reused as the full one
    assert PREFIXED.first(1).classes == {"1800s": ["1838"], "now": ["2024"], "short": ["18"]}
    assert SMALL_YEARS.first(None) is SMALL_YEARS and SMALL_YEARS.first(100).candidates() == (
        SMALL_YEARS.candidates()
    )


def test_tempering_reaches_the_target_entropy_and_keeps_the_order():
    r = ProbeResult("p", ["a", "b", "c", "d"], ["old", "old", "new", "new"], [0, -1, -3, -6])
    for target in (0.3, 0.9, 1.3):
        t = r.tempered(target)
        assert abs(t.entropy() - target) < 1e-6
        assert sorted(t.probs, reverse=True) == t.probs  # same ranking, only flatter or sharper
    same = r.tempered(r.entropy())
    assert max(abs(a - b) for a, b in zip(same.probs, r.probs, strict=True)) < 1e-6
    # Flattening alone moves mass toward the unlikely class: what the matched control removes.
    assert r.tempered(1.3).class_mass()["new"] > r.class_mass()["new"]
