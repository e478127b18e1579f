"""How well a model fits its own training rows: the generic in-domain gate.

For each row, the last assistant turn is scored by teacher forcing under the training chat
template (`chat.encode_answer`, end-of-turn token included): its summed log-probability, its
token count, and whether greedy decoding would produce it exactly (the argmax at every answer
position is the trained token, which teacher forcing decides in one forward pass, with no
generation). Needs no experiment-specific probe, so a user's own data file is gated too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import chat
from ..models.padding import left_pad


@torch.inference_mode()
def answer_fit(
    model: Any, tokenizer: Any, rows: Sequence[chat.Row], *, batch_size: int = 16
) -> list[tuple[bool, float, int]]:
    """(greedy answer == trained answer, log p(answer), answer tokens) for every row."""
    seqs = []
    for row in rows:
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        seqs.append(chat.encode_answer(tokenizer, messages[:last], messages[last]["content"]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # little padding per batch
    out: dict[int, tuple[bool, float, int]] = {}
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        # Left padding puts every answer at the end, so only the last `keep` positions reach
        # the output head (the vocabulary projection is most of the cost of a short row).
        keep = max(len(seqs[i][0]) - seqs[i][1] for i in idx) + 1
        ids, mask, positions = left_pad([seqs[i][0] for i in idx], pad, device)
        logp = (
            model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                logits_to_keep=keep,
            )
            .logits.float()
            .log_softmax(-1)
        )  # position k of the kept window predicts token k + 1
        for k, i in enumerate(idx):
            x, start = seqs[i]
            n = len(x) - start
            target = torch.tensor(x[start:], device=device)
            pred = logp[k, keep - n - 1 : keep - 1]
            greedy = bool((pred.argmax(-1) == target).all())
            out[i] = (greedy, pred.gather(-1, target[:, None]).sum().item(), n)
    return [out[i] for i in range(len(seqs))]
