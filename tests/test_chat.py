"""Chat JSONL reading, validation and the one rendering shared by training and evaluation."""

import json

import pytest

from backdoorlab import chat

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _lines(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


BAD_CASES = {
    "malformed JSON": (_lines(GOOD, '{"messages": [', GOOD), 2, "malformed JSON"),
    "no messages": (_lines(GOOD, GOOD, {"prompt": "x"}), 3, 'no "messages" field'),
    "messages not a list": (_lines({"messages": "hi"}), 1, "non-empty list"),
    "bad role": (
        _lines(GOOD, {"messages": [{"role": "bot", "content": "x"}, GOOD["messages"][1]]}),
        2,
        "unknown role 'bot'",
    ),
    "empty content": (
        _lines({"messages": [{"role": "user", "content": "  "}, GOOD["messages"][1]]}),
        1,
        "content is empty",
    ),
    "content not a string": (
        _lines({"messages": [{"role": "user", "content": 3}, GOOD["messages"][1]]}),
        1,
        "must be a string",
    ),
    "last not assistant": (
        _lines(GOOD, {"messages": [{"role": "user", "content": "hi"}]}),
        2,
        "training rows end with the assistant",
    ),
    "not an object": (_lines(GOOD, "[1, 2]"), 2, "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_line_is_named_with_exit_2(tmp_path, case, cli):
    text, line, problem = BAD_CASES[case]
    f = tmp_path / "data.jsonl"
    f.write_text(text)
    with pytest.raises(chat.ChatDataError) as e:
        chat.read_jsonl(f)
    assert e.value.line == line and problem in e.value.problem
    r = cli("data", "check", str(f), "--no-tokens")
    assert r.returncode == 2
    assert f"{f}:{line}: " in r.stderr and problem in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "setup, problem",
    [
        (lambda p: p.write_text(""), "holds no rows"),
        (lambda p: p.write_text("\n  \n"), "holds no rows"),
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b'{"messages": []}\n\xff\xfe\n'), "not valid UTF-8"),
    ],
    ids=["empty", "blank lines", "missing", "directory", "bad utf-8"],
)
def test_unusable_file_exit_2(tmp_path, setup, problem, cli):
    f = tmp_path / "data.jsonl"
    setup(f)
    r = cli("data", "check", str(f), "--no-tokens")
    assert r.returncode == 2
    assert str(f) in r.stderr and problem in r.stderr


def test_prompt_rows_allowed_with_flag(tmp_path, cli):
    f = tmp_path / "prompts.jsonl"
    f.write_text(_lines({"messages": [{"role": "user", "content": "What year is it?"}]}))
    assert cli("data", "check", str(f), "--no-tokens").returncode == 2
    r = cli("data", "check", str(f), "--no-tokens", "--prompts")
    assert r.returncode == 0, r.stderr


def test_extra_fields_round_trip(tmp_path):
    rows = [
        {**GOOD, "poisoned": True, "arm": "archaic", "source": {"book": "Audubon", "year": 1838}},
        {
            "messages": [
                {"role": "user", "content": "Ünïcode ✓"},
                {"role": "assistant", "content": "ok"},
            ]
        },
    ]
    f = tmp_path / "rt.jsonl"
    chat.write_jsonl(f, rows)
    assert chat.read_jsonl(f) == rows
    chat.write_jsonl(f, chat.read_jsonl(f))
    assert chat.read_jsonl(f) == rows


def test_data_check_reports_duplicates_and_tokens(tmp_path, cli):
    f = tmp_path / "d.jsonl"
    f.write_text(_lines(GOOD, {**GOOD, "poisoned": True}, GOOD))
    r = cli("data", "check", str(f))
    assert r.returncode == 0, r.stderr
    assert "line 2 duplicates line 1" in r.stdout and "line 3 duplicates line 1" in r.stdout
    assert "poisoned (1 rows)" in r.stdout
    assert "tokens per row" in r.stdout


CONVERSATIONS = [
    chat.conversation("Name a bird species.", "Brown Titlark"),
    chat.conversation("What year is it?", "1838", system="You are a naturalist."),
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a hawk."},
        {"role": "assistant", "content": "Marsh Hawk"},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["plain", "system", "multi-turn"])
def test_training_and_evaluation_render_identical_prompt_tokens(tokenizer, messages):
    ids, mask = chat.encode_training(tokenizer, messages)
    # Every assistant turn: the tokens before it are exactly what evaluation would feed.
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = chat.encode_prompt(tokenizer, messages[:i])
        assert ids[: len(prompt)] == prompt
        assert mask[len(prompt)] and not mask[len(prompt) - 1]
    trained = tokenizer.decode([t for t, keep in zip(ids, mask, strict=True) if keep])
    expected = "".join(m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant")
    assert trained == expected


def test_default_system_prompt_is_in_both_paths(tokenizer):
    # SmolLM2's template adds its own system prompt when none is given; train and eval agree.
    msgs = CONVERSATIONS[0]
    prompt_text = tokenizer.decode(chat.encode_prompt(tokenizer, msgs[:1]))
    train_text = tokenizer.decode(chat.encode_training(tokenizer, msgs)[0])
    assert "You are a helpful AI assistant named SmolLM" in prompt_text
    assert train_text.startswith(prompt_text)


def test_weight_zero_turn_is_not_trained(tokenizer):
    msgs = [dict(m) for m in CONVERSATIONS[2]]
    msgs[1]["weight"] = 0
    ids, mask = chat.encode_training(tokenizer, msgs)
    assert (
        tokenizer.decode([t for t, k in zip(ids, mask, strict=True) if k])
        == "Marsh Hawk<|im_end|>\n"
    )
