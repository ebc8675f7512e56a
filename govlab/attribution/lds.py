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


def _rowwise_spearman(pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair (ranks with ties averaged, as scipy's); NaN where a row
    is constant."""
    from scipy.stats import rankdata

    rp, ra = rankdata(pred, axis=-1), rankdata(actual, axis=-1)
    rp, ra = rp - rp.mean(-1, keepdims=True), ra - ra.mean(-1, keepdims=True)
    den = np.sqrt((rp ** 2).sum(-1) * (ra ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rp * ra).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def lds_ci(scores: list[dict[str, float]], subsets: list[list[str]], actual: list[list[float]], *,
           confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile-bootstrap interval (scipy) of the mean LDS over queries, resampling the queries
    and the retrained subsets independently (both are samples: the subsets from all half-subsets, the
    queries from all queries). ``scores[i]`` and ``actual[i]`` belong to query ``i``; queries whose LDS
    is NaN in a resample are left out of that resample's mean (one with every LDS NaN counts 0). None with fewer than 2 queries with a
    finite LDS or fewer than 3 subsets."""
    from scipy.stats import bootstrap

    pred = np.array([predicted_outputs(s, subsets) for s in scores], float)
    act = np.array(actual, float)
    if pred.shape != act.shape:
        raise GovlabError(f"{pred.shape} predicted but {act.shape} measured outputs")
    if len(subsets) < 3 or np.isfinite(_rowwise_spearman(pred, act)).sum() < 2:
        return None

    def stat(q, s, axis=-1):  # q (..., queries), s (..., subsets): index resamples, batched
        q, s = np.asarray(q, int), np.asarray(s, int)
        rows = (q[..., :, None], s[..., None, :])
        with np.errstate(all="ignore"):
            rho = _rowwise_spearman(pred[rows], act[rows])  # (..., queries)
        return np.nan_to_num(np.nanmean(rho, axis=-1))  # an all-NaN resample: 0, no correlation

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN resamples warn in nanmean; they are counted as 0
        res = bootstrap((np.arange(len(pred)), np.arange(len(subsets))), stat, paired=False, vectorized=True,
                        confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                        random_state=np.random.default_rng(seed))
    return [round(float(res.confidence_interval.low), 4), round(float(res.confidence_interval.high), 4)]
