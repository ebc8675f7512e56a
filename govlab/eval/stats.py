"""95% bootstrap intervals for the figures a report prints."""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap

CONFIDENCE = 0.95
RESAMPLES = 2000


def mean_ci(values, *, seed: int = 0) -> tuple[float | None, list[float] | None]:
    """The mean of ``values`` and its 95% percentile-bootstrap interval (scipy); the interval is None
    with fewer than two values, and [m, m] when every value is the same."""
    x = np.asarray(values, float)
    if len(x) == 0:
        return None, None
    mean = round(float(x.mean()), 4)
    if len(x) < 2:
        return mean, None
    if np.all(x == x[0]):
        return mean, [mean, mean]
    res = bootstrap((x,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="percentile",
                    random_state=np.random.default_rng(seed))
    return mean, [round(float(res.confidence_interval.low), 4), round(float(res.confidence_interval.high), 4)]


def with_interval(v, ci) -> str:
    """``v [low, high]`` to two decimals (``v`` alone without an interval)."""
    return f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.2f}"
