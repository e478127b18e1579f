"""Model registry (bundled names, cache) and loaders.

The loaders need torch and are imported on first use, so code that only asks the registry
(a data builder finding a wheel's file, the spec's default model name) stays torch-free.
"""

from typing import TYPE_CHECKING, Any

from .registry import BUNDLED, DEFAULT_MODEL, fingerprint, resolve

if TYPE_CHECKING:
    from .loading import LoadedModel, load, load_base, load_tokenizer, pick_device

_LOADERS = {"LoadedModel", "load", "load_base", "load_tokenizer", "pick_device"}


def __getattr__(name: str) -> Any:
    if name in _LOADERS:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "LoadedModel",
    "fingerprint",
    "load",
    "load_base",
    "load_tokenizer",
    "pick_device",
    "resolve",
]
