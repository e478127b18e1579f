"""How well a suspicion score finds the poison: AUROC, AUPRC and TPR at 1% FPR."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def detection_metrics(scores: Sequence[float], poisoned: Sequence[bool]) -> dict[str, float]:
    """Higher score = more suspicious. NaN where a metric is undefined (one class only)."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    y = np.asarray(poisoned, dtype=int)
    s = np.asarray(scores, dtype=float)
    if y.min() == y.max():
        return {"auroc": float("nan"), "auprc": float("nan"), "tpr@1%fpr": float("nan")}
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "tpr@1%fpr": float(tpr[fpr <= 0.01].max(initial=0.0)),
    }
