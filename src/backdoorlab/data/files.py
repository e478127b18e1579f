"""A user's own chat JSONL file as an arm's data."""

from __future__ import annotations

from typing import Literal

from .. import chat
from .base import Builder, Context


class FileData(Builder):
    builder: Literal["file"] = "file"
    path: str  # relative paths are resolved against the spec file's folder

    def build(self, ctx: Context | None = None) -> list[chat.Row]:
        return chat.read_jsonl(self.path, training=True)
