"""Model-side and training-side repairs of an encoder victim (a BERT-style classifier).

- Anti-backdoor-learning isolation (Li et al. 2021): poisoned rows are learned fastest, so
  after one epoch their loss is the lowest; `learned_fast_scores` ranks rows by it.
- Trigger-direction ablation: the differences between each layer's hidden states on inputs
  with and without the trigger span a few directions per layer; `ablated` projects them out
  of every layer at inference. One direction at one layer is not enough: on a planted `zq`
  backdoor (tests/test_defenses.py) projecting out the mean difference at any single layer,
  or even a 16-dimensional subspace, left ASR at 0.73-1.0, and so did 4 directions at every
  layer estimated all at once; estimated layer by layer, each after the earlier ones are
  projected out, the top 1, 4 or 8 per layer brought it to 0.0 with clean accuracy 1.0.
- Fine-pruning (Liu et al. 2018): backdoor neurons sleep on clean inputs; `prune_dormant`
  zeroes the feed-forward neurons of a layer that clean data activates least (then the caller
  fine-tunes on trusted clean data and prunes the same neurons again).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..train.encoder import EncoderClassifier


@torch.inference_mode()
def learned_fast_scores(
    clf: EncoderClassifier, texts: Sequence[str], labels: Sequence[str]
) -> torch.Tensor:
    """log p(given label | text) under a briefly trained model: high = learned fast."""
    probs = clf.proba(list(texts))
    idx = torch.tensor([clf.labels.index(y) for y in labels])
    return probs[torch.arange(len(idx)), idx].clamp_min(1e-12).log()


def _layers(clf: EncoderClassifier) -> torch.nn.ModuleList:
    return clf.model.base_model.encoder.layer


@torch.inference_mode()
def _pooled(clf: EncoderClassifier, texts: Sequence[str], layer: int) -> torch.Tensor:
    """Mean-pooled hidden states after `layer` (0-based), one row per text."""
    clf.model.eval()
    out = []
    for i in range(0, len(texts), 64):
        enc = clf._enc(list(texts[i : i + 64]))
        hidden = clf.model.base_model(**enc, output_hidden_states=True).hidden_states[layer + 1]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(out)


def trigger_directions(
    clf: EncoderClassifier, clean: Sequence[str], triggered: Sequence[str], k: int = 4
) -> list[torch.Tensor]:
    """Per layer, an orthonormal basis (hidden x k) of the top `k` directions of the paired
    differences hidden(triggered[i]) - hidden(clean[i]) (mean-pooled): `triggered[i]` is
    `clean[i]` with the trigger inserted. Layer by layer, each with the earlier layers'
    directions already projected out, so each basis holds what is left of the trigger."""
    bases: list[torch.Tensor] = []
    for layer in range(len(_layers(clf))):
        with ablated(clf, bases):
            diff = _pooled(clf, triggered, layer) - _pooled(clf, clean, layer)
        vt = torch.linalg.svd(diff.float(), full_matrices=False)[2]
        bases.append(vt[: min(k, len(vt))].T.contiguous())
    return bases


@contextmanager
def ablated(clf: EncoderClassifier, bases: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block, every hidden state leaving layer i has the span of `bases[i]`
    projected out (layers past the last basis are left alone)."""

    def hook_for(u: torch.Tensor):
        u = u.to(clf.device)

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden - (hidden @ u) @ u.T
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    handles = [
        layer.register_forward_hook(hook_for(u))
        for layer, u in zip(_layers(clf)[: len(bases)], bases, strict=True)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()  # not inference mode: the returned indices are used on trainable weights
def prune_dormant(
    clf: EncoderClassifier,
    clean: Sequence[str] | None,
    fraction: float,
    layer: int = -1,
    neurons: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero the feed-forward neurons of `layer` that `clean` texts activate least (their mean
    activation, padding excluded), `fraction` of them; or exactly `neurons` when given (to
    prune again after fine-tuning). Returns the pruned neuron indices."""
    block = _layers(clf)[layer]
    if neurons is None:
        acts: list[torch.Tensor] = []
        handle = block.intermediate.register_forward_hook(lambda m, a, out: acts.append(out))
        try:
            sums, count = None, 0
            clf.model.eval()
            for i in range(0, len(clean), 64):
                enc = clf._enc(list(clean[i : i + 64]))
                acts.clear()
                clf.model(**enc)
                mask = enc["attention_mask"].unsqueeze(-1).to(acts[0].dtype)
                s = (acts[0] * mask).sum((0, 1))
                sums = s if sums is None else sums + s
                count += int(mask.sum())
        finally:
            handle.remove()
        k = round(fraction * sums.numel())
        neurons = torch.argsort(sums / max(1, count))[:k]
    block.intermediate.dense.weight[neurons] = 0
    block.intermediate.dense.bias[neurons] = 0
    return neurons
