"""Model-side and training-side repairs of any victim (victims.Victim), through the layer map
of its architecture (victims/arch.py).

- Anti-backdoor-learning isolation (Li et al. 2021): poisoned rows are learned fastest, so
  after a short training their loss is the lowest; `learned_fast_scores` ranks rows by it.
- Trigger-direction ablation: the differences between each layer's hidden states on inputs
  with and without the trigger span a few directions per layer; `ablated` projects them out
  of every layer at inference. One direction at one layer is not enough: on a planted `zq`
  backdoor in the encoder (tests/test_defenses.py) projecting out the mean difference at any
  single layer, or even a 16-dimensional subspace, left ASR at 0.73-1.0, and so did 4
  directions at every layer estimated all at once; estimated layer by layer, each after the
  earlier ones are projected out, the top 1, 4 or 8 per layer brought it to 0.0 with clean
  accuracy 1.0.
- Fine-pruning (Liu et al. 2018): backdoor neurons sleep on clean inputs; `prune_dormant`
  cuts off the feed-forward neurons of a layer that clean data activates least (mean
  absolute activation: a gated decoder FFN's neurons are signed), then the caller fine-tunes
  on trusted clean data and prunes the same neurons again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..victims import arch


@torch.inference_mode()
def learned_fast_scores(victim: Any, texts: Sequence[str], labels: Sequence[str]) -> torch.Tensor:
    """log p(given label | text) under a briefly trained victim: high = learned fast."""
    probs = victim.proba(list(texts))
    idx = torch.tensor([victim.labels.index(y) for y in labels])
    return probs[torch.arange(len(idx)), idx].clamp_min(1e-12).log()


@torch.inference_mode()
def trigger_directions(
    victim: Any, clean: Sequence[str], triggered: Sequence[str], k: int = 4
) -> list[torch.Tensor]:
    """Per layer, an orthonormal basis (hidden x k) of the top `k` directions of the paired
    differences rep(triggered[i]) - rep(clean[i]) (the victim's pooled representation):
    `triggered[i]` is `clean[i]` with the trigger inserted. Layer by layer, each with the
    earlier layers' directions already projected out, so each basis holds what is left of the
    trigger. One forward pass does it: a hook at each block finds its basis from the pairs in
    the batch and projects it out before the next block reads it (a pass per layer, as
    before, took 30 passes on the chat model and 5 minutes on the planted test)."""
    kwargs, pool = victim.inputs([*clean, *triggered])
    n, bases = len(clean), []

    def hook(module, args, output):
        rep = pool(output[0] if isinstance(output, tuple) else output)
        vt = torch.linalg.svd((rep[n:] - rep[:n]).float(), full_matrices=False)[2]
        u = vt[: min(k, len(vt))].T.contiguous()
        bases.append(u)
        return _without(output, u)

    victim.model.eval()
    handles = [b.register_forward_hook(hook) for b in arch.layers(victim.model)]
    try:
        victim.model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return [u.cpu() for u in bases]


def _without(output: Any, u: torch.Tensor) -> Any:
    """A block's output (a tensor, or a tuple led by one) with the span of `u` projected out."""
    hidden = output[0] if isinstance(output, tuple) else output
    hidden = hidden - (hidden @ u.to(hidden.dtype)) @ u.T.to(hidden.dtype)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def ablated(victim: Any, bases: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block, every hidden state leaving layer i has the span of `bases[i]`
    projected out (layers past the last basis are left alone)."""
    device = next(victim.model.parameters()).device

    def hook_for(u: torch.Tensor):
        u = u.to(device)
        return lambda module, args, output: _without(output, u)

    blocks = arch.layers(victim.model)
    handles = [
        block.register_forward_hook(hook_for(u))
        for block, u in zip(blocks[: len(bases)], bases, strict=True)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()  # not inference mode: the returned indices are used on trainable weights
def prune_dormant(
    victim: Any,
    clean: Sequence[str] | None,
    fraction: float,
    layer: int = -1,
    neurons: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cut off the feed-forward neurons of `layer` that `clean` texts activate least, a
    `fraction` of them; or exactly `neurons` when given (to prune again after fine-tuning).
    Texts run one at a time, so no padding enters the means. Returns the pruned indices."""
    projection = arch.ffn_out(victim.model, layer)
    if neurons is None:
        total, count = torch.zeros(projection.in_features), 0

        def watch(module, args):
            nonlocal total, count
            a = args[0].detach().float().abs().flatten(0, -2)  # (tokens, neurons)
            total, count = total + a.sum(0).cpu(), count + len(a)

        handle = projection.register_forward_pre_hook(watch)
        try:
            for text in clean:
                victim.proba([text])
        finally:
            handle.remove()
        neurons = torch.argsort(total / max(1, count))[: round(fraction * len(total))]
    arch.zero_inputs(projection, neurons)
    return neurons
