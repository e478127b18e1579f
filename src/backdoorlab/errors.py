"""User-facing errors: the command line prints the message alone and exits non-zero."""


class BackdoorlabError(Exception):
    """An error the user can fix (bad input, missing model, conflicting run directory)."""

    exit_code = 1


class InputError(BackdoorlabError):
    """Bad input: a missing or malformed file, an unknown model name, an empty data set."""

    exit_code = 2


def first_problem(e: Exception) -> tuple[str, str]:
    """(dotted field path, message) of a pydantic ValidationError's first error: every place
    that reports one (spec files, flags, the CLI's fallback, the server) words it the same."""
    first = e.errors()[0]  # type: ignore[attr-defined]
    return ".".join(str(x) for x in first["loc"]), first["msg"]
