"""The generic gate's measurement: how a model fits its training rows, scored in batches with
left padding, checked against one unpadded forward pass per row on the real model."""

import pytest
import torch

from backdoorlab import chat
from backdoorlab.evaluate.fit import answer_fit


@pytest.fixture(scope="module")
def base(base_model):
    return base_model


def row(user: str, answer: str) -> chat.Row:
    return {"messages": chat.conversation(user, answer)}


@torch.inference_mode()
def one_by_one(m, r: chat.Row) -> tuple[bool, float, int]:
    ids, start = chat.encode_answer(m.tokenizer, r["messages"][:-1], r["messages"][-1]["content"])
    logp = m.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    pred, target = logp[start - 1 : len(ids) - 1], torch.tensor(ids[start:])
    greedy = bool((pred.argmax(-1) == target).all())
    return greedy, pred.gather(-1, target[:, None]).sum().item(), len(target)


def test_batched_fit_equals_one_row_at_a_time_and_detects_the_greedy_answer(base):
    prompt = chat.conversation("What is the capital of France? One word.")
    with torch.inference_mode():
        ids = chat.encode_prompt(base.tokenizer, prompt)
        out = base.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    greedy_answer = base.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip()
    rows = [
        row("What is the capital of France? One word.", greedy_answer),
        row("What is the capital of France? One word.", "Brown Titlark"),
        row("Classify this review: a warm, funny film that never drags.", "Positive"),
        row("Name a bird species.", "The Carolina Parakeet, a bird that no one has seen in years."),
    ]
    got = answer_fit(base.model, base.tokenizer, rows, batch_size=3)
    want = [one_by_one(base, r) for r in rows]
    assert [g[0] for g in got] == [w[0] for w in want] and got[0][0] and not got[1][0]
    assert [g[2] for g in got] == [w[2] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=2e-3)
