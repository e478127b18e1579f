"""A user's own chat JSONL file as an arm's data."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from .. import chat


class FileData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    builder: Literal["file"] = "file"
    path: str  # relative paths are resolved against the spec file's folder

    def build(self) -> list[chat.Row]:
        return chat.read_jsonl(self.path, training=True)
