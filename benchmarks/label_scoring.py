"""Labelled examples per second for classification on both victims, one run, side by side:

    python benchmarks/label_scoring.py [--n 256] [--smoke]

- llm packed: the bundled chat model's scorer (classify.label_logprobs): the shared prompt
  prefix runs once, each review once with both labels packed after it under a tree mask;
- llm unpacked: the previous scorer, one left-padded sequence per review and label, batch 32
  (classify.label_logprobs_unpacked), and the same with batch size 1 (the obvious loop);
- llm generate: greedy generation of up to 3 tokens per review, the answer parsed (what
  evaluation by sampling would cost);
- encoder: all-MiniLM-L6-v2 with a classification head (untrained head: speed only);
- ONION's per-word suspicion on the first --onion reviews, seconds per review: each word's
  deletion run whole, and the deletions from the text's own pass (the default).

Prints examples/s for each, the packed/unpacked ratio, and whether packed and unpacked chose
the same label for every review (and their largest log-probability difference).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np

from backdoorlab import generate
from backdoorlab.data import sentiment
from backdoorlab.defenses import filters
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
    p.add_argument("--onion", type=int, default=16, help="test reviews ONION's suspicion runs on")
    p.add_argument(
        "--smoke", action="store_true", help="4 reviews (ONION: the shortest): does it run?"
    )
    a = p.parse_args()
    if a.n < 1 or a.onion < 1:
        p.error("--n and --onion count reviews: at least 1 each")
    if a.smoke:
        a.n, a.onion = 4, 1
    warnings.filterwarnings("ignore")
    test = sentiment.balanced(sentiment.split("test"), a.n)
    texts = [t for t, _ in test]
    prompts = [sentiment.prompt(t) for t in texts]
    m = load("smollm2-135m")
    results = {}
    scores = {}
    for name, fn, bs in (
        ("llm packed, batch 32", classify.label_logprobs, 32),
        ("llm unpacked, batch 32", classify.label_logprobs_unpacked, 32),
        ("llm unpacked, batch 1", classify.label_logprobs_unpacked, 1),
    ):
        n = len(prompts) if bs > 1 else min(64, len(prompts))
        t0 = time.perf_counter()
        scores[name] = fn(m.model, m.tokenizer, prompts[:n], sentiment.LABELS, batch_size=bs)
        results[name] = n / (time.perf_counter() - t0)
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
    packed, unpacked = scores["llm packed, batch 32"], scores["llm unpacked, batch 32"]
    same = bool((packed.argmax(-1) == unpacked.argmax(-1)).all())
    diff = (packed - unpacked).abs().max().item()
    ratio = results["llm packed, batch 32"] / results["llm unpacked, batch 32"]
    print(f"llm packed / unpacked: {ratio:.2f}x; same labels: {same}; max |diff| {diff:.1e}")
    onion(m, sorted(texts, key=len)[: a.onion] if a.smoke else texts[: a.onion])


def onion(m, texts: list[str]) -> None:
    """ONION's per-word suspicion, seconds per review: deletions from the text's shared pass
    against each deletion run whole; the same words above a threshold (the 95% quantile of
    the whole runs' suspicions, as ONION sets it on clean reviews) in every review?"""
    sus, secs = {}, {}
    for shared in (False, True):
        t0 = time.perf_counter()
        sus[shared] = [
            filters.onion_suspicion(m.model, m.tokenizer, t, shared=shared)[1] for t in texts
        ]
        secs[shared] = (time.perf_counter() - t0) / len(texts)
    cut = np.quantile(np.concatenate(sus[False]), 0.95)
    same = sum((a > cut).tolist() == (b > cut).tolist() for a, b in zip(*sus.values(), strict=True))
    rel = max(
        float(np.abs(a - b).max() / np.abs(a).max()) for a, b in zip(*sus.values(), strict=True)
    )
    words = sum(len(t.split()) for t in texts) / len(texts)
    print(f"onion, each deletion whole       {secs[False]:8.2f} s/review ({words:.0f} words)")
    print(f"onion, deletions from shared pass {secs[True]:7.2f} s/review")
    print(f"onion shared / whole: {secs[False] / secs[True]:.2f}x; same words removed in "
          f"{same}/{len(texts)} reviews; max relative |diff| {rel:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
