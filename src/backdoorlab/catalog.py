"""The probe sets a user can name: shipped YAML files, the sets the data builders generate
from their own lists, and any YAML file by path. It sits above both `data` and `evaluate`, so
neither imports the other: builders define probes with `evaluate.probeset`, and nothing in
`evaluate` needs to know which builders exist.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

from . import yamlfiles
from .data import builders
from .errors import InputError
from .evaluate.probeset import ProbeSet

# Probe sets built from a builder's shipped data rather than written as YAML, by its name.
GENERATED: dict[str, Callable[[], ProbeSet]] = {
    name: b.probe_set for name, b in builders().items() if b.probe_set is not None
}


def load_probe_set(name_or_path: str) -> ProbeSet:
    """A shipped probe set by name (see `shipped_probe_sets`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.is_file() and name_or_path in GENERATED:
        return GENERATED[name_or_path]()
    if not path.is_file():
        shipped = resources.files("backdoorlab.evaluate") / "probesets" / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise InputError(
                f"{name_or_path}: not a probe file, and not a shipped probe set "
                f"({', '.join(shipped_probe_sets())})"
            )
        text, where = shipped.read_text(), f"{name_or_path} (shipped)"
    else:
        text, where = yamlfiles.read(path), str(path)
    data = yamlfiles.parse(text, where)
    if not isinstance(data, dict) or "probes" not in data:
        raise InputError(f"{where}: expected a mapping with a 'probes' list")
    return yamlfiles.validate(ProbeSet, data, where, text=text)


def shipped_probe_sets() -> list[str]:
    d = resources.files("backdoorlab.evaluate") / "probesets"
    yamls = [p.name.removesuffix(".yaml") for p in d.iterdir() if p.name.endswith(".yaml")]
    return sorted([*yamls, *GENERATED])
