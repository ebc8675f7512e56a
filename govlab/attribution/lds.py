"""The linear datamodeling score (Park et al. 2023, TRAK): how well summed attribution scores rank the
outputs of models retrained on random subsets of the sources."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from govlab.errors import GovlabError


def half_subsets(sources: list[str], m: int, *, seed: int = 0) -> list[list[str]]:
    """``m`` random subsets, each holding half of ``sources`` (rounded down, at least one)."""
    if len(sources) < 2:
        raise GovlabError(f"LDS needs at least 2 sources, got {len(sources)}")
    rng = np.random.default_rng(seed)
    size = max(1, len(sources) // 2)
    return [sorted(rng.choice(sorted(sources), size=size, replace=False).tolist()) for _ in range(m)]


def predicted_outputs(scores: dict[str, float], subsets: list[list[str]]) -> list[float]:
    """The linear datamodel's prediction for each subset: the sum of its sources' scores (missing: 0)."""
    return [sum(scores.get(s, 0.0) for s in subset) for subset in subsets]


def lds(scores: dict[str, float], subsets: list[list[str]], actual: list[float]) -> float:
    """Spearman correlation between predicted and actual outputs over the subsets (NaN when either
    side is constant)."""
    if len(subsets) != len(actual):
        raise GovlabError(f"{len(subsets)} subsets but {len(actual)} measured outputs")
    if len(subsets) < 3:
        raise GovlabError(f"LDS needs at least 3 subsets, got {len(subsets)}")
    pred = predicted_outputs(scores, subsets)
    if np.ptp(pred) == 0 or np.ptp(actual) == 0:
        return math.nan
    return float(spearmanr(pred, actual).statistic)
