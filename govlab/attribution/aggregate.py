"""Per-sample attribution scores to per-source scores, and rankings."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from govlab.errors import GovlabError

REDUCTIONS = ("sum", "mean")


def per_source(scores: Sequence[float] | torch.Tensor, records: list[dict], *, reduce: str = "sum") -> dict[str, float]:
    """Sum (or mean) of the scores of each source's training records; ``scores[i]`` belongs to ``records[i]``."""
    if reduce not in REDUCTIONS:
        raise GovlabError(f"unknown reduction {reduce!r} (known: {', '.join(REDUCTIONS)})")
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if len(scores) != len(records):
        raise GovlabError(f"{len(scores)} scores for {len(records)} training records")
    out: dict[str, list[float]] = {}
    for s, r in zip(scores.tolist(), records):
        out.setdefault(r["source_id"], []).append(s)
    return {k: (sum(v) if reduce == "sum" else sum(v) / len(v)) for k, v in sorted(out.items())}


def ranking(source_scores: dict[str, float]) -> list[dict]:
    """Sources from most to least supportive: ``[{"source": ..., "score": ...}, ...]``."""
    return [{"source": s, "score": v} for s, v in sorted(source_scores.items(), key=lambda kv: (-kv[1], kv[0]))]
