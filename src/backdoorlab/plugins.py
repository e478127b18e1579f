"""Extension points: what other packages register under an entry-point group (a data builder,
a classification data set, a defense), merged with ours, with one clear line for a plugin that cannot be
loaded, is not the kind of object its group takes, or takes a name already in use."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import TypeVar

from .errors import InputError

T = TypeVar("T")


def registered(
    group: str, kind: type[T], shipped: Iterable[T], name: Callable[[T], str],
    valid: Callable[[T], bool] = lambda _: True,
) -> dict[str, T]:  # fmt: skip
    """Name -> entry: ours, then each installed plugin's (objects of `kind` that pass `valid`)."""
    found = {name(x): x for x in shipped}
    for ep in entry_points(group=group):
        where = f"plugin {ep.name!r} ({ep.value}, entry point group {group})"
        try:
            x = ep.load()
        except Exception as e:  # a broken plugin is its package's mistake: say which
            raise InputError(f"{where}: cannot load it ({type(e).__name__}: {e})") from None
        if not isinstance(x, kind) or not valid(x):
            raise InputError(f"{where}: not a {kind.__module__}.{kind.__qualname__}")
        if name(x) in found:
            raise InputError(f"{where}: the name {name(x)!r} is taken")
        found[name(x)] = x
    return found
