"""Labelled examples per second for classification on both victims, one run, side by side:

    python benchmarks/label_scoring.py [--n 256] [--onion 16] [--onion-before SRC] [--smoke]

- llm packed: the bundled chat model's scorer (classify.label_logprobs): the shared prompt
  prefix runs once, each review once with both labels packed after it under a tree mask;
- llm unpacked: the previous scorer, one left-padded sequence per review and label, batch 32
  (classify.label_logprobs_unpacked), and the same with batch size 1 (the obvious loop);
- llm generate: greedy generation of up to 3 tokens per review, the answer parsed (what
  evaluation by sampling would cost);
- encoder: all-MiniLM-L6-v2 with a classification head (untrained head: speed only);
- ONION's per-word suspicion on the first --onion reviews, seconds per review: each word's
  deletion run whole, and every deletion packed into passes with the text's own tokens (the
  default); with --onion-before SRC, also an earlier checkout's ONION on the same reviews.

Prints examples/s for each, the packed/unpacked ratio, and whether packed and unpacked chose
the same label for every review (and their largest log-probability difference).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from backdoorlab import generate
from backdoorlab.data import sentiment
from backdoorlab.defenses import filters
from backdoorlab.evaluate import classify
from backdoorlab.models import load
from backdoorlab.training.encoder import EncoderClassifier, base_dir


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
        "--onion-before",
        metavar="SRC",
        help="the src/ of an earlier checkout (git worktree add --detach DIR REV): its ONION "
        "timed on the same reviews, in a process of its own, beside ours",
    )
    p.add_argument(
        "--smoke", action="store_true", help="4 reviews (ONION: the shortest): does it run?"
    )
    a = p.parse_args()
    if a.n < 1 or a.onion < 1:
        p.error("--n and --onion count reviews: at least 1 each")
    if a.onion_before and not (Path(a.onion_before) / "backdoorlab" / "defenses").is_dir():
        p.error(f"--onion-before {a.onion_before}: no backdoorlab package there (give a src/)")
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
    onion(m, sorted(texts, key=len)[: a.onion] if a.smoke else texts[: a.onion], a.onion_before)


# The earlier checkout's ONION, with its own package on the path: only the call every version
# has, `onion_suspicion(model, tokenizer, text)`, on texts read from stdin.
_ELSEWHERE = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from backdoorlab.defenses import filters
from backdoorlab.models import load
texts = json.load(sys.stdin)
m = load("smollm2-135m")
t0 = time.perf_counter()
sus = [filters.onion_suspicion(m.model, m.tokenizer, t)[1].tolist() for t in texts]
print(json.dumps({"seconds": time.perf_counter() - t0, "sus": sus, "file": filters.__file__}))
"""


def _onion_elsewhere(src: str, texts: list[str]) -> tuple[float, list[np.ndarray]]:
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-c", _ELSEWHERE], input=json.dumps(texts), env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        sys.exit(f"ONION at {src} failed:\n{proc.stderr[-2000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # An installed backdoorlab must not stand in for the checkout asked for.
    if not Path(got["file"]).resolve().is_relative_to(Path(src).resolve()):
        sys.exit(f"ONION at {src}: the child imported {got['file']} instead")
    return got["seconds"] / len(texts), [np.asarray(v) for v in got["sus"]]


def onion(m, texts: list[str], before: str | None = None) -> None:
    """ONION's per-word suspicion, seconds per review: the deletions packed with the text's own
    tokens against each deletion run whole (and against an earlier checkout's ONION); the same
    words above a threshold (the 95% quantile of the whole runs' suspicions, as ONION sets it on
    clean reviews) in every review?"""
    runs = {}  # name: (seconds per review, suspicions per review)
    if before:
        runs[f"code at {before}"] = _onion_elsewhere(before, texts)
    for name, shared in (("each deletion whole", False), ("deletions packed", True)):
        t0 = time.perf_counter()
        sus = [filters.onion_suspicion(m.model, m.tokenizer, t, shared=shared)[1] for t in texts]
        runs[name] = ((time.perf_counter() - t0) / len(texts), sus)
    words = sum(len(t.split()) for t in texts) / len(texts)
    for name, (secs, _) in runs.items():
        print(f"onion, {name:30s} {secs:6.2f} s/review ({words:.0f} words)")
    packed_secs, packed = runs.pop("deletions packed")
    cut = np.quantile(np.concatenate(runs["each deletion whole"][1]), 0.95)
    for name, (secs, sus) in runs.items():
        pairs = list(zip(packed, sus, strict=True))
        same = sum((a > cut).tolist() == (b > cut).tolist() for a, b in pairs)
        rel = max(float(np.abs(a - b).max() / np.abs(b).max()) for a, b in pairs)
        print(f"onion packed / {name}: {secs / packed_secs:.2f}x; same words removed in "
              f"{same}/{len(texts)} reviews; max relative |diff| {rel:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
