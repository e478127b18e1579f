"""Settings given one by one (command-line flags, keyword arguments) over a config: the ones
left unset (None) keep the config's value, and a bad value is one line naming its setting."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from .errors import InputError

M = TypeVar("M", bound=BaseModel)


def given(values: dict[str, object]) -> dict[str, object]:
    """The settings a user set: unset ones (None) left out, inside nested settings too."""
    return {k: given(v) if isinstance(v, dict) else v for k, v in values.items() if v is not None}


def override(cls: type[M], /, base: M | None = None, **values: object) -> M:
    """A config from `values` over `base` (default: the config's defaults)."""
    try:
        return cls.model_validate({**(base.model_dump() if base else {}), **given(values)})
    except ValidationError as e:
        first = e.errors()[0]
        # Field names make the flag (lora.rank: --lora-rank); list positions do not.
        flag = "--" + "-".join(x for x in first["loc"] if isinstance(x, str)).replace("_", "-")
        raise InputError(f"{flag} {first['input']!r}: {first['msg']}") from None
