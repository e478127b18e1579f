"""Spec grids: an arm template with `grid:` expands in place to one arm per combination, the
same arms as written out by hand; `spec show` prints the expansion."""

import json

import pytest
from conftest import cli_main

from backdoorlab.errors import InputError
from backdoorlab.spec import load_spec

GRID = """\
name: g
reference: clean
arms:
  clean:
    data: {builder: sentiment, n: 60}
  "{trigger}-{rate}":
    data: {builder: sentiment, n: 60}
    grid:
      trigger:
        token: {poison: {trigger: {kind: token, token: cf}}}
        sentence: {poison: {trigger: {kind: sentence}}}
      rate:
        1%: {poison: {rate: 0.01}}
        10%: {poison: {rate: 0.1}}
  last:
    data: {builder: sentiment, n: 60, poison: {trigger: {kind: token, token: zz}, rate: 0.1}}
quick:
  arms:
    "{trigger}-{rate}": {victims: [], data: {n: 20}}
    token-10%: {victims: null}
"""

BY_HAND = """\
name: g
reference: clean
arms:
  clean: {data: {builder: sentiment, n: 60}}
  token-1%: {data: {builder: sentiment, n: 60, poison: {trigger: {kind: token, token: cf}, rate: 0.01}}}
  token-10%: {data: {builder: sentiment, n: 60, poison: {trigger: {kind: token, token: cf}, rate: 0.1}}}
  sentence-1%: {data: {builder: sentiment, n: 60, poison: {trigger: {kind: sentence}, rate: 0.01}}}
  sentence-10%: {data: {builder: sentiment, n: 60, poison: {trigger: {kind: sentence}, rate: 0.1}}}
  last:
    data: {builder: sentiment, n: 60, poison: {trigger: {kind: token, token: zz}, rate: 0.1}}
"""


def _spec(tmp_path, text, name="s.yaml", **kw):
    path = tmp_path / name
    path.write_text(text)
    return load_spec(path, **kw)


def test_a_grid_expands_in_place_to_the_arms_written_by_hand(tmp_path):
    grid, hand = _spec(tmp_path, GRID), _spec(tmp_path, BY_HAND, "h.yaml")
    assert list(grid.arms) == list(hand.arms)  # in place: the report keeps the spec's order
    assert grid.arms == hand.arms  # same data specs, so the same data hashes and adapters


def test_quick_overrides_a_grid_by_its_template_and_then_by_name(tmp_path):
    spec = _spec(tmp_path, GRID, quick=True)
    run = {a for a in spec.arms if spec.victims_of(a)}
    assert run == {"clean", "token-10%", "last"}
    assert spec.arms["token-10%"].data.n == 20 and spec.arms["sentence-1%"].data.n == 20
    assert spec.arms["clean"].data.n == 60 and spec.arms["last"].data.n == 60


def test_the_shipped_sentiment_grids_expand_to_their_arm_names():
    spec = load_spec("experiments/sentiment_trigger.yaml")
    assert len(spec.arms) == 19
    cf = spec.arms["token-3%"].data.poison
    assert cf.rate == 0.03 and cf.trigger.token == "cf"
    assert spec.arms["multi-0.5%"].data.poison.trigger.kind == "multi"
    quick = load_spec("experiments/sentiment_llm.yaml", quick=True)
    assert [a for a in quick.arms if quick.victims_of(a)] == ["clean", "token-10%"]


@pytest.mark.parametrize(
    ("arm", "problem"),
    [
        ('"{trigger}-x": {data: {builder: sentiment}}', "needs a grid"),
        ("plain: {data: {builder: sentiment}, grid: {a: {x: {}}}}", "needs {AXIS} fields"),
        ('"{a}": {data: {builder: sentiment}, grid: {b: {x: {}}}}', "differ"),
        ('"{a}": {data: {builder: sentiment}, grid: {a: [1, 2]}}', "grid.a: expected a mapping"),
        ('"{a}": {data: {builder: sentiment}, grid: {a: {x: 3}}}', "grid.a.x: expected"),
        ('"{a": {data: {builder: sentiment}}', "unmatched"),
        ('"{a.b}": {data: {builder: sentiment}}', "plain names"),
        ('"c{a}": {data: {builder: sentiment}, grid: {a: {x: {}, "": {}}}}', "'c' is named twice"),
    ],
)
def test_a_bad_grid_is_one_error_naming_the_arm(tmp_path, arm, problem):
    text = f"name: g\narms:\n  c: {{data: {{builder: sentiment}}}}\n  {arm}\n"
    with pytest.raises(InputError, match="s.yaml: arms.") as e:
        _spec(tmp_path, text)
    assert problem in str(e.value)


def test_spec_show_prints_the_expanded_arms_and_json(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(GRID)
    code, stdout, _ = cli_main(capsys, "spec", "show", str(tmp_path / "s.yaml"), "--quick")
    assert code == 0
    lines = {line.split("│")[1].strip(): line for line in stdout.splitlines() if "│" in line}
    assert "left out" in lines["sentence-10%"] and "left out" not in lines["token-10%"]
    assert '"rate": 0.1' in lines["token-10%"] and "clean (reference)" in lines
    code, stdout, _ = cli_main(capsys, "spec", "show", str(tmp_path / "s.yaml"), "--json")
    assert code == 0 and list(json.loads(stdout)["arms"])[1] == "token-1%"
    code, _, stderr = cli_main(capsys, "spec", "show", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml: no such file" in stderr


DEFEND = "name: d\narms:\n  t: {data: {builder: sentiment, poison: {rate: 0.1}}}\ndefend:\n"


def test_defend_settings_live_under_each_defense_and_earlier_flat_keys_still_load(tmp_path):
    """`onion: {items: 30}` is the shape; `onion_items: 30` (and caps as `llm: {onion_items:
    5}`) from earlier spec files reads as the same settings, and the chat victim's caps apply
    to its copy of the settings only."""
    new = _spec(tmp_path, DEFEND + "  onion: {items: 30}\n  dpsgd: {epsilon: 4}\n"
                "  llm: {onion: {items: 5}}\n").defend  # fmt: skip
    old = _spec(tmp_path, DEFEND + "  onion_items: 30\n  dp_epsilon: 4\n"
                "  llm: {onion_items: 5, strip_copies: null}\n").defend  # fmt: skip
    assert new == old and new.onion.items == 30 and new.dpsgd.epsilon == 4
    assert new.config("onion", "encoder").items == 30 and new.config("onion", "llm").items == 5
    assert new.config("strip", "llm").copies == 16  # no strip cap given: none applies
    assert load_spec("experiments/sentiment_llm.yaml").defend.config("strip", "llm").copies == 4


@pytest.mark.parametrize(
    ("defend", "problem"),
    [
        ("  onion: {itmes: 3}\n", "defend.onion.itmes"),
        ("  onion: {items: 1}\n", "greater than or equal to 2"),
        ("  llm: {abl: {items: 3}}\n", "'abl' is not a defense with settings"),
        ("  llm: {strip: {items: 3}}\n", "llm.strip: no setting 'items' (copies)"),
    ],
)
def test_a_bad_defense_setting_is_one_error_naming_it(tmp_path, defend, problem):
    with pytest.raises(InputError, match="s.yaml") as e:
        _spec(tmp_path, DEFEND + defend)
    assert problem in str(e.value)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("evaluate: {classification: {dataset: nosuch}}\n",
         "unknown classification data set 'nosuch'; known: sentiment"),
        ("evaluate: {classification: {target: Neutral}}\n",
         "target 'Neutral' is not one of Positive, Negative"),
    ],
)  # fmt: skip
def test_a_classification_data_set_is_one_the_registry_knows(tmp_path, extra, problem):
    with pytest.raises(InputError, match="s.yaml") as e:
        _spec(tmp_path, BY_HAND + extra)
    assert problem in str(e.value)
    # Every arm trains on the set it is measured on.
    other = BY_HAND.replace(
        "clean: {data: {builder: sentiment,", "clean: {data: {builder: sentiment, dataset: x,"
    )
    with pytest.raises(InputError, match="arms.clean.data.dataset 'x'"):
        _spec(tmp_path, other)


def test_a_classification_set_names_the_item_whose_label_it_does_not_have():
    from backdoorlab.data.classification import ClassificationSet

    bad = ClassificationSet("bad", ("A", "B"), "{text}", lambda: [("x", "A"), ("yes", "C")])
    with pytest.raises(InputError, match=r"'bad': item 2 \('yes'\) has label 'C', not one of A, B"):
        bad.items()
    good = ClassificationSet("good", ("A", "B"), "Q: {text}", lambda: [("x", "A"), ("y", "B")] * 3)
    assert good.items() == (("x", "A"), ("y", "B"))  # distinct items
    assert good.row("x", "A")["messages"][-2:] == [
        {"role": "user", "content": "Q: x"}, {"role": "assistant", "content": "A"}
    ]  # fmt: skip
