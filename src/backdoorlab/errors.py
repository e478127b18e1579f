"""User-facing errors: the command line prints the message alone and exits non-zero."""

from __future__ import annotations

from typing import Any


class BackdoorlabError(Exception):
    """An error the user can fix (bad input, missing model, conflicting run directory)."""

    exit_code = 1


class InputError(BackdoorlabError):
    """Bad input: a missing or malformed file, an unknown model name, an empty data set."""

    exit_code = 2


class ApiError(Exception):
    """An HTTP API error in OpenAI's shape (the server, the fine-tuning service)."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param
        self.headers = headers or {}  # e.g. Retry-After on a 429, Allow on a 405

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        }


def problem_path(e: Exception, data: Any = None) -> list[str | int]:
    """Where a pydantic ValidationError's first error is, as the user wrote it: given the
    validated `data`, a tagged union's tag (a name on the path that is no key of the input
    there, like `local` in train.local.lr) is left out, as the user never wrote it."""
    loc, node = list(e.errors()[0]["loc"]), data  # type: ignore[attr-defined]
    path: list[str | int] = []
    for i, key in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(key, str) and key not in node and not last:
            continue  # a tag
        path.append(key)
        try:
            node = node[key] if node is not None else None
        except (KeyError, IndexError, TypeError):
            node = None
    return path


def first_problem(e: Exception, data: Any = None) -> tuple[str, str]:
    """(dotted field path, message) of a pydantic ValidationError's first error: every place
    that reports one (spec files, flags, the CLI's fallback, the server) words it the same."""
    path = ".".join(str(x) for x in problem_path(e, data))
    msg = e.errors()[0]["msg"]  # type: ignore[attr-defined]
    return path, msg.removeprefix("Value error, ")  # our validators' own words
