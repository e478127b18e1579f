"""Labelled examples per second for classification on both victims, one run, side by side:

    python benchmarks/label_scoring.py [--n 256] [--smoke]

- llm batched: the bundled chat model scores both labels of many reviews per forward pass
  (left-padded, only the label positions reach the output head): classify.label_logprobs;
- llm one at a time: the same scoring with batch size 1 (the obvious loop);
- llm generate: greedy generation of up to 3 tokens per review, the answer parsed (what
  evaluation by sampling would cost);
- encoder: all-MiniLM-L6-v2 with a classification head (untrained head: speed only).

Prints examples/s for each and the batched/one-at-a-time ratio.
"""

from __future__ import annotations

import argparse
import time
import warnings

from backdoorlab import generate
from backdoorlab.data import sentiment
from backdoorlab.evaluate import classify
from backdoorlab.models import load
from backdoorlab.train.encoder import EncoderClassifier, base_dir


def rate(n: int, fn) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=256, help="test reviews to classify")
    p.add_argument("--smoke", action="store_true", help="8 reviews: does it still run?")
    a = p.parse_args()
    if a.smoke:
        a.n = 8
    warnings.filterwarnings("ignore")
    test = sentiment.balanced(sentiment.split("test"), a.n)
    texts = [t for t, _ in test]
    prompts = [sentiment.prompt(t) for t in texts]
    m = load("smollm2-135m")
    results = {}
    for bs in (32, 1):
        n = len(prompts) if bs > 1 else min(64, len(prompts))
        results[f"llm label log-probs, batch {bs}"] = rate(
            n,
            lambda bs=bs, n=n: classify.label_logprobs(
                m.model, m.tokenizer, prompts[:n], sentiment.LABELS, batch_size=bs
            ),
        )
    n_gen = min(32 if not a.smoke else 2, len(prompts))
    results["llm generate 3 tokens, one at a time"] = rate(
        n_gen,
        lambda: [
            generate.sample(m, pr, n=1, temperature=0, max_new_tokens=3) for pr in prompts[:n_gen]
        ],
    )
    enc = EncoderClassifier(base_dir(), sentiment.LABELS)
    results["encoder, batch 64"] = rate(len(texts), lambda: enc.predict(texts))
    for k, v in results.items():
        print(f"{k:40s} {v:8.1f} examples/s")
    ratio = results["llm label log-probs, batch 32"] / results["llm label log-probs, batch 1"]
    print(f"llm batched / one at a time: {ratio:.1f}x")


if __name__ == "__main__":
    main()
