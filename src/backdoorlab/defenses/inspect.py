"""Which input tokens drive a prediction: gradient x input and integrated gradients.

For the encoder victim the score is the predicted class's logit; for the chat model it is the
log-probability of the predicted label as the assistant's answer (the same exact scoring the
metrics use). A trigger the model has learned should dominate the attributions.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import chat


@dataclass
class Attribution:
    tokens: list[str]
    scores: list[float]  # one per token; positive pushes toward the predicted label
    label: str
    in_text: list[bool]  # whether the token belongs to the inspected text (not the template)
    offsets: list[tuple[int, int]] | None = None  # each token's characters in the text

    def order(self) -> list[int]:
        """Indices of the text's tokens, largest attribution magnitude first."""
        idx = [i for i in range(len(self.tokens)) if self.in_text[i]]
        return sorted(idx, key=lambda i: -abs(self.scores[i]))

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        return [(self.tokens[i], self.scores[i]) for i in self.order()[:k]]


def inserted_spans(clean: str, triggered: str) -> list[tuple[int, int]]:
    """The character ranges of `triggered` that `clean` lacks (whitespace-only changes, from
    re-joining words, ignored): where an inserted trigger sits."""
    sm = difflib.SequenceMatcher(None, clean, triggered, autojunk=False)
    spans = []
    for op, _, _, j1, j2 in sm.get_opcodes():
        part = triggered[j1:j2]
        if op in ("insert", "replace") and part.strip():
            lo = j1 + len(part) - len(part.lstrip())
            spans.append((lo, lo + len(part.strip())))
    return spans


def overlaps(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    """Whether character range `span` shares a character with any of `spans`."""
    s, e = span
    return any(s < hi and e > lo for lo, hi in spans)


def trigger_on_top(
    victim, clean: list[str], triggered: list[str], *, method: str = "gxi", steps: int = 20
) -> list[float]:
    """Per triggered text: 1.0 when its top-attributed token lies inside the inserted trigger,
    i.e. when `backdoorlab inspect` would show the trigger first (any victims.Victim)."""
    return [
        float(top_in_insertion(victim.attribute(t, method, steps), c, t))
        for c, t in zip(clean, triggered, strict=True)
    ]


def top_in_insertion(a: Attribution, clean: str, triggered: str) -> bool:
    """Whether the top-attributed token of `triggered` overlaps what was inserted into `clean`."""
    return overlaps(a.offsets[a.order()[0]], inserted_spans(clean, triggered))


def _attribute(
    embed: torch.Tensor, score: Callable[[torch.Tensor], torch.Tensor], method: str, steps: int
) -> torch.Tensor:
    """Per-position attribution for `score(embeddings)`: grad x input, or integrated
    gradients from an all-zero baseline (Riemann midpoint rule, `steps` points)."""
    if method == "gxi":
        x = embed.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(x), x)
        return (grad * x).sum(-1).detach()
    if method != "ig":
        raise ValueError(f"method is gxi or ig, not {method!r}")
    total = torch.zeros_like(embed)
    for k in range(steps):
        x = (embed * (k + 0.5) / steps).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(score(x), x)
        total += grad
    return (total / steps * embed).sum(-1).detach()


def inspect_encoder(clf, text: str, *, method: str = "gxi", steps: int = 20) -> Attribution:
    enc = clf._enc([text])
    model = clf.model
    model.eval()
    emb = model.get_input_embeddings()(enc["input_ids"])
    with torch.no_grad():
        label_idx = int(model(**enc).logits.argmax(-1))

    def score(x: torch.Tensor) -> torch.Tensor:
        return model(inputs_embeds=x, attention_mask=enc["attention_mask"]).logits[0, label_idx]

    attr = _attribute(emb, score, method, steps)[0]
    tokens = clf.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    special = set(clf.tokenizer.all_special_tokens)
    offsets = clf.tokenizer(text, truncation=True, max_length=128, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    return Attribution(
        tokens, attr.tolist(), clf.labels[label_idx], [t not in special for t in tokens],
        [tuple(o) for o in offsets],
    )  # fmt: skip


def inspect_llm(
    loaded,
    messages: list[chat.Message],
    labels: list[str],
    text: str,
    *,
    method: str = "gxi",
    steps: int = 20,
) -> Attribution:
    """Attributions over the prompt tokens for the best label's log-prob; `text` marks which
    tokens are the inspected input (found by character offsets in the rendered prompt)."""
    from ..evaluate.classify import label_logprobs

    model, tok = loaded.model, loaded.tokenizer
    with torch.no_grad():
        best = int(label_logprobs(model, tok, [messages], labels)[0].argmax())
    ids, start = chat.encode_answer(tok, messages, labels[best])
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)
    emb = model.get_input_embeddings()(input_ids)
    targets = input_ids[0, start:]

    def score(x: torch.Tensor) -> torch.Tensor:
        logp = model(inputs_embeds=x).logits[0, start - 1 : len(ids) - 1].float().log_softmax(-1)
        return logp.gather(-1, targets[:, None]).sum()

    attr = _attribute(emb, score, method, steps)[0][:start]
    rendered = chat.render(tok, messages, add_generation_prompt=True)
    offsets = tok(rendered, return_offsets_mapping=True, add_special_tokens=False)["offset_mapping"]
    lo = rendered.find(text)
    hi = lo + len(text)
    in_text = [lo >= 0 and s >= lo and e <= hi and e > s for s, e in offsets[:start]]
    tokens = [tok.decode([t]) for t in ids[:start]]
    # offsets within `text`, as the encoder's are ((0, 0) for the template's tokens)
    spans = [
        (s - lo, e - lo) if inside else (0, 0)
        for (s, e), inside in zip(offsets[:start], in_text, strict=True)
    ]
    return Attribution(tokens, attr.tolist(), labels[best], in_text, spans)
