"""Data builders: each writes an arm's training rows from settings in an experiment spec.

A builder is a pydantic model with a `builder` name and a `build() -> rows` method; the spec's
`data:` entry picks one by that name.
"""

from typing import Annotated

from pydantic import Field

from .birds import BirdData
from .files import FileData
from .sentiment import SentimentData

DataSpec = Annotated[BirdData | FileData | SentimentData, Field(discriminator="builder")]

__all__ = ["BirdData", "DataSpec", "FileData", "SentimentData"]
