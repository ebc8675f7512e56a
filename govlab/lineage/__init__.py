"""Black-box lineage of generative models: distances between sample sets and the NULL z-test."""

from govlab.lineage.decision import (
    LineageResult,
    PromptVote,
    correlated_bases,
    decide,
    decide_prompt,
    null_threshold,
)
from govlab.lineage.distance import (
    DistanceMatrix,
    isomap_embed,
    js_gaussian,
    js_knn,
    pairwise_distances,
)

__all__ = [
    "DistanceMatrix",
    "LineageResult",
    "PromptVote",
    "correlated_bases",
    "decide",
    "decide_prompt",
    "isomap_embed",
    "js_gaussian",
    "js_knn",
    "null_threshold",
    "pairwise_distances",
]
