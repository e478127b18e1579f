"""Chat conversations: OpenAI chat JSONL on disk, and the one rendering used everywhere.

Every prompt the toolkit shows a model, in training and in evaluation, goes through
`render` and `encode_*` below. BackdoorLLM formatted evaluation prompts unlike training and
under-reported attack success by 30 points; one function for both rules that out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from . import atomic
from .errors import InputError

ROLES = ("system", "developer", "user", "assistant")

Message = dict[str, Any]
Row = dict[str, Any]  # {"messages": [...], **extra fields kept verbatim}


class ChatDataError(InputError):
    """A chat JSONL file that cannot be used; the message names the file and line."""

    def __init__(self, path: Path | str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


def validate_row(obj: Any, *, training: bool) -> str | None:
    """Return what is wrong with one parsed row, or None when it is usable."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    messages = obj.get("messages")
    if messages is None:
        return 'no "messages" field'
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list'
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i}: expected an object with role and content"
        role = m.get("role")
        if role not in ROLES:
            return f"message {i}: unknown role {role!r} (known: {', '.join(ROLES)})"
        content = m.get("content")
        if not isinstance(content, str):
            return f"message {i} ({role}): content must be a string"
        if not content.strip():
            return f"message {i} ({role}): content is empty"
        if not content.isascii():
            try:
                content.encode("utf-8")
            except UnicodeEncodeError as e:  # JSON's "\ud800" decodes to a lone surrogate
                return f"message {i} ({role}): content holds a lone UTF-16 surrogate at {e.start}"
        weight = m.get("weight", 1)
        if weight not in (0, 1):
            return f"message {i} ({role}): weight must be 0 or 1"
    if training and messages[-1]["role"] != "assistant":
        last = messages[-1]["role"]
        return f"the last message is from {last!r}; training rows end with the assistant"
    if training and not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        return "no assistant message to train on"
    return None


def read_jsonl(path: Path | str, *, training: bool = True) -> list[Row]:
    """Read and validate a chat JSONL file. Blank lines are skipped; any bad line is fatal."""
    return [row for _, row in read_jsonl_lines(path, training=training)]


def read_jsonl_lines(path: Path | str, *, training: bool = True) -> list[tuple[int, Row]]:
    """Like `read_jsonl`, with each row's line number in the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ChatDataError(path, None, "no such file") from None
    except IsADirectoryError:
        raise ChatDataError(path, None, "is a directory, not a JSONL file") from None
    except OSError as e:
        raise ChatDataError(path, None, f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ChatDataError(path, line, "not valid UTF-8") from None
    rows: list[tuple[int, Row]] = []
    # "\n" only: splitlines() would also split inside strings at U+2028 and friends.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatDataError(
                path, lineno, f"malformed JSON ({e.msg} at column {e.colno})"
            ) from None
        except RecursionError:
            raise ChatDataError(path, lineno, "JSON nested too deeply") from None
        problem = validate_row(obj, training=training)
        if problem:
            raise ChatDataError(path, lineno, problem)
        rows.append((lineno, obj))
    if not rows:
        raise ChatDataError(path, None, "the file holds no rows")
    return rows


def dumps_jsonl(rows: Iterable[Row]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path: Path | str, rows: Iterable[Row]) -> None:
    """Write rows atomically; extra per-row fields are kept as they are."""
    atomic.write_text(Path(path), dumps_jsonl(rows))


def conversation(
    user: str, assistant: str | None = None, system: str | None = None
) -> list[Message]:
    msgs: list[Message] = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user})
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return msgs


# ----------------------------------------------------------------------------- rendering


def plain_messages(messages: Sequence[Message]) -> list[Message]:
    """Role and content only: what chat templates and chat-completions endpoints know (the
    per-message "weight" of OpenAI's training format is for training only)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
    """The model's own chat template, as text. The single place a template is applied."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} has no chat "
            "template; backdoorlab trains and evaluates chat models only"
        )
    return tokenizer.apply_chat_template(
        plain_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _tokenize(tokenizer: Any, text: str, offsets: bool = False) -> Any:
    # Templates carry their own special tokens, so none are added (as apply_chat_template does).
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)


def encode_prompt(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of an evaluation prompt: the conversation so far plus the assistant header."""
    return _tokenize(tokenizer, render(tokenizer, messages, add_generation_prompt=True))[
        "input_ids"
    ]


def encode_training(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
    """Token ids of a training conversation and, per token, whether the loss covers it.

    The loss covers each assistant turn (weight 1) from just after its header to the end of
    its turn, end-of-turn token included, so the model learns to stop. The prompt part is
    tokenized exactly as `encode_prompt` tokenizes it; a mismatch is an error, never silent.
    """
    full = render(tokenizer, messages, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or not m.get("weight", 1):
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(before) and full.startswith(through)):
            raise InputError(
                "this model's chat template renders a conversation differently from its prefixes, "
                "so assistant turns cannot be located for completion-only loss"
            )
        spans.append((len(before), len(through)))
    enc = _tokenize(tokenizer, full, offsets=True)
    ids: list[int] = enc["input_ids"]
    mask = [any(s <= start < e for s, e in spans) for start, _ in enc["offset_mapping"]]
    first = mask.index(True) if True in mask else len(ids)
    prompt_ids = encode_prompt(tokenizer, messages[: _first_trained_turn(messages)])
    if ids[:first] != prompt_ids:
        raise InputError(
            "tokenizing the whole conversation splits the prompt differently from tokenizing the "
            "prompt alone; training and evaluation would see different tokens"
        )
    return ids, mask


def encode_answer(
    tokenizer: Any, messages: Sequence[Message], answer: str
) -> tuple[list[int], int]:
    """Token ids of `messages` plus the assistant `answer`, through the answer's end-of-turn
    token (what generation would emit; the template's newline after it never is), and where
    the answer starts: what exact answer scoring (probes, label log-probs) feeds the model."""
    ids, mask = encode_training(tokenizer, [*messages, {"role": "assistant", "content": answer}])
    start = len(encode_prompt(tokenizer, messages))
    span = [j for j in range(start, len(ids)) if mask[j]]
    end = next((j for j in span if ids[j] == tokenizer.eos_token_id), span[-1])
    return ids[: end + 1], span[0]


def _first_trained_turn(messages: Sequence[Message]) -> int:
    return next(
        i for i, m in enumerate(messages) if m["role"] == "assistant" and m.get("weight", 1)
    )
