"""Statistics of a comparison: mean ± std over seeds, and a paired difference with a bootstrap interval.

Two methods run with the same seed see the same data split and order, and are scored on the same test
examples, so their per-example scores form two (seeds, examples) matrices with matched rows and columns.
The difference of their means is estimated with a two-level (seeds x examples) bootstrap: each resample
draws seeds with replacement and, independently, test examples with replacement, and takes the mean
difference over the drawn cells. The interval is the percentile interval of those means; a difference is
"supported" only when the interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .results import Summary

DEFAULT_RESAMPLES = 4000
_CHUNK_CELLS = 1 << 20  # resamples x examples drawn at once


def describe(values: Sequence[float]) -> Summary:
    """Mean, sample standard deviation (n - 1; 0 for one value) and count of ``values``."""
    n = len(values)
    if n == 0:
        raise DataError("no values to summarize")
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Summary(mean, std, n)


@dataclass(frozen=True)
class PairedDifference:
    """mean(a) - mean(b) over matched seeds and examples, with a bootstrap interval at ``level``."""

    diff: float
    low: float
    high: float
    seeds: int
    examples: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def verdict(self, claimed: float = 0.0) -> str:
        """For the claim "a beats b by at least ``claimed``" (``claimed`` >= 0):

        ``supported`` when the interval lies above 0; ``not supported`` when it lies entirely below
        ``claimed`` (for ``claimed`` = 0: b is ahead); ``cannot tell`` otherwise.
        """
        if self.low > 0:
            return "supported"
        if self.high < claimed:
            return "not supported"
        return "cannot tell"

    def interval(self, digits: int = 3) -> str:
        """``+0.012 [-0.004, +0.028]``."""
        return f"{self.diff:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_bootstrap(a: np.ndarray | Sequence[Sequence[float]], b: np.ndarray | Sequence[Sequence[float]], *,
                     resamples: int = DEFAULT_RESAMPLES, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """The paired difference of per-example scores ``a`` and ``b``, each (seeds, examples).

    Row s of ``a`` and of ``b`` must come from the same seed and column n from the same test example
    (e.g. 1/0 correctness; their mean is the accuracy). The bootstrap is seeded: the same inputs give the
    same interval.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise DataError(f"paired scores must be two (seeds, examples) matrices of one shape; got {a.shape} and "
                        f"{b.shape}")
    if not 0 < level < 1:
        raise DataError(f"the interval level must be in (0, 1), got {level}")
    diff = a - b
    seeds, examples = diff.shape
    rng = np.random.default_rng(seed)
    # a resample's mean is v·D·w, with v and w the seeds' and examples' resampled frequencies (each sums to 1);
    # drawn in chunks so that the (chunk, examples) frequency matrix stays at a few MB
    chunk = max(1, _CHUNK_CELLS // examples)
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        v = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=r) / seeds  # (r, S)
        w = rng.multinomial(examples, np.full(examples, 1 / examples), size=r) / examples  # (r, N)
        means[start:start + r] = np.einsum("rs,sn,rn->r", v, diff, w)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(float(diff.mean()), float(low), float(high), seeds, examples, level)
