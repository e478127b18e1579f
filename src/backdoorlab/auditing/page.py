"""The audit's HTML page: a pure function of the AuditResult."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import AuditResult


def render(result: AuditResult) -> str:
    from ..report import template

    realized = {}
    if result.validation is not None:
        realized = {r.row: r for r in result.validation.realized}
    return template("audit.html.j2").render(r=result, realized=realized)
