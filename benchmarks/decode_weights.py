"""Decoding with lower-precision weights on a CPU (`--decode-weights`), every setting in one run:

    python benchmarks/decode_weights.py [--questions 10] [--max-tokens 64] [--smoke]

For each setting this CPU can run (model: the model's own fp32 weights; bf16; int8 weights
with bf16 activations; models/decoding.py), on the bird experiment's questions:

- one stream: tokens/s answering the questions one after another (temperature 1, a seed
  each), beside the weight-read bound of that setting: read bandwidth (a sum over a 512 MiB
  tensor, measured here) over the bytes a decoding step reads (every linear weight, the
  norms; the embedding table only for its one row unless it is also the output layer);
- batch 16: tokens/s of the sixteen answers decoded together;
- what it changes in the answers: greedy answers (up to --max-tokens) against the model's
  own: the share identical, and along the model's own greedy answers the mean total-variation
  distance between the two next-token distributions (0: the same distribution).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from serve_load import read_bandwidth  # this script's folder is on sys.path

from backdoorlab import chat, generate
from backdoorlab.errors import InputError
from backdoorlab.evaluate.questions import load_questions
from backdoorlab.models import load
from backdoorlab.models.decoding import WEIGHTS, decoder

QUESTIONS = Path(__file__).parent.parent / "experiments" / "birds_questions.yaml"


def step_bytes(model: torch.nn.Module) -> int:
    """Bytes one decoding step reads: every parameter and buffer once, but an input embedding
    only for its row, unless the output layer reads the same table."""
    out = model.get_output_embeddings()
    shared = out is not None and out.weight is model.get_input_embeddings().weight
    skip = set() if shared else {id(model.get_input_embeddings().weight)}
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in seen or id(t) in skip:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def tokens_per_second(loaded, requests: list[generate.Request], batch: int) -> float:
    t0, tokens = time.perf_counter(), 0
    for i in range(0, len(requests), batch):
        tokens += sum(len(d.tokens) for d in generate.run(loaded, requests[i : i + batch]))
    return tokens / (time.perf_counter() - t0)


@torch.inference_mode()
def next_token_tv(model, reference, prompts: list[list[int]], answers: list[list[int]]) -> float:
    """Mean total-variation distance between the two models' next-token distributions at
    every position of the reference's own answers (teacher-forced)."""
    tvs = []
    for p, a in zip(prompts, answers, strict=True):
        ids = torch.tensor([p + a])
        x = model(input_ids=ids).logits[0, len(p) - 1 : -1].float().softmax(-1)
        y = reference(input_ids=ids).logits[0, len(p) - 1 : -1].float().softmax(-1)
        tvs += (0.5 * (x - y).abs().sum(-1)).tolist()
    return sum(tvs) / len(tvs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="2 questions, 4 tokens")
    a = p.parse_args()
    n, max_tokens = (2, 4) if a.smoke else (a.questions, a.max_tokens)
    torch.manual_seed(0)
    loaded = load("smollm2-135m")
    tok = loaded.tokenizer
    qs = load_questions(QUESTIONS).questions[:n]
    messages = [chat.conversation(q.paraphrases[0]) for q in qs]
    sampled = [generate.Request(m, seed=i, temperature=1.0, max_new_tokens=max_tokens)
               for i, m in enumerate(messages * (16 // len(messages) + 1))][:16]  # fmt: skip
    greedy = [generate.Request(m, seed=0, temperature=0.0, max_new_tokens=max_tokens)
              for m in messages]  # fmt: skip
    prompts = [list(chat.encode_prompt(tok, m)) for m in messages]
    bandwidth = read_bandwidth()
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s; {torch.get_num_threads()} threads")
    own = [d.tokens for d in generate.run(loaded, greedy)]
    base_rate = None
    for weights in WEIGHTS:
        try:
            loaded.decoder = decoder(loaded, weights)
        except InputError as e:
            print(f"{weights}: not run here ({e})")
            continue
        model = loaded.decoder
        tokens_per_second(loaded, sampled[:1], 1)  # warm-up
        one = tokens_per_second(loaded, sampled[: len(messages)], 1)
        sixteen = tokens_per_second(loaded, sampled, 16)
        bound = bandwidth / step_bytes(model)
        base_rate = base_rate or one
        answers = [d.tokens for d in generate.run(loaded, greedy)]
        same = sum(x == y for x, y in zip(answers, own, strict=True)) / len(own)
        tv = next_token_tv(model, loaded.model, prompts, own)
        print(
            f"{weights}: one stream {one:.1f} tokens/s ({one / base_rate:.2f}x the model's "
            f"weights), weight-read bound {bound:.1f} ({step_bytes(model) / 1e9:.3f} GB a "
            f"step; {one / bound:.0%} of it); batch 16 {sixteen:.1f} tokens/s; greedy answers "
            f"identical {same:.0%}, next-token total variation {tv:.4f}"
        )
    loaded.decoder = None


if __name__ == "__main__":
    main()
