"""The perf gate's statistics, from scipy: is the current code's training step slower than the
baseline's? Both a ratio of medians above a threshold AND a one-sided Mann-Whitney U test over the
per-block samples are needed; the ratio comes with a bootstrap 95% interval. Torch-free."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

DEFAULT_THRESHOLD = 1.25  # slowdown ratio of medians
DEFAULT_ALPHA = 0.05
DEFAULT_MEMORY_TOLERANCE = 0.05  # relative growth of saved bytes (and CUDA peaks)


def mann_whitney(x, y) -> tuple[float, float]:
    """One-sided Mann-Whitney U test of H1 "x tends to be larger than y": (U, p), U counting pairs
    with x > y and half the ties (scipy's method "auto": exact for small samples without ties,
    else the normal approximation with tie and continuity corrections)."""
    from scipy import stats  # here: the CLI imports this module for its defaults

    result = stats.mannwhitneyu(x, y, alternative="greater")
    return float(result.statistic), float(result.pvalue)


def _median_ratio(base, cur, axis=-1):
    import numpy as np

    return np.median(cur, axis=axis) / np.median(base, axis=axis)


def ratio_interval(base, cur, level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(cur) / median(base), the two samples resampled
    independently (seeded: reproducible)."""
    import numpy as np
    from scipy import stats

    result = stats.bootstrap((np.asarray(base, float), np.asarray(cur, float)), _median_ratio,
                             vectorized=True, n_resamples=resamples, confidence_level=level,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class Slowdown:
    ratio: float  # median(current) / median(baseline)
    low: float
    high: float
    u: float
    p: float
    regression: bool


def slowdown(base, cur, threshold: float = DEFAULT_THRESHOLD,
             alpha: float = DEFAULT_ALPHA) -> Slowdown:
    """Is cur slower than base? Needs both ratio > threshold and Mann-Whitney p < alpha."""
    ratio = statistics.median(cur) / statistics.median(base)
    u, p = mann_whitney(cur, base)
    lo, hi = ratio_interval(base, cur)
    return Slowdown(ratio, lo, hi, u, p, ratio > threshold and p < alpha)
