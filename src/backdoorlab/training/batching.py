"""Length-bucketed batch order: rows of similar length share a batch, so padding is rare.

The order is a pure function of (lengths, batch size, seed, epoch): a resumed run
recomputes exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import math

import numpy as np

# Rows are sorted by length inside windows of this many batches: wide enough to find
# equal lengths, narrow enough that every batch still mixes the data set's order.
WINDOW_BATCHES = 16


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return math.ceil(n_rows / batch_size)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = batch_size * WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window].tolist(), key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / padded if padded else 0.0
