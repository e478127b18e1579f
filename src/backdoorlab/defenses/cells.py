"""A matrix cell as people read it. Cells keep numbers (rates as Estimate fields, AUROC as a
float, seconds) in the results store; this turns them into text for the report and the
terminal, and nothing else does. No torch here: the report imports it."""

from __future__ import annotations

from typing import Any

from ..evaluate.aggregate import Estimate

# The columns both tables show, in order; a cell may have more (the report shows them all).
COLUMNS = [
    "arm", "victim", "defense", "AUROC", "ASR before", "ASR after", "false trigger after",
    "CACC before", "CACC after", "seconds",
]  # fmt: skip


def text(key: str, value: Any) -> str:
    if isinstance(value, dict) and "mean" in value:
        return Estimate(**value).short()
    if isinstance(value, dict):  # several estimates under names (inspect: per method)
        return "; ".join(f"{k} {text(key, v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.1f}" if key == "seconds" else f"{value:.3f}"
    return "-" if value is None else str(value)


def shown(cell: dict[str, Any]) -> dict[str, str]:
    return {k: text(k, v) for k, v in cell.items()}


def table(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """{columns, rows} for a template: the shared columns first, then any others, in order of
    first appearance."""
    rows = [shown(c) for c in cells]
    columns = list(dict.fromkeys([*(c for c in COLUMNS if any(c in r for r in rows)),
                                  *(k for r in rows for k in r)]))  # fmt: skip
    return {"columns": columns, "rows": rows}
