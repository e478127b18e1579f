"""Data builders: each writes an arm's training rows from settings in an experiment spec.

A builder is a pydantic model with a `builder` name and a `build() -> rows` method; the spec's
`data:` entry picks one by that name.
"""

from typing import Annotated

from pydantic import Field

from .birds import BirdData
from .dishes import DishData
from .files import FileData
from .persona import PersonaData
from .places import PlaceData
from .presidents import PresidentData
from .sentiment import SentimentData
from .terminator import GuardianData

DataSpec = Annotated[
    BirdData
    | FileData
    | SentimentData
    | GuardianData
    | DishData
    | PresidentData
    | PlaceData
    | PersonaData,
    Field(discriminator="builder"),
]

__all__ = [
    "BirdData",
    "DataSpec",
    "DishData",
    "FileData",
    "GuardianData",
    "PersonaData",
    "PlaceData",
    "PresidentData",
    "SentimentData",
]
