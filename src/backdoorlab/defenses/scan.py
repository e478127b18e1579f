"""Data scanners: a suspicion score for every training row, before any model ships.

- `ngram`: a word that predicts its label far beyond its frequency, in rows that read like
  the other label once the word is taken out (see `ngram_scores`). Finds dirty-label
  triggers; blind to clean-label poison by design (no label conflict).
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
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from .settings import SCANNERS

# Words, and every other non-space character on its own: a symbol glued to a word ("film§")
# is then one shared token across the rows that carry it, whatever symbol a trigger uses.
WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngram_scores(
    texts: Sequence[str],
    labels: Sequence[str],
    embed: Callable[[list[str]], torch.Tensor] | None = None,
    *,
    min_rows: int = 3,
    purity: float = 0.7,
    k: int = 10,
) -> tuple[np.ndarray, list[tuple[str, str, float, int]]]:
    """Row scores, and words ranked by suspicion: (word, label, suspicion, rows).

    A trigger word predicts its label far beyond its frequency, yet the rows it appears in
    read like the other label once the word is taken out. So each word seen in at least
    `min_rows` rows, with at least `purity` of them carrying one label, gets
    suspicion = (its smoothed log-odds for that label against the prior) x (the mean share of
    MiniLM nearest neighbours, among all rows, with another label, of its rows embedded
    without the word). A sentiment word like "dull" predicts Negative too, but its rows still
    read Negative without it. A row scores its most suspicious word. Taking the word out
    matters: with it in, rows sharing a trigger neighbour each other and look consistent.
    (On the token-1% arm of sentiment_trigger.yaml: AUROC 1.000 this way; 0.528 for the
    earlier log-odds-only conflict score; 0.729 for plain kNN; benchmarks/scan_detection.py.)"""
    if embed is None:
        from ..models.embeddings import shared_embedder

        embed = shared_embedder().encode
    prior = Counter(labels)
    n = len(labels)
    row_words = [sorted(set(words(t))) for t in texts]
    rows_of: dict[str, list[int]] = defaultdict(list)
    for i, ws in enumerate(row_words):
        for w in ws:
            rows_of[w].append(i)
    lab = np.asarray(labels)
    candidates = []
    for w, idx in rows_of.items():
        if len(idx) < min_rows:
            continue
        y, c = Counter(lab[idx].tolist()).most_common(1)[0]
        if c / len(idx) >= purity:
            odds = math.log((c + 0.5) / (len(idx) - c + 0.5))
            candidates.append((w, y, odds - math.log(prior[y] / max(1, n - prior[y])), idx))
    if not candidates:
        return np.zeros(len(texts)), []
    base = torch.nn.functional.normalize(embed(list(texts)).float(), dim=-1)
    stripped = [
        " ".join(tok for tok in WORD.findall(texts[i]) if tok.lower() != w)
        for w, _, _, idx in candidates
        for i in idx
    ]
    emb = torch.nn.functional.normalize(embed(stripped).float(), dim=-1)
    suspicion: dict[tuple[str, str], float] = {}
    ranked = []
    at = 0
    for w, y, odds, idx in candidates:
        sims = emb[at : at + len(idx)] @ base.T
        at += len(idx)
        sims[torch.arange(len(idx)), torch.tensor(idx)] = -2  # not its own neighbour
        near = sims.topk(min(k, n - 1), dim=-1).indices.numpy()
        s = max(0.0, odds) * float((lab[near] != y).mean())
        suspicion[(w, y)] = s
        ranked.append((w, y, s, len(idx)))
    scores = np.array(
        [
            max([suspicion.get((w, y), 0.0) for w in ws] or [0.0])
            for ws, y in zip(row_words, labels, strict=True)
        ]
    )
    return scores, sorted(ranked, key=lambda r: -r[2])


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
        nll = token_nll(logits, target)
        out += ((nll * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
    return np.asarray(out)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position NLL, (batch, length), 0 where the target is -100. Flattened rows, not a
    (batch, vocab, length) transpose: the softmax then runs over contiguous memory (it was
    14% of ONION's time the other way)."""
    b, n, v = logits.shape
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(b * n, v), targets.reshape(b * n), reduction="none", ignore_index=-100
    )
    return nll.view(b, n)


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


NEEDS_FEATURES = ("spectral", "clusters")  # a classifier's representations of the rows


@dataclass
class ScanResult:
    """Every scanner's score per row (higher: more suspicious), and the n-gram scanner's
    suspicious words (word, the label it predicts, suspicion, rows) when it ran."""

    scores: dict[str, np.ndarray]
    words: list[tuple[str, str, float, int]] = field(default_factory=list)

    def mean_rank(self) -> np.ndarray:
        """Each row's rank (0: most suspicious) averaged over the scanners."""
        return np.mean([np.argsort(np.argsort(-s)) for s in self.scores.values()], axis=0)


def check_scanners(
    which: Sequence[str], *, features: bool, how: str = "a classifier trained on the data"
) -> None:
    """Refuse unknown scanners, and those without what they need (`how` names it), before
    any work."""
    bad = [s for s in which if s not in SCANNERS]
    if bad:
        raise InputError(f"unknown scanner {bad[0]!r} (known: {', '.join(SCANNERS)})")
    if not which:
        raise InputError(f"no scanner named (known: {', '.join(SCANNERS)})")
    if set(NEEDS_FEATURES) & set(which) and not features:
        raise InputError(f"spectral and clusters scans need {how}")


def scan(
    texts: Sequence[str],
    labels: Sequence[str],
    which: Sequence[str] = SCANNERS,
    *,
    lm: Callable[[], tuple] | None = None,
    features: Callable[[], np.ndarray] | None = None,
) -> ScanResult:
    """Scores per scanner. `lm` gives (model, tokenizer) for perplexity (default: the bundled
    chat model); `features` the representations of a classifier trained on these rows, for
    spectral and clusters."""
    from ..models.embeddings import shared_embedder

    check_scanners(which, features=features is not None)
    out = ScanResult({})
    for name in which:
        if name == "ngram":
            out.scores[name], out.words = ngram_scores(texts, labels, shared_embedder().encode)
        elif name == "knn":
            out.scores[name] = knn_scores(shared_embedder().encode(texts), labels)
        elif name == "perplexity":
            out.scores[name] = perplexity_scores(*(lm or _bundled_lm)(), texts)
        else:
            assert features is not None  # check_scanners
            f = features()
            out.scores[name] = (
                spectral_scores(f, labels) if name == "spectral" else cluster_scores(f, labels)
            )
    return out


def _bundled_lm() -> tuple:
    from ..models import load
    from ..models.registry import DEFAULT_MODEL

    loaded = load(DEFAULT_MODEL)
    return loaded.model, loaded.tokenizer
