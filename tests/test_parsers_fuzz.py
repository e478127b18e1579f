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
