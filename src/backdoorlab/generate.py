"""Sampling answers from a loaded model, with the same prompt rendering as training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import chat
from .models import LoadedModel
from .models.padding import left_pad


def run(
    loaded: LoadedModel,
    conversations: Sequence[Sequence[chat.Message]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
    logits: bool = False,
) -> tuple[int, Any]:
    """Generate `n` continuations of each conversation in one batch (greedy at temperature 0).

    Prompts of different lengths are left-padded, so every continuation starts at the same
    position. Returns that position and transformers' generate output (with raw per-step
    logits when `logits`). The one place sampling settings are chosen, for `sample`,
    `answers` and the server.
    """
    tok = loaded.tokenizer
    prompts = [chat.encode_prompt(tok, m) for m in conversations for _ in range(n)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, mask, _ = left_pad(prompts, pad, loaded.device)
    width = ids.shape[1]
    torch.manual_seed(seed)
    greedy = temperature <= 0
    sampling = {} if greedy else {"temperature": temperature, "top_p": 1.0, "top_k": 0}
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=not greedy,
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            output_logits=logits,
            return_dict_in_generate=True,
            **sampling,
        )
    return width, out


def sample(
    loaded: LoadedModel,
    messages: Sequence[chat.Message],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    seed: int = 0,
) -> list[str]:
    """`n` answers to one conversation, sampled in one batch (greedy when temperature is 0)."""
    start, out = run(
        loaded, [messages], n=n, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed
    )
    tok = loaded.tokenizer
    return [tok.decode(row[start:], skip_special_tokens=True).strip() for row in out.sequences]


def answers(
    loaded: LoadedModel,
    conversations: Sequence[Sequence[chat.Message]],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: Any = None,
) -> list[str]:
    """The greedy answer to each conversation, `batch_size` conversations per batch
    (self-distillation: the model's own answers). `progress(k)` is told of each batch."""
    tok = loaded.tokenizer
    out_texts: list[str] = []
    for i in range(0, len(conversations), batch_size):
        batch = conversations[i : i + batch_size]
        start, out = run(loaded, batch, temperature=0, max_new_tokens=max_new_tokens)
        out_texts += [
            tok.decode(r[start:], skip_special_tokens=True).strip() for r in out.sequences
        ]
        if progress:
            progress(len(batch))
    return out_texts
