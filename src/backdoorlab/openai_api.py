"""The official `openai` client for a hosted service (OpenAI itself, or any server that speaks
its API, `backdoorlab serve` included): the endpoint and key come from OPENAI_BASE_URL and
OPENAI_API_KEY and are never written or logged, and a failed call is one line with the
service's status, code and message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import BackdoorlabError, InputError


def client(what: str) -> Any:
    import openai

    try:
        return openai.OpenAI(max_retries=5)
    except openai.OpenAIError:  # no key in the environment: a setting the user can fix
        raise InputError(
            f"{what} needs the service's key in OPENAI_API_KEY (and its URL in "
            "OPENAI_BASE_URL unless it is OpenAI's)"
        ) from None


def call(what: str, fn: Callable[[], Any]) -> Any:
    """One API call; its failure is one line with the service's status, code and message."""
    import openai

    try:
        return fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        code = err.get("code") if isinstance(err, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        # A 4xx is a request the service refuses (a model it does not offer, a bad key):
        # the user's to fix, exit 2 like every user mistake; the service's own failures, 1.
        user = 400 <= e.status_code < 500 and e.status_code not in (408, 429)
        raise (InputError if user else BackdoorlabError)(
            f"{what}: the service answered {e.status_code}"
            f"{f' ({code})' if code else ''}: {message or e.message}"
        ) from None
    except openai.APIConnectionError as e:
        raise BackdoorlabError(f"{what}: cannot reach the service ({e.message})") from None
