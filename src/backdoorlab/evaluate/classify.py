"""The chat model as a classifier (the metrics themselves are metric.py).

The chat model classifies by exact label log-probabilities: each label is scored as the full
assistant answer (end of turn included) under the very template training used, and the best
label wins; no generation, no parsing. Many reviews are scored per batch, left-padded so the
label tokens of every row sit at the end and only those positions reach the output head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import chat


@torch.inference_mode()
def label_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[chat.Message]],
    labels: Sequence[str],
    *,
    batch_size: int = 32,
) -> torch.Tensor:
    """log p(label | prompt) for every prompt x label: a (len(prompts), len(labels)) tensor."""
    seqs: list[tuple[list[int], int]] = [
        chat.encode_answer(tokenizer, p, label) for p in prompts for label in labels
    ]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i : i + batch_size]
        width = max(len(ids) for ids, _ in batch)
        keep = max(len(ids) - start for ids, start in batch) + 1  # label tokens + the one before
        ids = torch.tensor([[pad] * (width - len(x)) + x for x, _ in batch], device=device)
        mask = torch.tensor(
            [[0] * (width - len(x)) + [1] * len(x) for x, _ in batch], device=device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits.float()
        logp = logits.log_softmax(-1)  # position k of the kept window predicts token k+1
        for row, (x, start) in enumerate(batch):
            n = len(x) - start  # label tokens, at the end of the row
            targets = ids[row, width - n :]
            pred = logp[row, keep - n - 1 : keep - 1]
            out.append(pred.gather(-1, targets[:, None]).sum().item())
    return torch.tensor(out).view(len(prompts), len(labels))


def llm_predict(
    loaded: Any, texts: Sequence[str], labels: Sequence[str], prompt: Callable[[str], list]
) -> list[str]:
    lp = label_logprobs(loaded.model, loaded.tokenizer, [prompt(t) for t in texts], labels)
    return [labels[i] for i in lp.argmax(-1).tolist()]
