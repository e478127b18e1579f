"""Data scanners: a suspicion score for every training row, before any model ships.

- `ngram`: a word that predicts the row's label far beyond its frequency, in a row whose
  other words argue for another label (see `ngram_scores`). Finds dirty-label triggers;
  blind to clean-label poison by design (no label conflict).
- `knn`: the share of a row's nearest neighbours (MiniLM embeddings of the text) that carry
  another label: dirty-label rows read like the other class.
- `perplexity`: the text's mean token NLL under the base chat model: inserted rare tokens and
  odd characters raise it.
- `spectral` (Tran et al. 2018) and `clusters` (activation clustering, Chen et al. 2018): on
  the representations of a classifier trained on the suspect data, per label: the squared
  projection on the top singular vector; and membership of the smaller of two k-means
  clusters (scored by its distance margin).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch

WORD = re.compile(r"[\w§¶]+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_scores(
    texts: Sequence[str], labels: Sequence[str]
) -> tuple[np.ndarray, list[tuple[str, str, float, int]]]:
    """Row scores, and words ranked by the suspicion they carry: (word, label, mean, rows).

    Each word gets a smoothed log-odds for each label against the label prior, from the whole
    data set. A dirty-label row has one word that argues for its label (the trigger, which
    only ever appears with the target label) while the rest of its words argue against it;
    a row scores min(strongest support for its label, total opposition from its other words).
    Strong sentiment words alone do not score: their rows agree with them."""
    prior = Counter(labels)
    n = len(labels)
    by_word: dict[str, Counter] = defaultdict(Counter)
    row_words = [sorted(set(words(t))) for t in texts]
    for ws, y in zip(row_words, labels, strict=True):
        for w in ws:
            by_word[w][y] += 1

    def log_odds(w: str, y: str) -> float:
        c = by_word[w]
        rest = sum(c.values()) - c[y]
        return math.log((c[y] + 1) / (rest + 1)) - math.log(prior[y] / max(1, n - prior[y]))

    scores = np.zeros(len(texts))
    carried: dict[tuple[str, str], list[float]] = defaultdict(list)
    for i, (ws, y) in enumerate(zip(row_words, labels, strict=True)):
        if not ws:
            continue
        lo = {w: log_odds(w, y) for w in ws}
        top = max(ws, key=lo.__getitem__)
        oppose = sum(max(0.0, -v) for w, v in lo.items() if w != top)
        scores[i] = max(0.0, min(lo[top], oppose))
        if scores[i] > 0:
            carried[(top, y)].append(scores[i])
    # Words by the mean suspicion of the rows they carry (a trigger carries every poisoned row
    # fully; a sentiment word a little in many rows), seen carrying at least two rows.
    ranked = sorted(
        ((w, y, sum(v) / len(v), len(v)) for (w, y), v in carried.items() if len(v) >= 2),
        key=lambda r: -r[2],
    )
    return scores, ranked


def knn_scores(embeddings: torch.Tensor, labels: Sequence[str], *, k: int = 10) -> np.ndarray:
    """Share of each row's k nearest neighbours (cosine) with a different label."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    sims = e @ e.T
    sims.fill_diagonal_(-2)
    idx = sims.topk(min(k, len(labels) - 1), dim=-1).indices
    lab = np.asarray(labels)
    return (lab[idx.numpy()] != lab[:, None]).mean(axis=1)


@torch.inference_mode()
def perplexity_scores(
    model, tokenizer, texts: Sequence[str], *, batch_size: int = 16
) -> np.ndarray:
    """Mean token NLL of each text (plain text, no template) under a causal LM."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i : i + batch_size]), return_tensors="pt", padding=True).to(
            device
        )
        logits = model(**enc).logits[:, :-1].float()
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        out += ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
    return np.asarray(out)


def spectral_scores(features: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """Per label: the squared projection of each centred representation on the top right
    singular vector (Tran et al.: poison shows up as an outlier direction)."""
    scores = np.zeros(len(labels))
    lab = np.asarray(labels)
    for y in set(labels):
        idx = np.where(lab == y)[0]
        x = features[idx] - features[idx].mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        scores[idx] = (x @ vt[0]) ** 2
    return scores


def cluster_scores(
    features: np.ndarray, labels: Sequence[str], *, dims: int = 10, seed: int = 0
) -> np.ndarray:
    """Activation clustering: per label, PCA to `dims`, 2-means; rows of the smaller cluster
    score high (by how much nearer they are to it than to the other centre)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    scores = np.zeros(len(labels))
    lab = np.asarray(labels)
    for y in set(labels):
        idx = np.where(lab == y)[0]
        if len(idx) < 4:
            continue
        x = PCA(n_components=min(dims, len(idx) - 1), random_state=seed).fit_transform(
            features[idx]
        )
        km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(x)
        small = int(np.argmin(np.bincount(km.labels_, minlength=2)))
        d = km.transform(x)
        scores[idx] = d[:, 1 - small] - d[:, small]
    return scores


SCANNERS = ("ngram", "knn", "perplexity", "spectral", "clusters")


def scan(
    texts: Sequence[str],
    labels: Sequence[str],
    which: Sequence[str] = SCANNERS,
    *,
    lm: Callable[[], tuple] | None = None,
    features: Callable[[], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Scores per scanner. `lm` gives (model, tokenizer) for perplexity; `features` the
    representations of a classifier trained on these rows, for spectral and clusters."""
    from ..models.embeddings import shared_embedder

    out: dict[str, np.ndarray] = {}
    for name in which:
        if name == "ngram":
            out[name] = ngram_scores(texts, labels)[0]
        elif name == "knn":
            out[name] = knn_scores(shared_embedder().encode(texts), labels)
        elif name == "perplexity":
            if lm is None:
                raise ValueError("the perplexity scanner needs a language model")
            out[name] = perplexity_scores(*lm(), texts)
        elif name in ("spectral", "clusters"):
            if features is None:
                raise ValueError(f"the {name} scanner needs a trained classifier's features")
            f = features()
            out[name] = (
                spectral_scores(f, labels) if name == "spectral" else cluster_scores(f, labels)
            )
        else:
            raise ValueError(f"unknown scanner {name!r} (known: {', '.join(SCANNERS)})")
    return out
