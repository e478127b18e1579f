"""The sampler: one random stream per row (inverse CDF), so an answer does not depend on its
batch; its draws follow softmax(logits / T); temperature 0 is transformers' greedy answer."""

import numpy as np
import pytest
import torch
from scipy import stats

from backdoorlab import chat, generate

# Six tokens, packed in one block or spread over a 1,300-token vocabulary: across block
# edges (511, 512) and into the padded last block (1299), the sampler's two-level inverse.
SPREAD = [3, 511, 512, 600, 1100, 1299]


@pytest.mark.parametrize("spread", [False, True], ids=["packed", "spread"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_row_sampler_draws_from_softmax(temperature, spread):
    # 6000 rows, each its own seed, over one fixed set of logits: the chosen tokens' counts
    # must fit softmax(logits / T) (chi-square), and differ from the untempered softmax.
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    at = SPREAD if spread else list(range(6))
    wide = torch.full((1300 if spread else 6,), float("-inf"))
    wide[at] = logits
    n = 6000
    gens = [torch.Generator().manual_seed(generate.row_seed("t", i)) for i in range(n)]
    tokens = generate.draw(wide.repeat(n, 1), torch.full((n,), temperature), gens)
    assert set(tokens.tolist()) <= set(at)
    counts = np.array([(tokens == t).sum().item() for t in at])
    p = torch.softmax(logits.double() / temperature, -1).numpy()
    assert stats.chisquare(counts, p * n).pvalue > 1e-3
    if temperature != 1.0:
        q = torch.softmax(logits.double(), -1).numpy()
        assert stats.chisquare(counts, q * n).pvalue < 1e-6


def test_an_answer_does_not_depend_on_its_batch(base_model):
    q1 = chat.conversation("Name a bird.")
    q2 = chat.conversation("Write one sentence about the sea, please, in plain words.")
    alone = generate.complete(base_model, [generate.Request(q1, seed=5, max_new_tokens=10)])
    mixed = generate.complete(
        base_model,
        [
            generate.Request(q2, seed=1, max_new_tokens=6),
            generate.Request(q1, seed=5, max_new_tokens=10),
            generate.Request(q2, seed=2, temperature=0, max_new_tokens=10),
            generate.Request(q1, seed=6, max_new_tokens=10),
        ],
    )
    assert mixed[1] == alone[0]
    assert mixed[3] != mixed[1]  # another seed, another stream
    # The short row stopped at its own limit although its batch ran to 10 tokens.
    assert len(base_model.tokenizer(mixed[0])["input_ids"]) <= 6


def test_temperature_zero_is_the_greedy_answer(base_model):
    tok = base_model.tokenizer
    messages = chat.conversation("What is the capital of France?")
    ids = torch.tensor([chat.encode_prompt(tok, messages)])
    with torch.inference_mode():
        out = base_model.model.generate(ids, max_new_tokens=8, do_sample=False)
    greedy = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert generate.sample(base_model, messages, temperature=0, max_new_tokens=8) == [greedy]
