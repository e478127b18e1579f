"""Data builders: each writes an arm's training rows from settings in an experiment spec.

A builder is a pydantic model with a `builder` name and a `build() -> rows` method; the spec's
`data:` entry picks one by that name from the registry (`registry.py`: ours and plugins').
"""

from typing import Annotated, Union

from pydantic import Field

from .birds import BirdData
from .dishes import DishData
from .files import FileData
from .ordinary import OrdinaryData
from .persona import PersonaData
from .places import PlaceData
from .presidents import PresidentData
from .registry import BuilderInfo, builders
from .sentiment import SentimentData
from .terminator import GuardianData

# A spec's `data:` entry: whichever registered builder its `builder` field names.
DataSpec = Annotated[
    Union[tuple(b.settings for b in builders().values())],  # noqa: UP007 (built at run time)
    Field(discriminator="builder"),
]

__all__ = [
    "BirdData",
    "BuilderInfo",
    "DataSpec",
    "DishData",
    "FileData",
    "GuardianData",
    "OrdinaryData",
    "PersonaData",
    "PlaceData",
    "PresidentData",
    "SentimentData",
    "builders",
]
