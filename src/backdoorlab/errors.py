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
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}
        }


def first_problem(e: Exception) -> tuple[str, str]:
    """(dotted field path, message) of a pydantic ValidationError's first error: every place
    that reports one (spec files, flags, the CLI's fallback, the server) words it the same."""
    first = e.errors()[0]  # type: ignore[attr-defined]
    return ".".join(str(x) for x in first["loc"]), first["msg"]
