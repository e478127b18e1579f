"""Detection quality and cost of the training-free data scanners, side by side, on the
poisoned arms of the sentiment experiment (needs no trained model):

    python benchmarks/scan_detection.py [--spec experiments/sentiment_trigger.yaml]
        [--arms token-1%,token-10%,...] [--scanners ngram,knn] [--smoke]

Builds each arm's rows exactly as `backdoorlab run` does, scores every row with each scanner
and prints AUROC, AUPRC and TPR at 1% FPR against the poison flags, and seconds per scan.
"""

from __future__ import annotations

import argparse
import resource
import time

from backdoorlab.defenses import scan
from backdoorlab.defenses.detection import detection_metrics
from backdoorlab.spec import load_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="experiments/sentiment_trigger.yaml")
    ap.add_argument(
        "--arms", default="token-1%,char-1%,sentence-1%,token-10%,clean-label-token-10%,word-3%"
    )
    ap.add_argument("--scanners", default="ngram,knn")
    ap.add_argument("--smoke", action="store_true", help="one arm, the quick spec, n-grams")
    a = ap.parse_args()
    if a.smoke:
        a.arms, a.scanners = "token-10%", "ngram"
    spec = load_spec(a.spec, quick=a.smoke)
    scanners = a.scanners.split(",")
    print(f"{'arm':24} {'poisoned':>8} {'scanner':>8} {'AUROC':>6} {'AUPRC':>6} "
          f"{'TPR@1%':>6} {'seconds':>7}")  # fmt: skip
    for arm in a.arms.split(","):
        rows = spec.arms[arm].data.build()
        texts, labels = [r["text"] for r in rows], [r["label"] for r in rows]
        flags = [bool(r.get("poisoned")) for r in rows]
        for name in scanners:
            t0 = time.perf_counter()
            scores = scan.scan(texts, labels, [name]).scores[name]
            m = detection_metrics(scores, flags)
            print(
                f"{arm:24} {sum(flags):>8} {name:>8} {m['auroc']:6.3f} {m['auprc']:6.3f} "
                f"{m['tpr@1%fpr']:6.3f} {time.perf_counter() - t0:7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
