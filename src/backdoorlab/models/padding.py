"""Left-padded batches for a causal LM: every row ends at the last column, where generation
continues and where answer tokens sit for scoring."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def left_pad(
    rows: Sequence[Sequence[int]], pad: int, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-id rows as one batch: ids, attention mask, and position ids that start at 0 on
    each row's first real token (so the padding in front does not shift positions)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)
