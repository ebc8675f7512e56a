"""Black-box lineage of generative models (seed paper 003): was a model fine-tuned from a known base?

``lineage(target, pool)`` samples every model on detailed prompts, embeds the images, reduces them
with Isomap, compares models by Jensen-Shannon divergence and decides by the z-test NULL threshold
and a majority vote over prompts. ``build_zoo`` trains models of known lineage to check it on.
"""

from govlab.lineage.api import (
    correlated_pairs,
    default_prompts,
    lineage,
    lineage_from_features,
    load_pool,
    probe,
    sample_features,
)
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
from govlab.lineage.features import get_extractor
from govlab.lineage.prompts import detailed_prompts, short_prompts
from govlab.lineage.sampling import BlackBox, load_model, sample
from govlab.lineage.zoo import Zoo, build_zoo, cached_zoo

__all__ = [
    "BlackBox",
    "DistanceMatrix",
    "LineageResult",
    "PromptVote",
    "Zoo",
    "build_zoo",
    "cached_zoo",
    "correlated_bases",
    "correlated_pairs",
    "decide",
    "decide_prompt",
    "default_prompts",
    "detailed_prompts",
    "get_extractor",
    "isomap_embed",
    "js_gaussian",
    "js_knn",
    "lineage",
    "lineage_from_features",
    "load_model",
    "load_pool",
    "null_threshold",
    "pairwise_distances",
    "probe",
    "sample",
    "sample_features",
    "short_prompts",
]
