"""Random bytes and random structures into every reader of user files: the only exception
that may come out is our InputError (one line naming the file), never anything else."""

import json

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backdoorlab import chat
from backdoorlab.catalog import load_probe_set
from backdoorlab.errors import InputError
from backdoorlab.evaluate.questions import load_questions
from backdoorlab.spec import load_spec

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
keys = st.sampled_from(
    ["messages", "role", "content", "weight", "id", "type", "paraphrases", "judges", "name",
     "arms", "data", "builder", "path", "train", "epochs", "evaluate", "probes", "seeds",
     "patterns", "default", "labels", "model", "gates", "headline", "user", "assistant"]
) | st.text(max_size=6)  # fmt: skip
structures = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(keys, kids, max_size=5),
    max_leaves=20,
)


def _only_input_errors(read, path) -> None:
    try:
        read(path)
    except InputError as e:
        assert str(path) in str(e) and "\n" not in str(e).strip()


@FUZZ
@given(data=st.binary(max_size=300))
def test_chat_reader_on_random_bytes(tmp_path, data):
    f = tmp_path / "d.jsonl"
    f.write_bytes(data)
    _only_input_errors(chat.read_jsonl, f)


@FUZZ
@given(rows=st.lists(structures, min_size=1, max_size=4))
def test_chat_reader_on_random_json(tmp_path, rows):
    f = tmp_path / "d.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _only_input_errors(chat.read_jsonl, f)


def _yaml_cases(reader):
    @FUZZ
    @given(data=st.binary(max_size=300) | structures.map(lambda s: yaml.safe_dump(s).encode()))
    def case(tmp_path, data):
        f = tmp_path / "f.yaml"
        f.write_bytes(data)
        _only_input_errors(reader, f)

    return case


test_spec_loader_fuzz = _yaml_cases(load_spec)
test_question_loader_fuzz = _yaml_cases(load_questions)
test_probe_loader_fuzz = _yaml_cases(load_probe_set)


# Lone UTF-16 surrogates (JSON's "\ud800" decodes to one) inside otherwise ordinary text.
lone = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
surrogate_text = st.lists(lone | st.characters(), min_size=1, max_size=8).map("".join)
depth = st.integers(min_value=1, max_value=200_000)
# Deep inputs are slow to build and read: fewer examples, the depths that matter (around
# and past Python's recursion limit of 1,000) drawn often.
DEEP = settings(FUZZ, max_examples=25)


@DEEP
@given(depth=depth, opener=st.sampled_from(["[", '{"messages": ', '{"a": [']))
def test_chat_reader_on_deep_nesting(tmp_path, depth, opener):
    f = tmp_path / "d.jsonl"
    f.write_text(opener * depth + "\n")
    _only_input_errors(chat.read_jsonl, f)


@FUZZ
@given(role=st.sampled_from(["user", "assistant", "system"]), text=surrogate_text)
def test_chat_reader_on_lone_surrogates(tmp_path, role, text):
    row = {"messages": [{"role": role, "content": text}, {"role": "assistant", "content": "x"}]}
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(row) + "\n")  # ensure_ascii: the surrogate travels as \\udXXX
    _only_input_errors(chat.read_jsonl, f)


def _yaml_depth_cases(reader):
    @DEEP
    @given(depth=st.integers(min_value=1, max_value=5_000), kind=st.sampled_from(["[", "{a: "]))
    def case(tmp_path, depth, kind):
        f = tmp_path / "f.yaml"
        f.write_text(kind * depth + ("]" if kind == "[" else "}") * depth + "\n")
        _only_input_errors(reader, f)

    return case


test_spec_loader_depth = _yaml_depth_cases(load_spec)
test_question_loader_depth = _yaml_depth_cases(load_questions)
test_probe_loader_depth = _yaml_depth_cases(load_probe_set)


@DEEP
@given(text=surrogate_text, depth=depth)
def test_chat_endpoint_parser_answers_4xx(text, depth):
    """What the server does with a body before any model: a 4xx ApiError or a request."""
    from backdoorlab.serve import ApiError, parse_request

    bodies = [
        json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]}).encode(),
        b'{"model": "m", "messages": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": '
        + json.dumps(text).encode()
        + b"}]}]}",
    ]
    for body in bodies:
        try:
            parse_request(body, ["m"])
        except ApiError as e:
            assert 400 <= e.status < 500
