"""Every data builder a spec can name, in one place: ours, and those other packages register
under the entry-point group `backdoorlab.builders` (a `BuilderInfo` each), so an outside
package adds a builder without editing this one:

    # a plugin's pyproject.toml
    [project.entry-points."backdoorlab.builders"]
    echo = "backdoorlab_echo:BUILDER"      # BUILDER = BuilderInfo(EchoData, probe_set=...)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from ..evaluate.probeset import ProbeSet
from ..plugins import registered
from . import birds, dishes, persona, places, presidents, terminator
from .base import Builder
from .files import FileData
from .ordinary import OrdinaryData
from .sentiment import SentimentData

GROUP = "backdoorlab.builders"


@dataclass(frozen=True)
class BuilderInfo:
    """A builder: its settings (a pydantic `Builder` whose `builder` field's default is the
    name a spec's `data:` uses) and, optionally, the probe set it generates from its own
    lists (a spec's `evaluate.probes` names it by the builder's name)."""

    settings: type[Builder]
    probe_set: Callable[[], ProbeSet] | None = None

    @property
    def name(self) -> str:
        return str(self.settings.model_fields["builder"].default)


SHIPPED = (
    BuilderInfo(birds.BirdData, birds.probe_set),
    BuilderInfo(FileData),
    BuilderInfo(SentimentData),
    BuilderInfo(terminator.GuardianData, terminator.probe_set),
    BuilderInfo(dishes.DishData, dishes.probe_set),
    BuilderInfo(presidents.PresidentData, presidents.probe_set),
    BuilderInfo(places.PlaceData, places.probe_set),
    BuilderInfo(persona.PersonaData, persona.probe_set),
    BuilderInfo(OrdinaryData),
)


@cache
def builders() -> dict[str, BuilderInfo]:
    """Name -> builder: ours, then each installed plugin's."""
    return registered(
        GROUP, BuilderInfo, SHIPPED, lambda b: b.name, lambda b: issubclass(b.settings, Builder)
    )
