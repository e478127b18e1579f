"""A classifier's hidden states pooled to one row per text, batch by batch: the `features`
of every victim kind (here, below `victims` and `train`, so both can use it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ..victims import Victim


def pooled(victim: Victim, texts: Sequence[str], layer: int, batch_size: int) -> torch.Tensor:
    """`features` for any victim: its pooling of block `layer`'s hidden states
    (hidden_states[0] is the embeddings), batch by batch."""
    victim.model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            kwargs, pool = victim.inputs(texts[i : i + batch_size])
            hidden = victim.model(**kwargs, output_hidden_states=True).hidden_states
            out.append(pool(hidden[layer + 1] if layer >= 0 else hidden[layer]))
    return torch.cat(out)
