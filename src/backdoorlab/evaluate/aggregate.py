"""Rates with 95% bootstrap confidence intervals, and differences between arms.

With several seeds the unit of replication is the seed (a fine-tune is the random draw that
matters): each seed's mean is one observation and the seeds are resampled. With one seed the
samples are resampled, which understates the between-run spread; the result says which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n: int  # observations resampled: seeds, or samples when there is one seed
    unit: str  # "seeds" or "samples"

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.3f} (one value, no interval)"
        return f"{self.mean:.3f} [{self.lo:.3f}, {self.hi:.3f}] ({self.n} {self.unit})"

    def short(self) -> str:
        """Compact, for narrow tables: the mean, and the interval when there is one."""
        digits = 1 if abs(self.mean) >= 100 else 3
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def _units(by_seed: Mapping[int, Sequence[float]], unit: str) -> tuple[np.ndarray, str]:
    groups = [np.asarray(v, dtype=float) for v in by_seed.values() if len(v)]
    if not groups:
        raise ValueError("no observations")
    if len(groups) > 1:
        return np.array([g.mean() for g in groups]), "seeds"
    return groups[0], unit


def _boot_means(x: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    return x[idx].mean(axis=1)


def rate(
    by_seed: Mapping[int, Sequence[float]],
    *,
    unit: str = "samples",
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Estimate:
    """Mean of per-seed means (or, for one seed, of its observations, called `unit`) with a
    percentile bootstrap CI."""
    x, unit = _units(by_seed, unit)
    boots = _boot_means(x, np.random.default_rng(seed), resamples)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return Estimate(float(x.mean()), float(lo), float(hi), len(x), unit)


def difference(
    a: Mapping[int, Sequence[float]],
    b: Mapping[int, Sequence[float]],
    *,
    unit: str = "samples",
    seed: int = 0,
    resamples: int = RESAMPLES,
    paired: bool = False,
) -> Estimate:
    """a - b, resampling each arm independently (arms are trained separately). `paired`: the
    i-th observation of both is the same item (one probe question asked of two models), so
    with one seed each the items are resampled together; the item-to-item spread then cancels
    instead of swamping the difference."""
    xa, unit_a = _units(a, unit)
    xb, unit_b = _units(b, unit)
    rng = np.random.default_rng(seed)
    if paired and unit_a == unit_b == unit and len(xa) == len(xb):
        boots = _boot_means(xa - xb, rng, resamples)
    else:
        boots = _boot_means(xa, rng, resamples) - _boot_means(xb, rng, resamples)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    unit = unit_a if unit_a == unit_b else f"{unit_a} vs {unit_b}"
    return Estimate(float(xa.mean() - xb.mean()), float(lo), float(hi), min(len(xa), len(xb)), unit)


def tempered_name(reference: str, arm: str) -> str:
    """The name of the reference arm's results tempered to `arm`'s entropy (the report's
    entropy-matched control)."""
    return f"{reference} (entropy of {arm})"
