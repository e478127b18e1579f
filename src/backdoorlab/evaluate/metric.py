"""Classification metrics as fields, shared by evaluation, the store and the report (no
torch here: the report and the store import it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["CACC", "ASR", "false trigger"]


@dataclass(frozen=True)
class Metric:
    """CACC, or the ASR / false-trigger rate of one trigger."""

    kind: Kind
    trigger: str | None = None

    @property
    def label(self) -> str:
        """The metric's name for people (report rows, gates and headlines use it)."""
        return self.kind if self.trigger is None else f"{self.kind}: {self.trigger}"


CACC = Metric("CACC")
