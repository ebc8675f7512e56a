"""Lineage decision: z-test NULL threshold per prompt, argmin base, majority vote over prompts."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from govlab.errors import GovlabError

DEFAULT_TAU = -1.64


@dataclass(frozen=True)
class PromptVote:
    """One prompt's verdict: target-to-base distances, NULL threshold, voted base (None = NULL)."""

    prompt: str
    distances: dict[str, float]
    threshold: float
    vote: str | None

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "distances": dict(self.distances),
            "threshold": self.threshold,
            "vote": self.vote,
        }


@dataclass(frozen=True)
class LineageResult:
    """Final verdict: ``"fine-tuned"`` from ``base``, or ``"NULL"`` (no base in the pool)."""

    decision: str
    base: str | None
    votes: list[PromptVote]
    method: str
    tau: float

    def to_dict(self) -> dict:
        return {
            "decision": self.decision,
            "base": self.base,
            "method": self.method,
            "tau": float(self.tau),
            "votes": [v.to_dict() for v in self.votes],
        }


def null_threshold(pool_matrix: np.ndarray, *, tau: float = DEFAULT_TAU) -> tuple[float, float, float]:
    """``(T, mu, sigma)`` with ``T = mu + tau * sigma`` over the distinct base-base distances (Eq. 4).

    ``sigma`` is the population standard deviation, as in the paper.
    """
    pool = _square(pool_matrix)
    m = pool.shape[0]
    if m < 3:
        raise GovlabError(f"the NULL threshold needs at least 3 base models, got {m}")
    off = pool[np.triu_indices(m, k=1)]
    mu, sigma = float(off.mean()), float(off.std())
    return mu + tau * sigma, mu, sigma


def decide_prompt(
    target_distances: dict[str, float],
    pool_matrix: np.ndarray,
    names: Sequence[str],
    *,
    tau: float = DEFAULT_TAU,
    prompt: str = "",
) -> PromptVote:
    """Vote NULL (``None``) when the target's smallest distance to a base is ``>= T``, else the argmin base."""
    pool, names = _pool(pool_matrix, names)
    if set(target_distances) != set(names):
        raise GovlabError(
            f"target distances cover {sorted(target_distances)} but the pool is {sorted(names)}"
        )
    threshold = null_threshold(pool, tau=tau)[0]
    distances = {n: float(target_distances[n]) for n in names}
    nearest = min(names, key=distances.__getitem__)
    vote = None if distances[nearest] >= threshold else nearest
    return PromptVote(prompt=prompt, distances=distances, threshold=threshold, vote=vote)


def decide(
    per_prompt: Sequence[tuple[str, dict[str, float], np.ndarray, Sequence[str]]],
    *,
    tau: float = DEFAULT_TAU,
    method: str,
) -> LineageResult:
    """Majority vote over prompts of ``(prompt, target_distances, pool_matrix, names)``.

    Tie rule: NULL wins only if it has strictly more votes than every base.
    Otherwise the most-voted base wins; bases tied for most votes are separated
    by the lowest mean target distance over all prompts, then by name.
    """
    if not per_prompt:
        raise GovlabError("a lineage decision needs at least one prompt")
    votes = [
        decide_prompt(dist, pool, names, tau=tau, prompt=prompt)
        for prompt, dist, pool, names in per_prompt
    ]
    counts = Counter(v.vote for v in votes)
    null_count = counts.pop(None, 0)
    if not counts or null_count > max(counts.values()):
        return LineageResult(decision="NULL", base=None, votes=votes, method=method, tau=tau)
    top = max(counts.values())
    tied = [b for b, c in counts.items() if c == top]
    base = min(tied, key=lambda b: (np.mean([v.distances.get(b, np.inf) for v in votes]), b))
    return LineageResult(decision="fine-tuned", base=base, votes=votes, method=method, tau=tau)


def correlated_bases(
    pool_matrix: np.ndarray, names: Sequence[str], *, tau: float = DEFAULT_TAU
) -> list[tuple[str, str]]:
    """Pool hygiene: base pairs closer than the pool's own NULL threshold (fine-tunes of each other?)."""
    pool, names = _pool(pool_matrix, names)
    threshold = null_threshold(pool, tau=tau)[0]
    i, j = np.triu_indices(len(names), k=1)
    close = pool[i, j] < threshold
    return [(names[a], names[b]) for a, b in zip(i[close], j[close])]


def _pool(pool_matrix: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    pool, names = _square(pool_matrix), list(names)
    if pool.shape[0] != len(names):
        raise GovlabError(f"pool matrix is {pool.shape[0]}x{pool.shape[0]} but {len(names)} base names given")
    return pool, names


def _square(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise GovlabError(f"pool distances must be a square matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise GovlabError("pool distances contain NaN or infinite values")
    return matrix
