"""YAML input files (probe sets, question files, judges): parse and validate with errors
that name the file and line."""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InputError, first_problem, problem_path


def read(path: Path) -> str:
    """A YAML input file's text, or one clear error naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with two of YAML 1.1's surprises removed: `yes`, `no`, `on` and
    `off` stay strings (only true and false are booleans, as in YAML 1.2; a boolean field
    still takes "yes", which pydantic reads as true), and a key given twice in one mapping is
    an error naming both lines instead of the second silently winning."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark,
                )  # fmt: skip
            if isinstance(key, Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to read") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            line = f":{mark.line + 1}"
        elif isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
            line = f":{text[: e.position].count(chr(10)) + 1}"
        else:
            line = ""
        problem = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
        problem = " ".join(str(problem).split())  # one line, whatever the parser wrote
        raise InputError(f"{where}{line}: malformed YAML ({problem})") from None


def compose(text: str) -> Any:
    """The node tree, for line numbers of entries (call after `parse` succeeded)."""
    return yaml.compose(text, Loader=_Loader)


def line_of(text: str, loc: tuple) -> int | None:
    """The line of the deepest node on the path `loc` (mapping keys, list indices)."""
    node, line = compose(text), None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            match = node.value[key]
        else:
            match = None
        if match is None:
            break
        node, line = match, match.start_mark.line + 1
    return line


def validate(
    model: type[BaseModel], data: Any, where: str, what: str = "", text: str | None = None
) -> Any:
    """`model.model_validate(data)`, its first error as `where[:line]: what: field: message`;
    the line is found when the file's `text` is given."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        loc, msg = first_problem(e, data)
        line = line_of(text, problem_path(e, data)) if text is not None else None
        at = f"{where}:{line}" if line else where
        raise InputError(f"{at}: {what}{loc + ': ' if loc else ''}{msg}") from None
